"""Batches of aligned crops prepared by background threads while the model runs.

Decoding (OpenCV), alignment (warpAffine) and the upsampling op release the GIL, so threads
overlap them with the forward pass without the cost of worker processes. Batches come back in
input order, with a bounded number in flight, so memory stays flat whatever the input's length.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from ..models.resolution import native_resolution
from .items import BadItem, ItemSource


@dataclass
class CropBatch:
    """The good items of one input range: their positions, pixels and native resolutions."""

    index: np.ndarray  # int64 positions in the input
    images: torch.Tensor  # n x 3 x H x W, uint8 (or float32 when an item needed upsampling or was float)
    native: np.ndarray  # int64 side k of a native low-resolution crop, 0 for a full-size one
    failures: list[tuple[int, str]]  # (position, reason) of the bad items
    size: int  # items in the range, good and bad


def default_workers() -> int:
    # On a CPU the model's own threads need the cores; one thread decodes packed crops far faster
    # than a full trunk consumes them. Galleries of photos (decode + warp) want more: --workers.
    cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


def batch_ranges(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + batch_size, stop)) for a in range(start, stop, batch_size)]


def crop_batches(
    source: ItemSource,
    ranges: Iterable[tuple[int, int]],
    *,
    workers: int | None = None,
    pin_memory: bool = False,
    antialias: bool = True,
) -> Iterator[CropBatch]:
    """One CropBatch per (start, stop) range, in order; each range is prepared by one thread."""
    workers = default_workers() if workers is None else max(1, int(workers))
    make = lambda r: _assemble(source, r, pin_memory, antialias)
    with ThreadPoolExecutor(workers, thread_name_prefix="pydcr-embed") as pool:
        pending: deque[Future] = deque()
        try:
            for r in ranges:
                pending.append(pool.submit(make, r))
                if len(pending) > workers:  # one batch ahead per thread
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # interrupted: drop what has not started
            for f in pending:
                f.cancel()


def _assemble(source: ItemSource, span: tuple[int, int], pin_memory: bool, antialias: bool) -> CropBatch:
    start, stop = span
    H, W = source.crop_size
    crops, index, failures = [], [], []
    for i in range(start, stop):
        try:
            crops.append(source.load(i))
            index.append(i)
        except BadItem as err:
            failures.append((i, str(err)))
    native = np.array([0 if c.shape[:2] == (H, W) else native_resolution(*c.shape[:2]) for c in crops], np.int64)
    floating = bool(native.any()) or any(c.dtype != np.uint8 for c in crops)
    images = torch.empty((len(crops), 3, H, W), dtype=torch.float32 if floating else torch.uint8,
                         pin_memory=pin_memory and len(crops) > 0)
    for k, crop in enumerate(crops):
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        if native[k]:  # a native low-resolution probe: upsampled as DCR.embed_lr does
            x = ops.resize(x[None].float(), (H, W), antialias=antialias)[0]
        images[k].copy_(x)
    return CropBatch(np.asarray(index, np.int64), images, native, failures, stop - start)
