"""Five-point face alignment onto the 112 x 96 template of the Face-ResNet / center-loss release."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

#: The five points (x, y) of an aligned face in the 96-wide x 112-high crop: left eye, right eye,
#: nose tip, left and right mouth corners.
REFERENCE_112x96 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, translation) mapping src onto dst in the least-squares sense.

    Umeyama's closed form, without reflection. src and dst are K x 2 point arrays, K >= 2.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two K x 2 point arrays with K >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("the points are not all finite: no similarity transform")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("source points are all equal: no similarity transform")
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def template(size: Sequence[int] = (112, 96)) -> np.ndarray:
    """The five template points for an (h, w) crop: REFERENCE_112x96 scaled per axis."""
    h, w = _crop_size(size)
    return REFERENCE_112x96 * np.array([w / 96.0, h / 112.0], dtype=np.float32)


def alignment_matrix(landmarks: np.ndarray, size: Sequence[int] = (112, 96)) -> np.ndarray:
    """The 2 x 3 matrix that :func:`align` warps with: image points onto the template of `size`."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be a 5 x 2 array of (x, y), got shape {points.shape}")
    return similarity_transform(points, template(size))


def align(image: np.ndarray, landmarks: np.ndarray, size: Sequence[int] = (112, 96)) -> np.ndarray:
    """Warp a face so its five points land on the template, returning an h x w x 3 crop.

    image: H x W x 3 uint8 (RGB). landmarks: 5 x 2 (x, y) in the image. size: (h, w) of the crop;
    the template is scaled from 112 x 96 to it. The warp is bicubic; pixels mapped from outside the
    image are black, as in the reference release. A warp that would shrink the face more than 2x (a
    large photo) first shrinks the image by area averaging to the crop's scale: a 4-tap bicubic warp
    alone would skip most source pixels and alias.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
    h, w = _crop_size(size)
    m = alignment_matrix(landmarks, (h, w))
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < MAX_WARP_SHRINK:
        image, m = _area_shrunk(image, m, scale, (h, w))
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


#: The smallest scale the bicubic warp takes on its own (see align).
MAX_WARP_SHRINK = 0.5

#: Changes whenever align's crops change for the same image and points (2: the area shrink), so
#: that a resumed pack never mixes crops of two versions.
ALIGNMENT_VERSION = 2


def _area_shrunk(image: np.ndarray, m: np.ndarray, scale: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The part of the image an (h, w) crop reads through m, shrunk by `scale` with area averaging,
    and m for it: the warp that is left keeps the face's size (its scale is about 1). Only that
    part is shrunk, so a face in a large photo costs what its own region does."""
    h, w = size
    height, width = image.shape[:2]
    # The crop's corners in the image, widened by what the area cells and the warp's bicubic taps
    # reach (a few shrunk pixels), and clipped: beyond the image the warp reads black, as before.
    corners = np.array([[-1, -1, 1], [w, -1, 1], [-1, h, 1], [w, h, 1]], dtype=np.float64)
    reached = corners @ cv2.invertAffineTransform(m).T
    margin = 4 / scale + 2
    x0, y0 = np.floor(reached.min(0) - margin).astype(int)
    x1, y1 = np.ceil(reached.max(0) + margin).astype(int)
    x0, x1 = min(max(x0, 0), width - 1), min(max(x1, 1), width)
    y0, y1 = min(max(y0, 0), height - 1), min(max(y1, 1), height)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    region = image[y0:y1, x0:x1]
    rw, rh = x1 - x0, y1 - y0
    sw, sh = max(1, round(rw * scale)), max(1, round(rh * scale))
    small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
    # A pixel centre x of the shrunk region is (x + 0.5) * rw / sw - 0.5 + x0 in the image.
    fx, fy = rw / sw, rh / sh
    to_image = np.array([[fx, 0, 0.5 * fx - 0.5 + x0], [0, fy, 0.5 * fy - 0.5 + y0], [0, 0, 1]])
    return small, m @ to_image


def align_many(
    images: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray] | np.ndarray,
    size: Sequence[int] = (112, 96),
    *,
    workers: int | None = None,
) -> np.ndarray:
    """:func:`align` over many images (of any sizes), as one N x h x w x 3 uint8 array.

    landmarks: N x 5 x 2, one set per image. OpenCV's warp releases the GIL, so the images are
    warped by `workers` threads (default: one per CPU core; 0 or 1 warps in this thread).
    """
    if len(images) != len(landmarks):
        raise ValueError(f"got {len(images)} images but {len(landmarks)} landmark sets")
    h, w = _crop_size(size)
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)

    def warp(i: int) -> None:
        out[i] = align(images[i], landmarks[i], (h, w))

    workers = min(os.cpu_count() or 1, len(images)) if workers is None else workers
    if workers <= 1 or len(images) <= 1:
        for i in range(len(images)):
            warp(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(warp, range(len(images))))
    return out


def _crop_size(size: Sequence[int]) -> tuple[int, int]:
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (h, w), got {tuple(size)}")
    return h, w
