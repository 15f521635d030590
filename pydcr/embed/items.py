"""What the embedder reads: each input item (a path, an array, a tensor, a pack record, a dataset
image) turned into an aligned face crop, or refused with the reason."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.align import align
from ..data.datasets import FaceDataset
from ..data.image import read_image
from ..data.packed import PackedFaces


class BadItem(Exception):
    """An input that cannot be embedded (unreadable, no face, wrong size); its reason is reported."""


#: What the reason for an image that is not an aligned crop advises: (when no landmarks were given,
#: when the image is missing from the given landmark list). The command line names its options.
ALIGN_ADVICE = ("give landmarks or a detector to align it",
                "it is not in the landmark list: add it, or give a detector to align it")


class ItemSource:
    """A sequence of inputs, each loadable as an aligned crop.

    ``load(i)`` returns the h x w x 3 RGB crop of item i (uint8, or float32 for float tensors) or
    raises :class:`BadItem`. Crops are `crop_size`; with `allow_small`, smaller ones too (native
    low-resolution probes, upsampled later). A crop is a face already and is taken as it is (the
    detector is not run on it), unless landmarks are listed for it. Other items are aligned with
    their landmarks, or with the face a detector finds nearest the image centre. advice: what the
    reason for an unaligned image without landmarks says to do (see ALIGN_ADVICE). Thread-safe.
    """

    def __init__(
        self,
        items,
        crop_size: Sequence[int],
        *,
        landmarks=None,
        detector=None,
        allow_small: bool = False,
        advice: tuple[str, str] = ALIGN_ADVICE,
    ) -> None:
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.allow_small = allow_small
        self.advice = advice
        self.detector = detector
        self._detector_lock = threading.Lock()
        self.labels: np.ndarray | None = None
        self.classes: list[str] = []
        self._listed = landmarks is not None  # a landmark list was given: an item missing from it is named so
        if isinstance(items, PackedFaces):
            if tuple(items.size) != self.crop_size:
                raise ValueError(f"{items.path} holds {items.size[0]}x{items.size[1]} crops; the model takes "
                                 f"{self.crop_size[0]}x{self.crop_size[1]}")
            self._read, self._points = _pack_reader(items), lambda i: None
            self._files = lambda: [items.path]
            self.names = list(items.paths)
            self.labels, self.classes = np.asarray(items.labels, np.int64), list(items.classes)
        elif isinstance(items, FaceDataset):
            if landmarks is not None:
                raise ValueError("a dataset brings its own landmarks: give them to the dataset, not here")
            self._read, self._points = items.image, items.landmarks_of
            self._files = lambda: [items.path(i) for i in range(len(items))]
            self._listed = items.landmarks is not None
            self.names = list(items.paths)
            self.labels, self.classes = np.asarray(items.labels, np.int64), list(items.classes)
        else:
            items = _as_list(items)
            self._read = lambda i: _read_one(items[i])
            on_disk = all(isinstance(item, (str, os.PathLike)) for item in items)
            self._files = lambda: [Path(item) for item in items] if on_disk else None
            self.names = [_name(i, item) for i, item in enumerate(items)]
            self._points = _landmark_lookup(landmarks, self.names)

    def __len__(self) -> int:
        return len(self.names)

    def files(self) -> list[Path] | None:
        """The files the items are read from (the pack, or each item's image), or None when some
        items are held in memory."""
        return self._files()

    def landmarks_of(self, index: int) -> np.ndarray | None:
        """The five points listed for item `index`, or None (an aligned crop, a native
        low-resolution one, or detection)."""
        return self._points(index)

    def load(self, index: int) -> np.ndarray:
        try:
            image = self._read(index)
        except (OSError, ValueError) as err:  # missing, empty, corrupt, truncated, damaged pack record
            raise BadItem(f"unreadable: {err}") from None
        points = self._points(index)
        if points is None and (self.is_small(image.shape[:2]) or tuple(image.shape[:2]) == self.crop_size):
            return image  # an aligned crop, or a native low-resolution probe: a face already
        if points is None and self.detector is None:
            return self._check_crop(image)
        if points is None:
            points = self._detect(image)
        try:
            return align(image, points, self.crop_size)
        except (ValueError, cv2.error) as err:  # degenerate landmarks
            raise BadItem(f"cannot align: {err}") from None

    def is_small(self, shape: Sequence[int]) -> bool:
        """Whether an image of (h, w) `shape` is a native low-resolution crop (smaller than
        crop_size, with allow_small): taken as it is unless landmarks are listed for it, never
        searched by the detector."""
        h, w = int(shape[0]), int(shape[1])
        H, W = self.crop_size
        return self.allow_small and h <= H and w <= W and (h, w) != (H, W)

    def _detect(self, image: np.ndarray) -> np.ndarray:
        from ..data.mtcnn import central_face

        pixels = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
        try:
            with self._detector_lock:  # the detector's networks are not shared between threads
                boxes, _, points = self.detector.detect(pixels)
        except (ValueError, RuntimeError, cv2.error) as err:  # e.g. an image smaller than its smallest window
            raise BadItem(f"face detection failed: {err}") from None
        face = central_face(boxes, image.shape)
        if face is None:
            raise BadItem("no face found")
        return points[face]

    def _check_crop(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        H, W = self.crop_size
        if (h, w) == (H, W):
            return image
        wanted = f"an aligned {H}x{W} crop" + (" (or a smaller low-resolution one)" if self.allow_small else "")
        raise BadItem(f"not {wanted}: got {h}x{w}; {self.advice[1] if self._listed else self.advice[0]}")


def _as_list(items) -> list:
    if isinstance(items, torch.Tensor):
        if items.dim() == 3:
            raise ValueError("got one 3-d tensor: pass a batch N x 3 x H x W, or a list of images")
        if items.dim() != 4:
            raise ValueError(f"expected a tensor N x 3 x H x W, got shape {tuple(items.shape)}")
        return list(items.unbind(0))
    if isinstance(items, np.ndarray) and items.ndim == 4:
        return list(items)
    if isinstance(items, (str, os.PathLike)):
        raise TypeError("got one path: pass a list of paths (or a pack / dataset)")
    if not isinstance(items, Sequence):
        raise TypeError(f"expected a sequence of paths, arrays or tensors, a tensor batch, a PackedFaces or a "
                        f"FaceDataset, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise TypeError(f"item {i} is a {type(item).__name__}: expected a path, an array or a tensor")
    return list(items)


def _name(index: int, item) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"#{index}"


def _read_one(item) -> np.ndarray:
    """An item as an h x w x 3 RGB array (uint8, or float32 for float tensors)."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    if isinstance(item, torch.Tensor):
        if item.dim() != 3 or item.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(item.shape)}")
        item = item.detach().cpu().permute(1, 2, 0)
        # numpy has no bfloat16: float tensors are read as float32, which every float type fits
        item = (item.float() if item.is_floating_point() else item).numpy()
    elif item.ndim != 3 or item.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {item.shape}")
    if item.dtype == np.uint8:
        return item
    if item.dtype.kind != "f":
        raise ValueError(f"images must be uint8 or floating point in [0, 255], got {item.dtype}")
    item = item.astype(np.float32)
    if not np.isfinite(item).all():
        raise ValueError("the image holds NaN or infinite values")
    # [0, 1] images would embed as nearly black faces. A black frame (all zeros) reads the same on
    # either scale, so it is taken as it is.
    if item.size and item.min() >= 0 and 0 < item.max() <= 1:
        raise ValueError("the image's values are all in [0, 1]: pydcr takes [0, 255] (multiply by 255, or give uint8)")
    return item


def _pack_reader(pack: PackedFaces):
    # One mapping per thread is not needed: reads are slices of a read-only mmap.
    return pack.image


def _landmark_lookup(landmarks, names: list[str]):
    """landmarks: None, a sequence (one 5 x 2 array or None per item) or a mapping from path to points."""
    if landmarks is None:
        return lambda i: None
    if isinstance(landmarks, Mapping):
        table = {str(k): np.asarray(v, np.float32) for k, v in landmarks.items()}
        return lambda i: table.get(names[i], table.get(Path(names[i]).as_posix()))
    if len(landmarks) != len(names):
        raise ValueError(f"got {len(names)} items but {len(landmarks)} landmark sets")
    return lambda i: None if landmarks[i] is None else np.asarray(landmarks[i], np.float32)
