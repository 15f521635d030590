"""Pure-PyTorch twins of every op in :mod:`pydcr.ops`: the test oracle and benchmark baseline.

Each function computes what its fused op computes, the plain way, with the same arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._args import Size2, pair


def resize(x: torch.Tensor, size: Size2, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize with align_corners=False; uint8 images are read as float."""
    if x.dtype == torch.uint8:
        x = x.float()
    oh, ow = pair("size", size)
    if antialias and ow == 1 and oh != 1:
        # torch's antialiased CPU kernel (2.14) returns wrong values when the output is one column
        # wide; bicubic resizing is separable and symmetric in its axes, so resize the transpose.
        return _interpolate(x.transpose(-1, -2), (ow, oh), antialias).transpose(-1, -2)
    return _interpolate(x, (oh, ow), antialias)


def _interpolate(x: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", antialias=antialias, align_corners=False)


def degrade(
    x: torch.Tensor, low: Size2, size: Size2 | None = None, *, antialias: bool = True
) -> torch.Tensor:
    """Bicubic down to ``low`` then back up to ``size`` (default: the input size): two resizes."""
    if size is None:
        size = x.shape[-2:]
    return resize(resize(x, low, antialias=antialias), size, antialias=antialias)
