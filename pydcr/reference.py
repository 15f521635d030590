"""Pure-PyTorch twins of every op in :mod:`pydcr.ops`: the test oracle and benchmark baseline.

Each function computes what its fused op computes, the plain way, with the same arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._args import Size2, pair


# 16-bit images, which the resample ops compute on in float32 (torch's CPU bicubic has no 16-bit
# antialiased kernel).
_ROUNDED_ONCE = (torch.float16, torch.bfloat16)


def resize(x: torch.Tensor, size: Size2, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize with align_corners=False; uint8 images are read as float, float16 and
    bfloat16 computed in float32 and rounded once."""
    if x.dtype in _ROUNDED_ONCE:
        return resize(x.float(), size, antialias=antialias).to(x.dtype)
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
    """Bicubic down to ``low`` then back up to ``size`` (default: the input size): two resizes,
    float16 and bfloat16 computed in float32 and rounded once at the end."""
    if size is None:
        size = x.shape[-2:]
    if x.dtype in _ROUNDED_ONCE:
        return degrade(x.float(), low, size, antialias=antialias).to(x.dtype)
    return resize(resize(x, low, antialias=antialias), size, antialias=antialias)


def prelu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """PReLU(x + bias[c], weight) + residual: a broadcast bias add, F.prelu, and an add."""
    if bias is not None:
        x = x + bias.view((1, -1) + (1,) * (x.dim() - 2))
    y = F.prelu(x, weight)
    return y if residual is None else y + residual


def prelu_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """PReLU(x + bias[c], weight) then a 2x2 max-pool, stride 2, ceil mode (Caffe's rounding)."""
    return F.max_pool2d(prelu(x, weight, bias), 2, 2, ceil_mode=True)


class ConvPReLU(torch.nn.Module):
    """Eager twin of :class:`pydcr.nn.ConvPReLU`: nn.Conv2d (3x3, with its bias) then nn.PReLU,
    then with ``pool`` F.max_pool2d (2x2, stride 2, ceil mode)."""

    def __init__(self, in_ch: int, out_ch: int, padding: int = 1, bias: bool = True, pool: bool = False):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=bias)
        self.prelu = torch.nn.PReLU(out_ch)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.prelu(self.conv(x))
        return F.max_pool2d(y, 2, 2, ceil_mode=True) if self.pool else y


class ResidualUnit(torch.nn.Module):
    """Eager twin of :class:`pydcr.nn.ResidualUnit`: x + PReLU(conv3x3(PReLU(conv3x3(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu1 = torch.nn.PReLU(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu2 = torch.nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


# ---- Center loss and the center update ---------------------------------------------------------


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """1/2 mean over the batch of ||x_i - c_{y_i}||^2 (0 for an empty batch), by gathering c_{y_i}."""
    d = features - centers.index_select(0, labels.long())
    return d.pow(2).sum() / (2 * max(features.shape[0], 1))


def center_update_(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Wen et al.'s center update over all C classes with index_add_ and bincount, in place."""
    labels = labels.long()
    counts = torch.bincount(labels, minlength=centers.shape[0]).to(centers.dtype)
    delta = torch.zeros_like(centers).index_add_(0, labels, centers.index_select(0, labels) - features)
    return centers.sub_(alpha * delta / (1 + counts)[:, None])


def center_stats(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(classes ascending, per-class sums of x_i - c_j, per-class counts) via torch.unique."""
    labels = labels.long()
    classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    d = (features - centers.index_select(0, labels)).to(acc)
    sums = d.new_zeros((classes.numel(), features.shape[1])).index_add_(0, inverse, d)
    return classes, sums, counts


def center_apply_(
    centers: torch.Tensor, classes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, alpha: float
) -> torch.Tensor:
    """c_j <- c_j + alpha * sums_j / (1 + counts_j) for the listed classes, in place."""
    step = alpha / (1 + counts.to(sums.dtype))
    moved = centers.index_select(0, classes.long()).to(sums.dtype) + step[:, None] * sums
    return centers.index_copy_(0, classes.long(), moved.to(centers.dtype))


#: The twin of each op in torch.ops.pydcr, by op name (used to decompose exported graphs).
TWINS = {
    "resize": lambda x, size, antialias=True: resize(x, size, antialias=antialias),
    "degrade": lambda x, low, size, antialias=True: degrade(x, low, size, antialias=antialias),
    "prelu": prelu,
    "prelu_pool": prelu_pool,
}
