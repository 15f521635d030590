"""prelu and prelu_backward against their reference in pydcr.reference (F.prelu with adds)."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from pydcr import ops, reference

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
# float16 and bfloat16 (autocast's types) are computed on in float and rounded once.
LOW_PRECISION = [torch.float16, torch.bfloat16]
ALL_DTYPES = LOW_PRECISION + [torch.float32, torch.float64]
# Tolerance against the float64 reference of the same inputs, per dtype.
FLOAT64_TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-12}
# Slopes worth covering: zero (ReLU), negative, the nn.PReLU default, identity and steeper than 1.
slopes = st.sampled_from([0.0, -0.5, 0.25, 1.0, 2.5]) | st.floats(-3, 3, allow_nan=False, width=32)
layouts = st.sampled_from(["contiguous", "channels_last", "strided"])


def activation(shape, dtype=torch.float32, layout="contiguous", device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a view with a gap after every row
        return torch.cat([x, x], dim=-1)[..., : shape[-1]]
    return x


def make_args(shape, dtype, layout, *, shared, slope_values, bias, residual, residual_layout=None, device="cpu"):
    c = shape[1]
    x = activation(shape, dtype, layout, device)
    values = (slope_values * c)[: 1 if shared else c]
    weight = torch.tensor(values, dtype=dtype, device=device)
    b = activation((c,), dtype, device=device, seed=1) if bias else None
    r = activation(shape, dtype, residual_layout or layout, device, seed=2) if residual else None
    return x, weight, b, r


def forward_and_grads(fn, args, grad):
    """fn(*args) and the gradients of <fn(*args), grad> with respect to every tensor in args."""
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    y = fn(*leaves)
    inputs = [a for a in leaves if a is not None]
    grads = torch.autograd.grad(y, inputs, grad)
    return y, grads


shapes = st.one_of(
    st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(1, 7), st.integers(1, 7)),
    st.tuples(st.integers(0, 9), st.integers(1, 40)),
    st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(1, 9)),  # N x C x L: any trailing dims
)


@settings(max_examples=200, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]), layout=layouts,
       residual_layout=layouts, shared=st.booleans(), slope_values=st.lists(slopes, min_size=1, max_size=6),
       bias=st.booleans(), residual=st.booleans())
def test_matches_reference(shape, dtype, layout, residual_layout, shared, slope_values, bias, residual):
    if len(shape) != 4:
        layout, residual_layout = layout.replace("channels_last", "contiguous"), "contiguous"
    args = make_args(shape, dtype, layout, shared=shared, slope_values=slope_values, bias=bias, residual=residual,
                     residual_layout=residual_layout)
    grad = activation(shape, dtype, seed=3)
    y, grads = forward_and_grads(ops.prelu, args, grad)
    y_ref, grads_ref = forward_and_grads(reference.prelu, args, grad)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    # Reductions add in another order than torch's: scale the tolerance by the terms added.
    tol = TOL[dtype] * max(1.0, y.numel() ** 0.5)
    torch.testing.assert_close(y, y_ref, atol=TOL[dtype], rtol=TOL[dtype])
    for ours, ref in zip(grads, grads_ref):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=tol, rtol=TOL[dtype])


def check_against_float64(args, grad):
    """ops.prelu on args (any dtype, any device) against the reference in float64 on the CPU."""
    y, grads = forward_and_grads(ops.prelu, args, grad)
    ref_args = [None if a is None else a.detach().cpu().double() for a in args]
    y_ref, grads_ref = forward_and_grads(reference.prelu, ref_args, grad.cpu().double())
    dtype = args[0].dtype
    assert y.device == args[0].device and y.dtype == dtype
    tol = FLOAT64_TOL[dtype]
    torch.testing.assert_close(y.cpu().double(), y_ref, atol=tol * 4, rtol=tol)
    for ours, ref in zip(grads, grads_ref):
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 1.0)
        torch.testing.assert_close(ours.cpu().double(), ref, atol=tol * scale * 4, rtol=tol)


@settings(max_examples=100, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(LOW_PRECISION), layout=layouts, residual_layout=layouts,
       shared=st.booleans(), slope_values=st.lists(slopes, min_size=1, max_size=6), bias=st.booleans(),
       residual=st.booleans())
def test_low_precision_matches_float64_reference(shape, dtype, layout, residual_layout, shared, slope_values, bias,
                                                 residual):
    if len(shape) != 4:
        layout, residual_layout = layout.replace("channels_last", "contiguous"), "contiguous"
    args = make_args(shape, dtype, layout, shared=shared, slope_values=slope_values, bias=bias, residual=residual,
                     residual_layout=residual_layout)
    check_against_float64(args, activation(shape, dtype, seed=3))


def wide_range(shape, dtype, seed):
    """Values over the dtype's whole range: subnormals, values next to overflow, infinities, NaN."""
    g = torch.Generator().manual_seed(seed)
    info = torch.finfo(dtype)
    exponent = torch.empty(shape, dtype=torch.float64).uniform_(math.log2(info.smallest_normal) - 12,
                                                                math.log2(info.max) + 0.5, generator=g)
    x = torch.randn(shape, generator=g, dtype=torch.float64).sign() * exponent.exp2()
    pick = torch.rand((2,) + tuple(shape), generator=g)
    x[pick[0] < 0.02] = float("nan")
    x[pick[1] < 0.02] = float("inf")
    return x.to(dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_rounds_once_as_the_float32_reference_rounded(dtype, layout):
    # The sum x + b and the product w * z are taken in float and rounded to nearest even once:
    # exactly the float32 reference's result rounded, overflow, subnormals and NaN included.
    x = wide_range((3, 8, 9, 37), dtype, seed=0)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    w = torch.tensor([0.25, -0.5, 0.0, 1.0, 3.0, 1e-3, -7.0, 0.1], dtype=dtype)
    b = wide_range((8,), dtype, seed=1).nan_to_num(0.0, 0.0, 0.0)
    grad = wide_range(x.shape, dtype, seed=2)
    y, grads = forward_and_grads(ops.prelu, (x, w, b), grad)
    y_ref, grads_ref = forward_and_grads(reference.prelu, (x.float(), w.float(), b.float()), grad.float())
    torch.testing.assert_close(y, y_ref.to(dtype), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grads[0], grads_ref[0].to(dtype), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_layout_is_kept(layout):
    x, w, b, r = make_args((2, 3, 5, 4), torch.float32, layout, shared=False, slope_values=[0.25], bias=True,
                           residual=True)
    y = ops.prelu(x, w, b, r)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    grad_x, _, _ = torch.ops.pydcr.prelu_backward(torch.ones_like(y), x, w, b)
    assert grad_x.is_contiguous(memory_format=fmt)


def test_trunk_shapes():
    """The trunk's activations (batch 2), both layouts: forward and gradients."""
    for c, h, w in [(64, 54, 46), (128, 26, 22), (256, 12, 10), (512, 5, 4)]:
        for layout in ("contiguous", "channels_last"):
            args = make_args((2, c, h, w), torch.float32, layout, shared=False, slope_values=[0.25, -0.1, 0.0],
                             bias=True, residual=True)
            grad = activation((2, c, h, w), seed=4)
            y, grads = forward_and_grads(ops.prelu, args, grad)
            y_ref, grads_ref = forward_and_grads(reference.prelu, args, grad)
            torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
            for ours, ref in zip(grads, grads_ref):
                torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-4)


def test_residual_gradient_is_the_output_gradient():
    x, w, b, r = make_args((2, 3, 4, 4), torch.float32, "contiguous", shared=False, slope_values=[0.25], bias=True,
                           residual=True)
    r.requires_grad_()
    grad = torch.randn(2, 3, 4, 4)
    (grad_r,) = torch.autograd.grad(ops.prelu(x, w, b, r), r, grad)
    assert torch.equal(grad_r, grad)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_is_deterministic_across_thread_counts(layout):
    x, w, b, _ = make_args((4, 16, 33, 29), torch.float32, layout, shared=False, slope_values=[0.25, -0.3],
                           bias=True, residual=False)
    grad = activation(x.shape, seed=5)
    assert_same_for_any_thread_count(lambda: torch.ops.pydcr.prelu_backward(grad, x, w, b))


def assert_same_for_any_thread_count(call):
    """call() gives bitwise the same tensors with 1, 2 and 3 CPU threads."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(call())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(shared, layout):
    x, w, b, r = make_args((2, 3, 4, 5), torch.float64, layout, shared=shared, slope_values=[0.25, -0.5, 1.5],
                           bias=True, residual=True)
    inputs = [t.requires_grad_() for t in (x, w, b, r)]
    assert torch.autograd.gradcheck(ops.prelu, inputs)
    assert torch.autograd.gradgradcheck(ops.prelu, inputs)
    assert torch.autograd.gradcheck(lambda x, w: ops.prelu(x, w), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: ops.prelu(x, w), (x, w))
    m = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda m, w: ops.prelu(m, w[:1]), (m, w))


def opcheck_samples(device="cpu", dtypes=ALL_DTYPES):
    for dtype in dtypes:
        for layout in ("contiguous", "channels_last"):
            for shared in (False, True):
                x, w, b, r = make_args((2, 3, 5, 4), dtype, layout, shared=shared, slope_values=[0.25, -0.5, 0.0],
                                       bias=True, residual=True, device=device)
                g = activation(x.shape, dtype, layout, device, seed=6)
                yield torch.ops.pydcr.prelu.default, (x, w, b, r)
                yield torch.ops.pydcr.prelu.default, (x, w, None, None)
                yield torch.ops.pydcr.prelu_backward.default, (g, x, w, b)
                yield torch.ops.pydcr.prelu_backward.default, (g, x, w, None)
        x, w, b, r = make_args((5, 7), dtype, "contiguous", shared=False, slope_values=[0.1], bias=True, residual=True,
                               device=device)
        yield torch.ops.pydcr.prelu.default, (x, w, b, r)
    empty = torch.zeros(0, 3, 4, 4, device=device)
    yield torch.ops.pydcr.prelu.default, (empty, torch.full((3,), 0.25, device=device), None, None)
    yield torch.ops.pydcr.prelu_backward.default, (empty, empty, torch.full((3,), 0.25, device=device), None)


@pytest.mark.parametrize("op,args", list(opcheck_samples()))
def test_opcheck(op, args):
    args = tuple(None if a is None else a.requires_grad_() for a in args)
    opcheck(op, args)


def test_empty_batch_gradients_are_zero():
    x = torch.zeros(0, 3, 4, 4)
    grad_x, grad_w, grad_b = torch.ops.pydcr.prelu_backward(x, x, torch.full((1,), 0.25), torch.ones(3))
    assert grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros(1)) and torch.equal(grad_b, torch.zeros(3))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile(backend):
    x, w, b, r = make_args((2, 4, 6, 5), torch.float32, "channels_last", shared=False, slope_values=[0.25, -1.0],
                           bias=True, residual=True)
    grad = activation(x.shape, seed=7)
    f = torch.compile(lambda x, w, b, r: ops.prelu(x, w, b, r) * 2, fullgraph=True, backend=backend)
    y, grads = forward_and_grads(f, (x, w, b, r), grad)
    y_ref, grads_ref = forward_and_grads(lambda x, w, b, r: reference.prelu(x, w, b, r) * 2, (x, w, b, r), grad)
    torch.testing.assert_close(y, y_ref)
    for ours, ref in zip(grads, grads_ref):
        torch.testing.assert_close(ours, ref)


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ops.prelu(_x(4), _x(1)), RuntimeError, "at least 2 dimensions"),
        (lambda: ops.prelu(_x(2, 3, 4, 4), _x(2)), RuntimeError, r"weight must hold 1 or C = 3 slopes.*got shape \[2\]"),
        (lambda: ops.prelu(_x(2, 3, 4, 4), _x(3, 1)), RuntimeError, r"weight must hold 1 or C = 3.*got shape \[3, 1\]"),
        (lambda: ops.prelu(_x(2, 3, 4, 4), _x(3), _x(1)), RuntimeError, r"bias must hold C = 3 values.*got shape \[1\]"),
        (lambda: ops.prelu(_x(2, 3, 4, 4), _x(3), None, _x(2, 3, 4, 5)), RuntimeError,
         r"residual must have the shape of x, \[2, 3, 4, 4\], got \[2, 3, 4, 5\]"),
        (lambda: ops.prelu(_x(2, 3, 4, 4), _x(3, dtype=torch.float64)), RuntimeError,
         "weight has dtype float64; expected float32, the dtype of x"),
        (lambda: ops.prelu(_x(2, 3), _x(3), _x(3, dtype=torch.float64)), RuntimeError, "bias has dtype float64"),
        (lambda: ops.prelu(_x(2, 3), _x(3), None, _x(2, 3, dtype=torch.float64)), RuntimeError,
         "residual has dtype float64"),
        (lambda: ops.prelu(torch.ones(2, 3, dtype=torch.int32), torch.ones(3, dtype=torch.int32)), RuntimeError,
         "x has dtype int32; expected one of float16, bfloat16, float32, float64 on CPU"),
        (lambda: ops.prelu(_x(2, 3, dtype=torch.bfloat16), _x(3)), RuntimeError,
         "weight has dtype float32; expected bfloat16, the dtype of x"),
        (lambda: ops.prelu(_x(2, 3), torch.empty(3, device="meta")), RuntimeError,
         "weight is on meta; expected cpu, the device of x"),
        (lambda: ops.prelu([[1.0]], _x(1)), TypeError, "x must be a torch.Tensor"),
        (lambda: ops.prelu(_x(2, 3), _x(3), 0.5), TypeError, "bias must be a torch.Tensor"),
        (lambda: torch.ops.pydcr.prelu_backward(_x(2, 3, 4), _x(2, 3, 5), _x(3)), RuntimeError,
         r"grad must have the shape of x, \[2, 3, 5\], got \[2, 3, 4\]"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# CUDA: the same checks on the device (run by scripts/gpu_check.sh on a GPU machine).



@pytest.mark.cuda
@settings(max_examples=100, deadline=None)
@given(shape=shapes | st.tuples(st.integers(1, 3), st.integers(1, 130), st.integers(1, 9), st.integers(1, 9)),
       dtype=st.sampled_from(ALL_DTYPES), layout=layouts, residual_layout=layouts, shared=st.booleans(),
       slope_values=st.lists(slopes, min_size=1, max_size=6), bias=st.booleans(), residual=st.booleans(),
       offset=st.booleans())
def test_cuda_matches_reference(shape, dtype, layout, residual_layout, shared, slope_values, bias, residual, offset):
    if len(shape) != 4:
        layout, residual_layout = layout.replace("channels_last", "contiguous"), "contiguous"
    args = make_args(shape, dtype, layout, shared=shared, slope_values=slope_values, bias=bias, residual=residual,
                     residual_layout=residual_layout, device="cuda")
    if offset:  # unaligned data: the scalar (not vector) kernels
        args = (torch.cat([args[0].flatten(), args[0].flatten()])[1 : args[0].numel() + 1].view(shape),) + args[1:]
    check_against_float64(args, activation(shape, dtype, device="cuda", seed=3))


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(64, 64, 54, 46), (64, 512, 5, 4), (3, 5, 7, 3), (4096, 3)])
def test_cuda_trunk_shapes_and_determinism(shape, layout):
    if len(shape) == 2 and layout == "channels_last":
        pytest.skip("no channels_last for N x C")
    x, w, b, r = make_args(shape, torch.float32, layout, shared=False, slope_values=[0.25, -0.2, 0.0], bias=True,
                           residual=True, device="cuda")
    grad = activation(shape, device="cuda", seed=8)
    first = torch.ops.pydcr.prelu_backward(grad, x, w, b)
    assert all(torch.equal(a, c) for a, c in zip(first, torch.ops.pydcr.prelu_backward(grad, x, w, b)))
    y, grads = forward_and_grads(ops.prelu, (x, w, b, r), grad)
    ref_args = [a.double() for a in (x, w, b, r)]
    y_ref, grads_ref = forward_and_grads(reference.prelu, ref_args, grad.double())
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    for ours, ref in zip(grads, grads_ref):
        torch.testing.assert_close(ours.double(), ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("op,args", list(opcheck_samples("cuda") if torch.cuda.is_available() else []))
def test_cuda_opcheck(op, args):
    args = tuple(None if a is None else a.requires_grad_() for a in args)
    opcheck(op, args)


@pytest.mark.cuda
def test_cuda_gradcheck_and_device_errors():
    x, w, b, r = make_args((2, 3, 4, 5), torch.float64, "channels_last", shared=False, slope_values=[0.25, -0.5],
                           bias=True, residual=True, device="cuda")
    inputs = [t.requires_grad_() for t in (x, w, b, r)]
    assert torch.autograd.gradcheck(ops.prelu, inputs)
    with pytest.raises(RuntimeError, match="weight is on cpu; expected cuda:0, the device of x"):
        ops.prelu(x.detach(), w.detach().cpu())
    with pytest.raises(RuntimeError, match="x is on cpu while another argument is on a CUDA device"):
        ops.prelu(x.detach().cpu(), w.detach())
    with pytest.raises(RuntimeError, match="residual is on cpu"):
        ops.prelu(x.detach(), w.detach(), None, r.detach().cpu())
