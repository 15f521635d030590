"""resize and degrade on real aligned faces, against PIL (antialiased) and OpenCV (plain) bicubic.

Both libraries compute in 8-bit fixed point and round (PIL also between its two passes), so
agreement is up to rounding: the bounds below are the measured worst cases plus a margin, and are
documented in docs/resampling.md. A different kernel (a = -0.75 vs -0.5, or no widening when
shrinking) misses them by tens of levels.
"""

import numpy as np
import pytest
import torch

from pydcr import ops
from pydcr.data import align, read_image, read_landmarks

pytestmark = pytest.mark.data
Image = pytest.importorskip("PIL.Image")
cv2 = pytest.importorskip("cv2")

SIZES = [6, 8, 12, 16, 20, 40]


@pytest.fixture(scope="module")
def faces(lfw_root):
    """64 aligned 112 x 96 LFW faces, N x 112 x 96 x 3 uint8."""
    landmarks = read_landmarks(lfw_root / "lfw_landmark.txt")
    names = sorted(landmarks)[::200][:64]
    return np.stack([align(read_image(lfw_root / "lfw" / n), landmarks[n]) for n in names])


def as_uint8_images(t: torch.Tensor) -> np.ndarray:
    return t.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()


def pil_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def cv_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)


def batch(faces):
    return torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous()


# (antialias, the library's resize, mean and max bounds shrinking, the same enlarging). PIL clips
# overshoot to [0, 255] between its horizontal and vertical passes, which shows at strong edges
# when enlarging.
CONVENTIONS = {
    "antialias-vs-pil": (True, pil_resize, (0.2, 4), (0.3, 12)),
    "plain-vs-opencv": (False, cv_resize, (0.02, 1), (0.02, 1)),
}


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("k", SIZES)
def test_resize_matches_the_library(faces, k, convention):
    antialias, library, (down_mean, down_max), (up_mean, up_max) = CONVENTIONS[convention]
    ours = as_uint8_images(ops.resize(batch(faces), k, antialias=antialias))
    diff = np.abs(ours - np.stack([library(f, k, k) for f in faces]))
    assert diff.mean() < down_mean and diff.max() <= down_max
    # Enlarging back to 112 x 96 from the library's own low-resolution faces.
    low = np.stack([library(f, k, k) for f in faces])
    ours = as_uint8_images(ops.resize(batch(low), (112, 96), antialias=antialias))
    diff = np.abs(ours - np.stack([library(f, 112, 96) for f in low]))
    assert diff.mean() < up_mean and diff.max() <= up_max


@pytest.mark.parametrize("k", SIZES)
def test_degrade_matches_library_round_trips(faces, k):
    """degrade keeps the low-resolution image in float; the libraries round it to uint8 in between,
    so they agree on average to well under one level."""
    x = batch(faces)
    pil = np.stack([pil_resize(pil_resize(f, k, k), 112, 96) for f in faces])
    assert np.abs(as_uint8_images(ops.degrade(x, k, antialias=True)) - pil).mean() < 0.5
    cv = np.stack([cv_resize(cv_resize(f, k, k), 112, 96) for f in faces])
    assert np.abs(as_uint8_images(ops.degrade(x, k, antialias=False)) - cv).mean() < 0.5


def test_kernels_are_told_apart(faces):
    """The bounds above are tight enough to catch the wrong convention."""
    x = batch(faces)
    wrong = as_uint8_images(ops.resize(x, 12, antialias=False))
    pil = np.stack([pil_resize(f, 12, 12) for f in faces])
    assert np.abs(wrong - pil).mean() > 1 and np.abs(wrong - pil).max() > 4
    wrong = as_uint8_images(ops.resize(x, 12, antialias=True))
    cv = np.stack([cv_resize(f, 12, 12) for f in faces])
    assert np.abs(wrong - cv).mean() > 1 and np.abs(wrong - cv).max() > 1
