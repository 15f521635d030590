"""Layers of the Face-ResNet trunk built on the fused ops.

Convolutions are torch's (oneDNN on CPU, cuDNN on CUDA); what follows them, the bias, the PReLU
and the residual add or the max-pool, is one fused pass each way (:func:`pydcr.ops.prelu`,
:func:`pydcr.ops.prelu_pool`). Parameter names and
shapes are those of the eager twins in :mod:`pydcr.reference` (nn.Conv2d + nn.PReLU), so state
dicts load either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

__all__ = ["ConvPReLU", "ResidualUnit"]


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`, as autocast would hand it to PReLU: under autocast, convolutions return
    float16 or bfloat16 while parameters stay float32. The tensor itself when it already is
    (checked here: a call to .to costs more than the attribute)."""
    return t if t.dtype == dtype else t.to(dtype)


class ConvPReLU(nn.Module):
    """A 3x3 convolution, stride 1, then a per-channel PReLU: ``PReLU(conv(x) + bias)``, and with
    ``pool`` a 2x2 max-pool of stride 2 in ceil mode after it.

    The convolution runs without its bias; the bias is added inside the fused PReLU pass, which
    also pools. Parameters: ``conv.weight`` (out_ch x in_ch x 3 x 3), ``conv.bias`` (out_ch, when
    ``bias``) and ``prelu.weight`` (out_ch, initialised to 0.25 as nn.PReLU).
    """

    def __init__(self, in_ch: int, out_ch: int, padding: int = 1, bias: bool = True, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=bias)
        self.prelu = nn.PReLU(out_ch)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = F.conv2d(x, c.weight, None, c.stride, c.padding, c.dilation, c.groups)
        weight, bias = _as(self.prelu.weight, y.dtype), None if c.bias is None else _as(c.bias, y.dtype)
        return ops.prelu_pool(y, weight, bias) if self.pool else ops.prelu(y, weight, bias)

    def extra_repr(self) -> str:
        return "pool=True" if self.pool else ""


class ResidualUnit(nn.Module):
    """The trunk's residual unit, ``x + PReLU(conv3x3(PReLU(conv3x3(x))))``, pad 1, convs without bias.

    The second PReLU and the add are one fused pass. Parameters: ``conv1.weight``,
    ``prelu1.weight``, ``conv2.weight``, ``prelu2.weight``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu2 = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = self.conv2(ops.prelu(y, _as(self.prelu1.weight, y.dtype)))
        # The add promotes as eager's x + PReLU(...) does (float32 x, float16 branch: float32), and
        # its result takes x's layout, as eager's does: the conv may have returned another one
        # (cuDNN does for some channel counts), and the fused op keeps the layout of its input.
        dtype = x.dtype if x.dtype == y.dtype else torch.promote_types(x.dtype, y.dtype)
        if x.dim() == 4 and x.stride() != y.stride():
            y = y.contiguous(memory_format=_memory_format(x))
        return ops.prelu(_as(y, dtype), _as(self.prelu2.weight, dtype), residual=_as(x, dtype))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
