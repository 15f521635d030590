"""The fused ops of pydcr: Python wrappers, fake (meta) kernels and autograd.

Schemas and kernels are compiled (csrc/); this module gives them their Python signatures, shape
inference for torch.compile and fake tensors, and gradients. Each op equals its twin in
:mod:`pydcr.reference`.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from . import _extension  # noqa: F401  (registers the ops)
from . import reference
from ._args import Size2, pair

__all__ = ["resize", "degrade"]


def _check_tensor(op: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pydcr.{op}: {name} must be a torch.Tensor, got {type(x).__name__}")


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type the kernels compute in: float for float16 and bfloat16, else the type itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Differentiable:
    """A compiled op and its gradient, as pydcr's Python API calls it.

    The gradient (``backward(ctx, *grads)`` after ``setup_context(ctx, inputs, output)``) is
    registered with torch.library, which serves torch.compile, torch.export and callers of
    ``torch.ops.pydcr``. That route runs a Python autograd kernel inside the dispatcher on every
    call, which costs more than a small activation's arithmetic, so eager calls take an
    autograd.Function made of the same two functions instead, and calls that need no gradient go
    straight to the kernels. ``python -m bench.prelu`` times both routes (its "call" rows).
    """

    def __init__(self, name: str, backward, setup_context):
        self.name = name
        self.op = getattr(torch.ops.pydcr, name).default
        torch.library.register_autograd(f"pydcr::{name}", backward, setup_context=setup_context)
        op = self.op

        # forward takes ctx and calls setup_context itself: an autograd.Function with a separate
        # setup_context binds its arguments through inspect.signature on every call.
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():
                output = op(*args)
            setup_context(ctx, args, output)
            return output

        def eager_backward(ctx, *grads):
            if torch.is_grad_enabled():  # create_graph: record the backward ops' own gradients
                return backward(ctx, *grads)
            with torch._C._AutoDispatchBelowAutograd():
                return backward(ctx, *grads)

        self.function = type(f"{name}_function", (torch.autograd.Function,), {
            "forward": staticmethod(forward),
            "backward": staticmethod(eager_backward),
        })

    def __call__(self, *args):
        """The op on every argument of its schema, in order."""
        if torch.compiler.is_compiling():  # graphs hold the op, and AOTAutograd its registered gradient
            return self.op(*args)
        if fwAD._current_level >= 0 and any(_is_dual(a) for a in args):  # else the tangent is dropped unsaid
            raise NotImplementedError(f"pydcr.{self.name}: forward-mode AD is not supported by the fused ops; "
                                      f"pydcr.reference has their pure-PyTorch twins")
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return self.op(*args)


def _is_dual(a) -> bool:
    return isinstance(a, torch.Tensor) and fwAD.unpack_dual(a).tangent is not None


def resize(x: torch.Tensor, size: Size2, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of an N x C x H x W batch to ``size`` (an int for a square, or (h, w)).

    Equals ``F.interpolate(x, size, mode="bicubic", antialias=antialias, align_corners=False)``.
    ``antialias=True`` is Keys' kernel with a = -0.5, widened when shrinking (PIL, MATLAB imresize);
    ``antialias=False`` is a = -0.75 without widening (torch's default, OpenCV INTER_CUBIC).
    uint8 input is read directly and gives float32; float input keeps its dtype (float16 and
    bfloat16 are computed in float32 and rounded once). NCHW and channels_last are both read
    natively and the result keeps the input's memory format. Differentiable with respect to
    float input.
    """
    _check_tensor("resize", "x", x)
    return _resize(x, pair("size", size), antialias)


def degrade(x: torch.Tensor, low: Size2, size: Size2 | None = None, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic down to ``low`` and back up to ``size`` (default: the input size) in one pass.

    Equals ``resize(resize(x, low), size)`` without materialising the low-resolution image. This is
    how DCR renders a face at a low resolution k (``low=k``) for the trunk and the LR branch.
    """
    _check_tensor("degrade", "x", x)
    out = list(x.shape[-2:]) if size is None else pair("size", size)
    return _degrade(x, pair("low", low), out, antialias)


# Fake kernels: shape, dtype and memory format of the result, for torch.compile and meta tensors.


def _result_layout(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels give results: channels_last when x is (and is not also plain
    contiguous), else contiguous. The C++ twin is is_channels_last in csrc/common/tensor_checks.h."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _like_image_batch(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
    return x.new_empty((x.shape[0], x.shape[1], h, w), dtype=dtype).contiguous(memory_format=_result_layout(x))


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


_resize = _Differentiable("resize", _resize_grad, _save_spatial)
torch.library.register_autograd("pydcr::resize_backward", _resize_backward_grad, setup_context=_save_spatial)
_degrade = _Differentiable("degrade", _degrade_grad, _save_spatial)
torch.library.register_autograd("pydcr::degrade_backward", _degrade_backward_grad, setup_context=_save_spatial)


# PReLU with a per-channel bias and a residual add (csrc/prelu).

__all__ += ["prelu"]


def prelu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``PReLU(x + bias[c], weight[c]) + residual`` in one pass, for x of shape N x C x H x W or N x C.

    ``weight`` holds one slope per channel, shape (C,), or one shared slope, shape (1,);
    ``bias`` (optional) one value per channel, shape (C,); ``residual`` (optional) has x's shape.
    Equals ``F.prelu(x + bias.view(1, -1, 1, 1), weight) + residual`` (:func:`pydcr.reference.prelu`).
    NCHW and channels_last are read in place and the result keeps x's layout; all tensors share
    x's dtype and device: float16, bfloat16 (autocast's types, computed on in float and rounded
    once), float32 or float64.

    Backward is one pass too (``torch.ops.pydcr.prelu_backward``): the gradients of x, the slopes
    and the bias, with the per-channel sums fused into the pass and added in a fixed order (the
    same result run to run). The residual's gradient is the output gradient itself, not a copy.

    Memory: autograd keeps x alone (one element per element of x) and recomputes the rest. Eager
    ``F.prelu(x + b) + r`` keeps the same amount (PReLU's input, x + b) but also materialises
    x + b and the PReLU output in the forward pass and a full-size slope-gradient tensor in the
    backward pass, three temporaries of x's size that the fused op never allocates.
    """
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None or name in ("x", "weight"):  # bias and residual may be None
            _check_tensor("prelu", name, t)
    return _prelu(x, weight, bias, residual)


def _check_prelu_args(op: str, x, weight, bias, others) -> None:
    torch._check(x.dim() >= 2, lambda: f"pydcr.{op}: x must be N x C or N x C x H x W (at least 2 dimensions), got {x.dim()}")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), *others):
        if t is None:
            continue
        torch._check(t.dtype == x.dtype, lambda: f"pydcr.{op}: {name} has dtype {t.dtype}; expected {x.dtype}, the dtype of x")
        torch._check(t.device == x.device, lambda: f"pydcr.{op}: {name} is on {t.device}; expected {x.device}, the device of x")
    torch._check(weight.dim() == 1 and (weight.shape[0] == 1 or weight.shape[0] == c),
                 lambda: f"pydcr.{op}: weight must hold 1 or C = {c} slopes, shape [1] or [{c}], got shape {list(weight.shape)}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == c,
                     lambda: f"pydcr.{op}: bias must hold C = {c} values, shape [{c}], got shape {list(bias.shape)}")
    for name, t in others:
        torch._check(t.shape == x.shape,
                     lambda: f"pydcr.{op}: {name} must have the shape of x, {list(x.shape)}, got {list(t.shape)}")


@torch.library.register_fake("pydcr::prelu")
def _prelu_fake(x, weight, bias=None, residual=None):
    _check_prelu_args("prelu", x, weight, bias, [] if residual is None else [("residual", residual)])
    return torch.empty_like(x, memory_format=_result_layout(x))


@torch.library.register_fake("pydcr::prelu_backward")
def _prelu_backward_fake(grad, x, weight, bias=None):
    _check_prelu_args("prelu_backward", x, weight, bias, [("grad", grad)])
    return torch.empty_like(x, memory_format=_result_layout(x)), torch.empty_like(weight), x.new_empty(x.shape[1])


def _prelu_setup(ctx, inputs, output):
    x, weight, bias, residual = inputs
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(x, weight, bias)  # x only, of activation size


def _prelu_grad(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.pydcr.prelu_backward.default(grad, x, weight, bias)
    return grad_x, grad_w, grad_b if ctx.has_bias else None, grad if ctx.has_residual else None


def _prelu_backward_setup(ctx, inputs, output):
    grad, x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(grad, x, weight, bias)


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,) or (1,) tensor shaped to broadcast over the channel dimension of `like`."""
    return t.view((1, -1) + (1,) * (like.dim() - 2))


def _channel_sum(t: torch.Tensor, size: int) -> torch.Tensor:
    """Sums an activation-shaped tensor per channel, to shape (C,), or over everything when size is 1."""
    dims = [0] + list(range(2, t.dim()))
    s = t.sum(dims)
    return s.sum().reshape(1) if size == 1 and s.shape[0] != 1 else s


def _prelu_backward_grad(ctx, gg_x, gg_w, gg_b):
    return _prelu_double_backward(*ctx.saved_tensors, ctx.has_bias, gg_x, gg_w, gg_b)


def _prelu_double_backward(grad, x, weight, bias, has_bias, gg_x, gg_w, gg_b):
    """Gradients of (grad_x, grad_w, grad_b) = prelu_backward(grad, x, w, b) (double backward).

    With z = x + b, n = (z <= 0) and s = 1 - n + n * w: grad_x = grad * s, grad_w = sum(grad * z * n),
    grad_b = sum(grad * s). The masks are piecewise constant, so x moves only grad_w, through z.
    """
    w = _per_channel(weight, x)
    z = x if bias is None else x + _per_channel(bias, x)
    neg = (z <= 0).to(x.dtype)
    slope = 1 - neg + neg * w
    d_grad = torch.zeros_like(grad)
    d_x = torch.zeros_like(x)
    d_w = torch.zeros_like(weight)
    if gg_x is not None:
        d_grad = d_grad + gg_x * slope
        d_w = d_w + _channel_sum(gg_x * grad * neg, weight.shape[0])
    if gg_b is not None:
        gb = _per_channel(gg_b, x)
        d_grad = d_grad + gb * slope
        d_w = d_w + _channel_sum(gb * grad * neg, weight.shape[0])
    if gg_w is not None:
        gw = _per_channel(gg_w, x)
        d_grad = d_grad + gw * z * neg
        d_x = gw * grad * neg
    d_b = _channel_sum(d_x, x.shape[1]) if has_bias else None
    return d_grad, d_x, d_w, d_b


_prelu = _Differentiable("prelu", _prelu_grad, _prelu_setup)
torch.library.register_autograd("pydcr::prelu_backward", _prelu_backward_grad, setup_context=_prelu_backward_setup)

# PReLU then a 2x2 max-pool (csrc/prelu): the trunk's widening convolutions are followed by both.

__all__ += ["prelu_pool"]


def prelu_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``PReLU(x + bias[c], weight[c])`` then a 2x2 max-pool of stride 2 in ceil mode, in one pass.

    x is N x C x H x W; the result is N x C x ceil(H / 2) x ceil(W / 2), in x's layout. Equals
    ``F.max_pool2d(F.prelu(x + bias.view(1, -1, 1, 1), weight), 2, 2, ceil_mode=True)``
    (:func:`pydcr.reference.prelu_pool`), ties and NaNs included: the gradient goes to the first
    largest element of each window, as in eager. float16 and bfloat16 activations are compared in
    float, before their one rounding, so where rounding would make two of them equal the larger
    one wins (eager, which rounds x + b and the PReLU first, would take the first): the
    reference run in float32 is what they equal. Arguments as :func:`prelu`, without the residual.

    The full-size activation is never written: the forward pass writes a quarter of x's size and
    autograd keeps x alone (eager keeps PReLU's input, its output and the pool's int64 indices).
    The backward pass is one pass over x, with the slope and bias sums fused in as in prelu.
    """
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None or name != "bias":
            _check_tensor("prelu_pool", name, t)
    return _prelu_pool(x, weight, bias)


def _pooled_like(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.new_empty((n, c, (h + 1) // 2, (w + 1) // 2)).contiguous(memory_format=_result_layout(x))


def _check_pool_input(op: str, x) -> None:
    torch._check(x.dim() == 4, lambda: f"pydcr.{op}: x must be N x C x H x W, got {x.dim()} dimensions")


@torch.library.register_fake("pydcr::prelu_pool")
def _prelu_pool_fake(x, weight, bias=None):
    _check_pool_input("prelu_pool", x)
    _check_prelu_args("prelu_pool", x, weight, bias, [])
    return _pooled_like(x)


@torch.library.register_fake("pydcr::prelu_pool_backward")
def _prelu_pool_backward_fake(grad, x, weight, bias=None):
    _check_pool_input("prelu_pool_backward", x)
    _check_prelu_args("prelu_pool_backward", x, weight, bias, [])
    torch._check(grad.shape == _pooled_like(x).shape,
                 lambda: f"pydcr.prelu_pool_backward: grad must have the pooled shape of x, got {list(grad.shape)}")
    return torch.empty_like(x, memory_format=_result_layout(x)), torch.empty_like(weight), x.new_empty(x.shape[1])


def _prelu_pool_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias)


def _prelu_pool_grad(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.pydcr.prelu_pool_backward.default(grad, x, weight, bias)
    return grad_x, grad_w, grad_b if ctx.has_bias else None


def _prelu_pool_backward_setup(ctx, inputs, output):
    grad, x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(grad, x, weight, bias)


def _prelu_pool_backward_grad(ctx, gg_x, gg_w, gg_b):
    """Double backward. prelu_pool_backward(grad, x, w, b) is prelu_backward(route(grad), x, w, b),
    where route puts each output gradient on its window's largest element: linear in grad and, in
    x, piecewise constant. So the gradients are prelu_backward's, with grad's gathered back."""
    grad, x, weight, bias = ctx.saved_tensors
    with torch.no_grad():  # each window's largest activation, compared in the kernels' arithmetic
        acc = [None if t is None else t.to(_accumulator_dtype(x.dtype)) for t in (x, weight, bias)]
        _, where = F.max_pool2d(reference.prelu(*acc), 2, 2, ceil_mode=True, return_indices=True)
    routed = torch.zeros_like(x).flatten(2).scatter_(2, where.flatten(2), grad.flatten(2)).view_as(x)
    d_routed, d_x, d_w, d_b = _prelu_double_backward(routed, x, weight, bias, ctx.has_bias, gg_x, gg_w, gg_b)
    d_grad = d_routed.flatten(2).gather(2, where.flatten(2)).view_as(grad)
    return d_grad, d_x, d_w, d_b


_prelu_pool = _Differentiable("prelu_pool", _prelu_pool_grad, _prelu_pool_setup)
torch.library.register_autograd(
    "pydcr::prelu_pool_backward", _prelu_pool_backward_grad, setup_context=_prelu_pool_backward_setup
)

# ---- Center loss and the center update (csrc/center) ---------------------------------------------
#
# features are B x D, labels B class indices (int64 or int32) into the rows of centers (C x D, the
# features' dtype). The update ops move only the classes present in the batch and cost O(B * D),
# whatever C; their results are bitwise the same run to run.

__all__ += ["center_loss", "center_update_", "center_stats", "center_apply_"]


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """1/2 mean over the batch of ||x_i - c_{y_i}||^2, as a 0-dim tensor (0 for an empty batch).

    Differentiable with respect to ``features`` and ``centers``; the gradient to ``centers`` (a
    dense C x D tensor) is computed only when ``centers`` requires it. No B x C temporary.
    """
    for name, t in (("features", features), ("labels", labels), ("centers", centers)):
        _check_tensor("center_loss", name, t)
    return _center_loss(features, labels, centers)


def center_update_(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Wen et al.'s center update, in place; returns ``centers``.

    For every class j in the batch, ``c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)``
    with n_j the count of j in the batch; other classes are untouched. One pass over the batch,
    grouped by label; each class's sum runs over its rows in batch order, so the result does not
    depend on threads or runs. Equals ``center_apply_(centers, *center_stats(features, labels,
    centers), alpha)`` bitwise.
    """
    for name, t in (("centers", centers), ("features", features), ("labels", labels)):
        _check_tensor("center_update_", name, t)
    _check_in_place("center_update_", centers, features=features)
    torch.ops.pydcr.center_update_.default(centers, features, labels, float(alpha))
    _mark_modified(centers)
    return centers


def center_stats(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's per-class statistics for the center update: ``(classes, sums, counts)``.

    ``classes`` (K, int64) are the distinct labels in ascending order, ``sums`` (K x D) the sums of
    x_i - c_j over each class's rows (float32 for float16/bfloat16 features, else their dtype) and
    ``counts`` (K, int64) the rows per class. Sums and counts of several batches (for instance of
    several ranks, on the union of their classes) add up to those of the combined batch, which is
    how :class:`pydcr.losses.CenterLoss` updates centers under torch.distributed.
    """
    for name, t in (("features", features), ("labels", labels), ("centers", centers)):
        _check_tensor("center_stats", name, t)
    return tuple(torch.ops.pydcr.center_stats.default(features, labels, centers))


def center_apply_(
    centers: torch.Tensor, classes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Moves the listed centers in place, ``c_j <- c_j + alpha * sums_j / (1 + counts_j)``; returns ``centers``.

    ``classes`` must be distinct and ascending, as :func:`center_stats` returns them.
    """
    for name, t in (("centers", centers), ("classes", classes), ("sums", sums), ("counts", counts)):
        _check_tensor("center_apply_", name, t)
    _check_in_place("center_apply_", centers, sums=sums)
    torch.ops.pydcr.center_apply_.default(centers, classes, sums, counts, float(alpha))
    _mark_modified(centers)
    return centers


def _check_in_place(op: str, centers: torch.Tensor, **read: torch.Tensor) -> None:
    """Refuse, as built-in in-place ops do, to move centers that autograd is tracking (a leaf or a
    view of one: its gradient would silently ignore the update), centers whose elements share
    memory (an expand()ed tensor: the classes' moves would pile up), or centers whose memory an
    input read (`read`) shares: the kernels would read values they have already moved."""
    if torch.is_grad_enabled() and centers.requires_grad:
        raise RuntimeError(f"pydcr.{op}: centers requires grad; update it under torch.no_grad(), as "
                           "pydcr.losses.CenterLoss does")
    if not torch.compiler.is_compiling():  # a graph checks in the fake kernel, on its fake tensors
        if _may_overlap_itself(centers):
            raise RuntimeError(f"pydcr.{op}: elements of centers share memory (an expand()ed tensor?): "
                               "pass centers.clone()")
        _check_no_overlap(op, centers, **read)


def _check_no_overlap(op: str, centers: torch.Tensor, **read: torch.Tensor) -> None:
    for name, t in read.items():
        if _overlap(centers, t):
            raise RuntimeError(f"pydcr.{op}: {name} shares memory with centers, which the op writes: "
                               f"pass {name}.clone()")


def _may_overlap_itself(t: torch.Tensor) -> bool:
    """Whether two indices of t may address one element: false when, dimension by dimension in
    order of stride, each stride reaches past all that the smaller ones span."""
    span = 1  # elements the dimensions so far reach, from the first
    for stride, size in sorted((abs(st), n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if stride < span:
            return True
        span += stride * (size - 1)
    return False


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b may share elements: their byte spans in one storage intersect."""
    # _is_alias_of first: one storage (fake and meta tensors included, without reading memory); a
    # fresh tensor (a graph's center_stats sums, of data-dependent size) is then never asked its size
    if not torch._C._is_alias_of(a, b) or not a.numel() or not b.numel():
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        start = t.storage_offset() * t.element_size()
        last = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
        return start, start + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _mark_modified(t: torch.Tensor) -> None:
    """Bump the version counter as a built-in in-place op does, so that a backward which saved `t`
    before it changed raises instead of using the new values. (Compiled graphs track the mutation
    from the schema; inference tensors have no counter.)"""
    if not torch.compiler.is_compiling() and not t.is_inference():
        torch.autograd.graph.increment_version(t)


def _check_center_batch(op: str, features, labels, centers) -> None:
    torch._check(features.dim() == 2, lambda: f"pydcr.{op}: features must be a 2-D tensor B x D, got {features.dim()}")
    torch._check(centers.dim() == 2, lambda: f"pydcr.{op}: centers must be a 2-D tensor C x D, got {centers.dim()}")
    torch._check(labels.dim() == 1, lambda: f"pydcr.{op}: labels must be a 1-D tensor, got {labels.dim()}")


@torch.library.register_fake("pydcr::center_loss")
def _center_loss_fake(features, labels, centers):
    _check_center_batch("center_loss", features, labels, centers)
    return features.new_empty(())


@torch.library.register_fake("pydcr::center_loss_backward")
def _center_loss_backward_fake(grad, features, labels, centers, centers_grad):
    _check_center_batch("center_loss_backward", features, labels, centers)
    return features.new_empty(features.shape), centers.new_empty(centers.shape if centers_grad else (0,))


@torch.library.register_fake("pydcr::center_stats")
def _center_stats_fake(features, labels, centers):
    _check_center_batch("center_stats", features, labels, centers)
    k = torch.library.get_ctx().new_dynamic_size()
    return (
        labels.new_empty((k,), dtype=torch.int64),
        features.new_empty((k, features.shape[1]), dtype=_accumulator_dtype(features.dtype)),
        labels.new_empty((k,), dtype=torch.int64),
    )


@torch.library.register_fake("pydcr::center_apply_")
def _center_apply_fake(centers, classes, sums, counts, alpha):
    _check_no_overlap("center_apply_", centers, sums=sums)
    return None


@torch.library.register_fake("pydcr::center_update_")
def _center_update_fake(centers, features, labels, alpha):
    _check_no_overlap("center_update_", centers, features=features)
    return None


# Autograd. center_loss_backward returns (d/dfeatures, d/dcenters) scaled by the upstream grad g:
# (g/B) d_i and -(g/B) sum_{i: y_i = j} d_i, with d_i = x_i - c_{y_i}. It is linear in (features,
# centers) and in g, so its own gradient is the same op applied to the incoming gradients, plus a
# dot product for g.


def _center_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _center_loss_grad(ctx, grad):
    features, labels, centers = ctx.saved_tensors
    want_features, _, want_centers = ctx.needs_input_grad
    gx, gc = torch.ops.pydcr.center_loss_backward.default(grad, features, labels, centers, want_centers)
    return (gx if want_features else None), None, (gc if want_centers else None)


def _center_loss_backward_setup(ctx, inputs, output):
    grad, features, labels, centers, centers_grad = inputs
    ctx.save_for_backward(grad, features, labels, centers)
    ctx.centers_grad = centers_grad


def _center_loss_backward_grad(ctx, grad_gx, grad_gc):
    grad, features, labels, centers = ctx.saved_tensors
    want_grad, want_features, _, want_centers, _ = ctx.needs_input_grad
    # The incoming gradients play the roles of features and centers (zeros where none came in).
    ux = torch.zeros_like(features) if grad_gx is None else grad_gx
    uc = grad_gc if (ctx.centers_grad and grad_gc is not None) else torch.zeros_like(centers)
    backward = torch.ops.pydcr.center_loss_backward.default
    dx, dc = backward(grad, ux, labels, uc, want_centers)
    dg = None
    if want_grad:
        # d/dg = 1/B sum_i <ux_i - uc_{y_i}, x_i - c_{y_i}>: both factors are the backward at g = 1, over B.
        one = torch.ones_like(grad)
        u, _ = backward(one, ux, labels, uc, False)
        d, _ = backward(one, features, labels, centers, False)
        dg = ((u * d).sum() * features.shape[0]).reshape(grad.shape)
    return dg, (dx if want_features else None), None, (dc if want_centers else None), None


_center_loss = _Differentiable("center_loss", _center_loss_grad, _center_loss_setup)
torch.library.register_autograd(
    "pydcr::center_loss_backward", _center_loss_backward_grad, setup_context=_center_loss_backward_setup
)
