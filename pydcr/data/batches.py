"""Batches for training: a loader of uint8 crops and the multi-resolution transform of DCR.

The loader yields N x 3 x h x w uint8 batches (decoded by background workers, in pinned memory
for a fast copy to the GPU). The transform runs where the batch is: it flips at random and makes
the degraded copies with ``pydcr.ops.degrade`` (bicubic down to k x k and back up). Normalisation
stays out: the models normalise inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import ops
from .._args import Size2, pair

#: The trunk's recipe: every image at 112 x 96, and degraded to 40 x 40 and to 6 x 6.
TRUNK_LOWS = (40, 6)


def collate_faces(items: Sequence[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(crop h x w x 3 uint8, label) items -> an N x 3 x h x w uint8 batch and N int64 labels."""
    images = torch.from_numpy(np.stack([image for image, _ in items]))
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return images.permute(0, 3, 1, 2).contiguous(), labels


def face_loader(
    dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    workers: int = 2,
    pin_memory: bool | None = None,
    seed: int | None = None,
    drop_last: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
) -> DataLoader:
    """A DataLoader of (N x 3 x h x w uint8 images, N labels) from a dataset of (crop, label) items.

    dataset: a :class:`pydcr.data.PackedFaces` (fast) or any :class:`pydcr.data.FaceDataset`.
    workers: background processes that decode; pin_memory defaults to whether CUDA is available;
    seed fixes the shuffling order. sampler (a DistributedSampler, say) chooses the order instead of
    shuffle and seed.
    """
    if sampler is not None and shuffle:
        raise ValueError("face_loader: give either shuffle=True or a sampler, not both")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_faces,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


class MultiResolutionBatch(NamedTuple):
    """The HR batch and its degraded copies, float32 in [0, 255] (up to bicubic overshoot), on the input's device."""

    hr: torch.Tensor
    low: dict[Size2, torch.Tensor]  # by the low resolution asked for, each back at the HR size


class MultiResolution:
    """Flip a uint8 N x 3 x H x W batch at random and degrade it to several low resolutions.

    lows: the low resolutions (an int k for k x k, or an (h, w) pair); each degraded copy is
    resized back to H x W, as the networks take it. The default is the trunk's 40 x 40 and 6 x 6;
    a branch pair uses one k. antialias: the bicubic kernel (see :func:`pydcr.ops.degrade`).
    flip: the probability of a horizontal flip per image, drawn from `generator` (a
    torch.Generator on the CPU, or a seed) so runs repeat, unless the call gives the mask; every
    resolution of an image shares its flip.
    """

    def __init__(
        self,
        lows: Sequence[Size2] = TRUNK_LOWS,
        *,
        antialias: bool = True,
        flip: float = 0.5,
        generator: torch.Generator | int | None = None,
    ) -> None:
        for low in lows:
            pair("lows", low)
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip}")
        self.lows = [tuple(low) if not isinstance(low, int) else low for low in lows]
        if len(set(self.lows)) != len(self.lows):
            raise ValueError(f"lows must not repeat a resolution, got {self.lows}")
        self.antialias, self.flip = antialias, float(flip)
        self.generator = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator

    def __call__(self, images: torch.Tensor, flipped: torch.Tensor | None = None) -> MultiResolutionBatch:
        """flipped: N booleans, the images to flip, instead of drawing them with probability `flip`."""
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.dim() != 4
            or images.shape[1] != 3
        ):
            got = (
                f"{images.dtype} of shape {tuple(images.shape)}"
                if isinstance(images, torch.Tensor)
                else type(images).__name__
            )
            raise ValueError(f"images must be a uint8 N x 3 x H x W tensor, got {got}")
        if flipped is None:
            flipped = torch.rand(images.shape[0], generator=self.generator) < self.flip
        elif flipped.dtype != torch.bool or flipped.shape != images.shape[:1]:
            raise ValueError(f"flipped must hold one bool per image ({images.shape[0]}), got {flipped.dtype} "
                             f"of shape {tuple(flipped.shape)}")
        hr = torch.where(flipped.to(images.device)[:, None, None, None], images.flip(-1), images)
        low = {k: ops.degrade(hr, k, antialias=self.antialias) for k in self.lows}
        return MultiResolutionBatch(hr.float(), low)
