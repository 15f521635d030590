"""MTCNN, the three-stage cascade face detector with five landmarks (Zhang et al., IEEE SPL 2016).

A port of the reference cascade: an image pyramid scanned by P-Net, non-maximum suppression,
R-Net and O-Net on square crops, box regression after each stage. The weights (in
``mtcnn_weights/``, MIT licence, see the README there) are the authors' Caffe models as converted
by facenet-pytorch; this module follows their conventions (RGB input scaled as (p - 127.5) / 128;
the dense layers read their input flattened in (W, H, C) order, because the Caffe models were
trained on transposed images).

Coordinates: the cascade works internally in the 1-based, inclusive pixel boxes of the MATLAB
original; everything returned is 0-based: a box (x1, y1, x2, y2) spans pixel columns x1..x2 and
rows y1..y2 (so it is x2 - x1 + 1 pixels wide), and landmarks are in the frame where pixel (i, j)
has its centre at x = j, y = i -- the frame of LFW's lfw_landmark.txt.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).with_name("mtcnn_weights")
# Input pixels per P-Net call: a batch of large photos goes through the pyramid's first levels a few
# images at a time (P-Net's activations are about 40 bytes a pixel), not all at once.
PNET_PIXELS = 1 << 20

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes N x 4, scores N, landmarks N x 5 x 2


class PNet(nn.Module):
    """Proposal network: a fully convolutional 12 x 12 face/non-face scanner with box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)  # Caffe pools round up
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), 1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24 x 24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), 1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48 x 48 crops: score, box offsets and the five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), 1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x (W * H * C), the order of the transposed-image models the dense weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class MTCNN:
    """Detect faces and their five landmarks (left eye, right eye, nose, left and right mouth corner).

    device: where the networks run (default: CUDA when available, else CPU). min_face_size: the
    smallest face searched for, in pixels; factor: the scale step of the image pyramid;
    thresholds: the face-score cut of P-Net, R-Net and O-Net. The defaults are the reference ones.
    threads: torch's CPU threads while detecting (set for the call, then restored). The default is
    one: the layers are small, so several threads gain little, and on a busy machine each op
    waits for a descheduled thread (measured: several times slower with two; docs/data.md). Parallelise
    across images instead. None leaves torch's setting alone.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        min_face_size: float = 20.0,
        factor: float = 0.709,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        weights_dir: str | Path = WEIGHTS_DIR,
        threads: int | None = 1,
    ) -> None:
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be at least 12 (P-Net's window), got {min_face_size}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must be three scores (P-Net, R-Net, O-Net), got {thresholds}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.min_face_size, self.factor, self.thresholds = float(min_face_size), float(factor), tuple(thresholds)
        self.pnet, self.rnet, self.onet = (
            _load(net(), Path(weights_dir) / f"{name}.pt", self.device)
            for name, net in (("pnet", PNet), ("rnet", RNet), ("onet", ONet))
        )
        self.batch_size = 1024  # crops per R-Net / O-Net call, bounding memory
        self.threads = threads

    def detect(self, image) -> Detections:
        """Faces in one H x W x 3 uint8 RGB image: boxes (N x 4, x1 y1 x2 y2), scores (N), landmarks (N x 5 x 2)."""
        return self.detect_batch([image])[0]

    @torch.inference_mode()
    def detect_batch(self, images: Sequence) -> list[Detections]:
        """:meth:`detect` for many images; images of equal size share the P-Net passes."""
        arrays = [_as_array(i, im) for i, im in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(a.shape[:2], []).append(i)
        out: list[Detections | None] = [None] * len(arrays)
        with _cpu_threads(self.threads if self.device.type == "cpu" else None):
            for indices in groups.values():
                for i, found in zip(indices, self._cascade([arrays[i] for i in indices])):
                    out[i] = found
        return out  # type: ignore[return-value]

    def _cascade(self, images: list[np.ndarray]) -> list[Detections]:
        boxes, image_of = self._propose(images)
        boxes, scores, image_of, _ = self._refine(self.rnet, images, boxes, image_of, 24, self.thresholds[1])
        boxes, scores, image_of, points = self._refine(self.onet, images, boxes, image_of, 48, self.thresholds[2])
        out = []
        for b in range(len(images)):
            mine = image_of == b
            out.append((boxes[mine] - 1, scores[mine], points[mine]))
        return out

    def _run(self, net: nn.Module, batch: np.ndarray) -> list[np.ndarray]:
        """A network on an N x H x W x 3 float32 pixel batch, in chunks; its outputs as float64 arrays."""
        outs = []
        for start in range(0, len(batch), self.batch_size):
            x = torch.from_numpy(batch[start : start + self.batch_size]).to(self.device).permute(0, 3, 1, 2)
            outs.append([o.double().cpu().numpy() for o in net(_normalise(x))])
        return [np.concatenate(o) for o in zip(*outs)]

    def _propose(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: P-Net over the pyramid; square, integer boxes (1-based, inclusive) and their image index."""
        h, w = images[0].shape[:2]
        found = []
        for scale in pyramid_scales(h, w, self.min_face_size, self.factor):
            size = (math.ceil(h * scale), math.ceil(w * scale))
            per_call = max(1, min(self.batch_size, PNET_PIXELS // (size[0] * size[1])))
            outs = [self._run(self.pnet, np.stack([_resample(im, size) for im in images[k : k + per_call]]))
                    for k in range(0, len(images), per_call)]
            prob, reg = (np.concatenate(o) for o in zip(*outs))
            image_of, row, col = np.nonzero(prob >= self.thresholds[0])
            if len(image_of) == 0:
                continue
            xy = np.stack([col, row], 1).astype(np.float64)
            boxes = np.concatenate([np.floor((2 * xy + 1) / scale), np.floor((2 * xy + 12) / scale)], 1)
            cand = np.concatenate([boxes, prob[image_of, row, col, None], reg[image_of, :, row, col]], 1)
            keep = batched_nms(cand[:, :4], cand[:, 4], image_of, 0.5)
            found.append((cand[keep], image_of[keep]))
        if not found:
            return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
        cand = np.concatenate([c for c, _ in found])
        image_of = np.concatenate([i for _, i in found])
        keep = batched_nms(cand[:, :4], cand[:, 4], image_of, 0.7)
        cand, image_of = cand[keep], image_of[keep]
        size = cand[:, 2:4] - cand[:, 0:2]  # stage 1 regresses on the box without the +1 (as the reference)
        boxes = cand[:, :4] + cand[:, 5:9] * np.tile(size, 2)
        return np.fix(square(boxes)), image_of

    def _refine(self, net, images, boxes, image_of, crop, threshold):
        """Stages 2 and 3: score square crops, keep the faces, regress their boxes, suppress overlaps."""
        boxes, image_of = _valid(boxes, image_of)
        if len(boxes) == 0:
            return np.zeros((0, 4)), np.zeros(0, np.float32), image_of, np.zeros((0, 5, 2), np.float32)
        outs = self._run(net, _crop_resize(images, boxes, image_of, crop))
        prob, reg = outs[0], outs[1]
        keep = prob > threshold
        boxes, prob, reg, image_of = boxes[keep], prob[keep], reg[keep], image_of[keep]
        size = np.tile(boxes[:, 2:4] - boxes[:, 0:2] + 1, 2)
        if len(outs) == 2:  # R-Net: suppress, regress, make square and integer for O-Net's crops
            order = batched_nms(boxes, prob, image_of, 0.7)
            boxes, prob, image_of = boxes[order], prob[order], image_of[order]
            boxes = np.fix(square(boxes + reg[order] * size[order]))
            return boxes, prob.astype(np.float32), image_of, None
        # O-Net: landmarks relative to the crop, box regression, then suppression by the smaller box.
        rel = outs[2][keep]
        points = np.stack(
            [rel[:, :5] * size[:, :1] + boxes[:, :1] - 1, rel[:, 5:] * size[:, 1:2] + boxes[:, 1:2] - 1], 2
        )
        boxes = boxes + reg * size
        order = batched_nms(boxes, prob, image_of, 0.7, mode="min")
        return boxes[order], prob[order].astype(np.float32), image_of[order], points[order].astype(np.float32)


@contextmanager
def _cpu_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def pyramid_scales(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which P-Net's 12-pixel window sees faces from min_face_size up to the image's short side."""
    scale = 12.0 / min_face_size
    short = min(h, w) * scale
    scales = []
    while short >= 12:
        scales.append(scale)
        scale *= factor
        short *= factor
    return scales


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box about its centre to a square of its longer side."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(1, keepdims=True)
    corner = boxes[:, 0:2] + (size - side) * 0.5
    return np.concatenate([corner, corner + side], 1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression of inclusive pixel boxes; indices kept, best first.

    mode "union": overlap is intersection over union; "min": intersection over the smaller area.
    """
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        iw = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = iw * ih
        base = np.minimum(area[best], area[rest]) if mode == "min" else area[best] + area[rest] - inter
        order = rest[inter / base <= threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes, scores, groups, threshold, mode="union") -> np.ndarray:
    """:func:`nms` within each group (image), indices in increasing order."""
    keep = [
        np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], threshold, mode)]
        for g in np.unique(groups)
    ]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def central_face(boxes: np.ndarray, image_shape: Sequence[int]) -> int | None:
    """Index of the box whose centre is nearest the image centre (the subject of a face crop), or None."""
    if len(boxes) == 0:
        return None
    centre = np.array([image_shape[1] - 1, image_shape[0] - 1]) / 2
    return int(np.argmin(np.linalg.norm((boxes[:, 0:2] + boxes[:, 2:4]) / 2 - centre, axis=1)))


def _valid(boxes: np.ndarray, image_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    return boxes[ok], image_of[ok]


def _crop_resize(images: list[np.ndarray], boxes: np.ndarray, image_of: np.ndarray, size: int) -> np.ndarray:
    """Crops of 1-based inclusive integer boxes, zero outside the image (as the reference), resized to size x size."""
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    for k, ((x1, y1, x2, y2), b) in enumerate(zip(boxes.astype(np.int64).tolist(), image_of.tolist())):
        image = images[b]
        h, w = image.shape[:2]
        sx1, sy1, sx2, sy2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        if (sx1, sy1, sx2, sy2) == (x1, y1, x2, y2):
            patch = image[y1 - 1 : y2, x1 - 1 : x2]
        else:
            patch = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), dtype=np.float32)
            if sx2 >= sx1 and sy2 >= sy1:
                patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = image[sy1 - 1 : sy2, sx1 - 1 : sx2]
        out[k] = _resample(patch, (size, size))
    return out


def _resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-averaging resize of an H x W x 3 float32 image (OpenCV INTER_AREA, as the reference port)."""
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _as_array(index: int, image) -> np.ndarray:
    """An H x W x 3 uint8 RGB image (numpy or torch) as a float32 array."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image {index} must be an H x W x 3 uint8 RGB array, got shape {a.shape} and dtype {a.dtype}")
    return a.astype(np.float32)


def _load(net: nn.Module, path: Path, device: torch.device) -> nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"MTCNN weights not found: {path}") from None
    net.load_state_dict(state)
    # The batches arrive as N x H x W x C pixels: channels-last convolutions read them without a copy
    # (and are several times faster than NCHW ones for these narrow layers on CPU).
    return net.to(device, memory_format=torch.channels_last).eval()


def _unlistable(name: str) -> str | None:
    """Why a path cannot go in a landmark list (UTF-8 text, one path and its points per line,
    tab-separated), else None."""
    try:
        name.encode("utf-8")  # a name decoded from the file system holds surrogate escapes if not
    except UnicodeEncodeError:
        return "its name is not UTF-8 text, which a landmark list is: rename it"
    if any(c in name for c in "\t\n\r"):
        return "its name holds a tab or line break, which a landmark list cannot: rename it"
    return None


def detect_landmarks(
    dataset,
    out: str | Path,
    *,
    detector: MTCNN | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    resume: bool = True,
    progress: bool = True,
    unreadable: dict[str, str] | None = None,
    allow_empty: bool = True,
) -> list[str]:
    """Write a landmark list for a dataset: the five points of the face nearest each image's centre.

    dataset: a :class:`pydcr.data.FaceDataset` (its paths, relative to its image root, are the
    list's keys). Images are decoded by `workers` threads ahead of the detector, which takes
    `batch_size` at a time. Found points go to ``OUT.partial`` as they come, so an interrupted run
    resumes where it stopped (only a run of the same images, folder and detector settings: another
    run's partial list is started over); OUT is written (atomically, in dataset order) at the end.
    Returns the paths where no face was found or the image could not be read; the latter also go
    to `unreadable` when given (path -> why it could not be read). Without `allow_empty`, a run
    that finds no face raises :class:`NothingAligned` (holding those paths) and leaves a list
    already at OUT as it was.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ._progress import progress_bar
    from .landmarks import format_landmark_line, write_landmarks

    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    detector = detector if detector is not None else MTCNN()
    plan = _align_plan(dataset, detector)
    found = _read_partial(partial, plan) if resume else None
    todo = [i for i, p in enumerate(dataset.paths) if p not in (found or {})]
    missing: list[str] = []

    def read(i: int):
        why = _unlistable(dataset.paths[i])
        if why is not None:
            if unreadable is not None:
                unreadable[dataset.paths[i]] = why
            return None
        try:
            return dataset.image(i)
        except (OSError, ValueError) as err:
            if unreadable is not None:
                unreadable[dataset.paths[i]] = str(err)
            return None

    chunks = [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)]
    bar = progress_bar(len(dataset), len(dataset) - len(todo), "align", progress)
    with (
        ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool,
        open(partial, "a" if found is not None else "w", encoding="utf-8") as f,
    ):
        if found is None:  # a new run: its plan first, so that only the same run resumes it
            f.write(plan + "\n")
            found = {}
        pending = [pool.submit(read, i) for i in chunks[0]] if chunks else []
        for n, chunk in enumerate(chunks):
            images = [p.result() for p in pending]
            pending = [pool.submit(read, i) for i in chunks[n + 1]] if n + 1 < len(chunks) else []
            readable = [(i, im) for i, im in zip(chunk, images) if im is not None]
            missing += [dataset.paths[i] for i, im in zip(chunk, images) if im is None]
            for (i, image), (boxes, _, points) in zip(readable, detector.detect_batch([im for _, im in readable])):
                face = central_face(boxes, image.shape)
                if face is None:
                    missing.append(dataset.paths[i])
                    continue
                found[dataset.paths[i]] = points[face]
                f.write(format_landmark_line(dataset.paths[i], points[face]) + "\n")
            f.flush()
            bar.update(len(chunk))
    bar.close()
    if not found and not allow_empty:
        partial.unlink()
        raise NothingAligned(out, missing)
    write_landmarks(out, [(p, found[p]) for p in dataset.paths if p in found])
    partial.unlink()
    return missing


class NothingAligned(ValueError):
    """An align run that found no face; `missing` holds every image's path."""

    def __init__(self, out: Path, missing: list[str]) -> None:
        super().__init__(f"no face found in any of {len(missing)} images; {out} not written")
        self.missing = missing


def _align_plan(dataset, detector) -> str:
    """The first line of a run's partial list: a digest of what decides its points (the images,
    where they are, the detector's settings)."""
    h = hashlib.sha256()
    h.update(str(Path(dataset.image_root).resolve()).encode("utf-8", "surrogateescape") + b"\0")
    for path in dataset.paths:
        h.update(path.encode("utf-8", "surrogateescape") + b"\0")
    settings = [getattr(detector, name, None) for name in ("min_face_size", "factor", "thresholds")]
    h.update(repr((type(detector).__name__, *settings)).encode())
    return f"# pydcr align plan {h.hexdigest()}"


def _read_partial(partial: Path, plan: str) -> dict[str, np.ndarray] | None:
    """The whole lines of an interrupted run of `plan` (a torn last line is cut off); None when
    there is none (no file, or another run's)."""
    from .landmarks import parse_landmarks

    if not partial.is_file():
        return None
    text = partial.read_bytes()
    text = text[: text.rfind(b"\n") + 1]
    head, _, rest = text.partition(b"\n")
    if head.decode("utf-8", "replace") != plan:
        return None
    partial.write_bytes(text)
    # lines end at "\n" only: str.splitlines would also break at characters a file name may hold (NEL, U+2028)
    return parse_landmarks(rest.decode("utf-8").split("\n"), partial, first=2)
