"""The fused ops of pydcr: Python wrappers, fake (meta) kernels and autograd.

Schemas and kernels are compiled (csrc/); this module gives them their Python signatures, shape
inference for torch.compile and fake tensors, and gradients. Each op equals its twin in
:mod:`pydcr.reference`.
"""

from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (registers the ops)
from ._args import Size2, pair

__all__ = ["resize", "degrade"]


def _check_tensor(op: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pydcr.{op}: {name} must be a torch.Tensor, got {type(x).__name__}")


def resize(x: torch.Tensor, size: Size2, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of an N x C x H x W batch to ``size`` (an int for a square, or (h, w)).

    Equals ``F.interpolate(x, size, mode="bicubic", antialias=antialias, align_corners=False)``.
    ``antialias=True`` is Keys' kernel with a = -0.5, widened when shrinking (PIL, MATLAB imresize);
    ``antialias=False`` is a = -0.75 without widening (torch's default, OpenCV INTER_CUBIC).
    uint8 input is read directly and gives float32; float input keeps its dtype. NCHW and
    channels_last are both read natively and the result keeps the input's memory format.
    Differentiable with respect to float input.
    """
    _check_tensor("resize", "x", x)
    return torch.ops.pydcr.resize.default(x, pair("size", size), antialias)


def degrade(x: torch.Tensor, low: Size2, size: Size2 | None = None, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic down to ``low`` and back up to ``size`` (default: the input size) in one pass.

    Equals ``resize(resize(x, low), size)`` without materialising the low-resolution image. This is
    how DCR renders a face at a low resolution k (``low=k``) for the trunk and the LR branch.
    """
    _check_tensor("degrade", "x", x)
    out = list(x.shape[-2:]) if size is None else pair("size", size)
    return torch.ops.pydcr.degrade.default(x, pair("low", low), out, antialias)


# Fake kernels: shape, dtype and memory format of the result, for torch.compile and meta tensors.


def _like_image_batch(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.new_empty((x.shape[0], x.shape[1], h, w), dtype=dtype).contiguous(memory_format=fmt)


@torch.library.register_fake("pydcr::resize")
def _resize_fake(x, size, antialias=True):
    torch._check(x.dim() == 4, lambda: f"pydcr.resize: x must be a 4-D tensor N x C x H x W, got {x.dim()}")
    return _like_image_batch(x, size[0], size[1])


@torch.library.register_fake("pydcr::resize_backward")
def _resize_backward_fake(grad, input_size, antialias):
    return _like_image_batch(grad, input_size[0], input_size[1])


@torch.library.register_fake("pydcr::degrade")
def _degrade_fake(x, low, size, antialias=True):
    torch._check(x.dim() == 4, lambda: f"pydcr.degrade: x must be a 4-D tensor N x C x H x W, got {x.dim()}")
    return _like_image_batch(x, size[0], size[1])


@torch.library.register_fake("pydcr::degrade_backward")
def _degrade_backward_fake(grad, low, input_size, antialias):
    return _like_image_batch(grad, input_size[0], input_size[1])


# Autograd. Every resampling op is linear in its tensor argument: the gradient of an op is its
# adjoint, and the adjoint's gradient is the op again.


def _save_spatial(ctx, inputs, output):
    ctx.in_size = list(inputs[0].shape[-2:])
    ctx.args = inputs[1:]


def _resize_grad(ctx, grad):
    size, antialias = ctx.args
    return torch.ops.pydcr.resize_backward.default(grad, ctx.in_size, antialias), None, None


def _resize_backward_grad(ctx, grad):
    input_size, antialias = ctx.args
    return torch.ops.pydcr.resize.default(grad, ctx.in_size, antialias), None, None


def _degrade_grad(ctx, grad):
    low, size, antialias = ctx.args
    return torch.ops.pydcr.degrade_backward.default(grad, low, ctx.in_size, antialias), None, None, None


def _degrade_backward_grad(ctx, grad):
    low, input_size, antialias = ctx.args
    return torch.ops.pydcr.degrade.default(grad, low, ctx.in_size, antialias), None, None, None


torch.library.register_autograd("pydcr::resize", _resize_grad, setup_context=_save_spatial)
torch.library.register_autograd("pydcr::resize_backward", _resize_backward_grad, setup_context=_save_spatial)
torch.library.register_autograd("pydcr::degrade", _degrade_grad, setup_context=_save_spatial)
torch.library.register_autograd("pydcr::degrade_backward", _degrade_backward_grad, setup_context=_save_spatial)
