"""prelu_pool and prelu_pool_backward against their reference: F.prelu, then F.max_pool2d (2x2, ceil mode)."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from pydcr import ops, reference
from test_prelu import (ALL_DTYPES, FLOAT64_TOL, LOW_PRECISION, TOL, activation, assert_same_for_any_thread_count,
                        forward_and_grads, layouts, slopes, wide_range)

# Widths past 32 windows take the CPU kernel's whole 16-window spans as well as its padded tail;
# odd sizes give the ceil-mode edge windows.
shapes = st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(1, 9), st.integers(1, 70))


def make_args(shape, dtype, layout, *, shared, slope_values, bias, device="cpu"):
    c = shape[1]
    x = activation(shape, dtype, layout, device)
    weight = torch.tensor((slope_values * c)[: 1 if shared else c], dtype=dtype, device=device)
    b = activation((c,), dtype, device=device, seed=1) if bias else None
    return x, weight, b


def check_against_reference(args, tol):
    """ops.prelu_pool against the reference run in the type the kernels compute in (float for
    float16 and bfloat16, whose results are rounded once from it)."""
    x = args[0]
    grad = activation(reference.prelu_pool(*args).shape, x.dtype, device=x.device, seed=3)
    y, grads = forward_and_grads(ops.prelu_pool, args, grad)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    ref_args = [None if a is None else a.to(acc) for a in args]
    y_ref, grads_ref = forward_and_grads(reference.prelu_pool, ref_args, grad.to(acc))
    # The same arithmetic picks the same element: the values and grad_x are exact; the slope
    # and bias gradients are sums, added in another order.
    exact = dict(rtol=0, atol=0, equal_nan=True)
    assert y.dtype == x.dtype
    torch.testing.assert_close(y, y_ref.to(x.dtype), **exact)
    assert y.is_contiguous(memory_format=ops._result_layout(x))
    torch.testing.assert_close(grads[0], grads_ref[0].to(x.dtype), **exact)
    for ours, ref in zip(grads[1:], grads_ref[1:]):
        torch.testing.assert_close(ours, ref.to(x.dtype), rtol=tol, atol=tol * max(1, x.numel()) ** 0.5)


@settings(max_examples=200, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]), layout=layouts, shared=st.booleans(),
       slope_values=st.lists(slopes, min_size=1, max_size=6), bias=st.booleans())
def test_matches_reference(shape, dtype, layout, shared, slope_values, bias):
    args = make_args(shape, dtype, layout, shared=shared, slope_values=slope_values, bias=bias)
    check_against_reference(args, TOL[dtype])


@settings(max_examples=100, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(LOW_PRECISION), layout=layouts, shared=st.booleans(),
       slope_values=st.lists(slopes, min_size=1, max_size=6), bias=st.booleans())
def test_low_precision_matches_reference(shape, dtype, layout, shared, slope_values, bias):
    args = make_args(shape, dtype, layout, shared=shared, slope_values=slope_values, bias=bias)
    check_against_reference(args, FLOAT64_TOL[dtype])


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_over_the_whole_range(dtype, layout):
    # Subnormals, overflow, infinities and NaN: chosen and rounded as the float32 reference does.
    x = wide_range((2, 4, 9, 37), dtype, seed=0)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    w = torch.tensor([0.25, -0.5, 3.0, 1e-3], dtype=dtype)
    b = wide_range((4,), dtype, seed=1).nan_to_num(0.0, 0.0, 0.0)
    grad = wide_range((2, 4, 5, 19), dtype, seed=2)
    y, (gx,) = forward_and_grads(lambda x: ops.prelu_pool(x, w, b), (x,), grad)
    y_ref, (gx_ref,) = forward_and_grads(lambda x: reference.prelu_pool(x, w.float(), b.float()), (x.float(),),
                                         grad.float())
    torch.testing.assert_close(y, y_ref.to(dtype), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(gx, gx_ref.to(dtype), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_double_backward_routes_as_the_backward(dtype):
    # x + b rounds to a tie in the 16-bit type (1 + 128 and 1.0078125 + 128 in bfloat16; 1 + 1024
    # and 1.0009765625 + 1024 in float16) but not in float, where the kernels compare: the second
    # element wins, in the backward and in its own gradient alike.
    step, b = (2.0 ** -7, 128.0) if dtype == torch.bfloat16 else (2.0 ** -10, 1024.0)
    x = torch.tensor([1.0, 1.0 + step, 0.5, -2.0], dtype=dtype).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    w, bias = torch.full((3,), 0.25, dtype=dtype), torch.full((3,), b, dtype=dtype)
    grad = torch.randn(2, 3, 1, 1).to(dtype).requires_grad_()
    direction = torch.randn(2, 3, 2, 2).to(dtype)
    (gx,) = torch.autograd.grad(ops.prelu_pool(x.requires_grad_(), w, bias), x, grad, create_graph=True)
    assert gx[:, :, 0, 1].ne(0).all() and gx[:, :, 0, 0].eq(0).all()
    (d_grad,) = torch.autograd.grad((gx * direction).sum(), grad)
    torch.testing.assert_close(d_grad, direction[:, :, :1, 1:], rtol=0, atol=0)


def special_values(shape, seed, device="cpu"):
    """Activations with NaN, infinities and ties (zeros, repeated values) in many windows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).round()  # ties within windows
    pick = torch.rand((4,) + shape, generator=g)
    x[pick[0] < 0.1] = float("nan")
    x[pick[1] < 0.1] = float("inf")
    x[pick[2] < 0.1] = float("-inf")
    x[pick[3] < 0.2] = 0.0
    return x.to(device)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("seed", range(5))
def test_nan_infinity_and_ties_go_where_eager_sends_them(layout, seed):
    # Eager keeps the first maximum of a window, or its last NaN; the gradient goes there.
    x = special_values((2, 3, 7, 37), seed)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    w, b = torch.tensor([0.25, -0.5, 0.0]), torch.zeros(3)
    grad = torch.randn(2, 3, 4, 19)
    y, (gx,) = forward_and_grads(lambda x: ops.prelu_pool(x, w, b), (x,), grad)
    y_ref, (gx_ref,) = forward_and_grads(lambda x: reference.prelu_pool(x, w, b), (x,), grad)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.nan_to_num(), y_ref.nan_to_num())
    assert torch.equal(gx.isnan(), gx_ref.isnan()) and torch.equal(gx.nan_to_num(), gx_ref.nan_to_num())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_is_deterministic_across_thread_counts(layout):
    x, w, b = make_args((4, 16, 33, 45), torch.float32, layout, shared=False, slope_values=[0.25, -0.3], bias=True)
    grad = activation((4, 16, 17, 23), seed=5)
    assert_same_for_any_thread_count(lambda: torch.ops.pydcr.prelu_pool_backward(grad, x, w, b))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(shared, layout):
    x, w, b = make_args((2, 3, 5, 7), torch.float64, layout, shared=shared, slope_values=[0.25, -0.5, 1.5], bias=True)
    inputs = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(ops.prelu_pool, inputs)
    assert torch.autograd.gradgradcheck(ops.prelu_pool, inputs)
    assert torch.autograd.gradcheck(lambda x, w: ops.prelu_pool(x, w), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: ops.prelu_pool(x, w), (x, w))


def opcheck_samples(device="cpu", dtypes=ALL_DTYPES):
    for dtype in dtypes:
        for layout in ("contiguous", "channels_last"):
            for shared in (False, True):
                x, w, b = make_args((2, 3, 5, 6), dtype, layout, shared=shared, slope_values=[0.25, -0.5, 0.0],
                                    bias=True, device=device)
                g = activation((2, 3, 3, 3), dtype, layout, device, seed=6)
                yield torch.ops.pydcr.prelu_pool.default, (x, w, b)
                yield torch.ops.pydcr.prelu_pool.default, (x, w, None)
                yield torch.ops.pydcr.prelu_pool_backward.default, (g, x, w, b)
                yield torch.ops.pydcr.prelu_pool_backward.default, (g, x, w, None)
    empty = torch.zeros(0, 3, 4, 4, device=device)
    yield torch.ops.pydcr.prelu_pool.default, (empty, torch.full((3,), 0.25, device=device), None)


@pytest.mark.parametrize("op,args", list(opcheck_samples()))
def test_opcheck(op, args):
    opcheck(op, tuple(None if a is None else a.requires_grad_() for a in args))


def test_empty_batch_gradients_are_zero():
    x = torch.zeros(0, 3, 5, 4)
    grad_x, grad_w, grad_b = torch.ops.pydcr.prelu_pool_backward(torch.zeros(0, 3, 3, 2), x, torch.full((1,), 0.25),
                                                                 torch.ones(3))
    assert grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros(1)) and torch.equal(grad_b, torch.zeros(3))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile(backend):
    x, w, b = make_args((2, 4, 7, 6), torch.float32, "channels_last", shared=False, slope_values=[0.25, -1.0],
                        bias=True)
    grad = activation((2, 4, 4, 3), seed=7)
    f = torch.compile(lambda x, w, b: ops.prelu_pool(x, w, b) * 2, fullgraph=True, backend=backend)
    y, grads = forward_and_grads(f, (x, w, b), grad)
    y_ref, grads_ref = forward_and_grads(lambda x, w, b: reference.prelu_pool(x, w, b) * 2, (x, w, b), grad)
    torch.testing.assert_close(y, y_ref)
    for ours, ref in zip(grads, grads_ref):
        torch.testing.assert_close(ours, ref)


def _x(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ops.prelu_pool(_x(2, 3, 4), _x(3)), RuntimeError, "x must be N x C x H x W, got 3 dimensions"),
        (lambda: ops.prelu_pool(_x(2, 3, 4, 4), _x(2)), RuntimeError, r"weight must hold 1 or C = 3 slopes"),
        (lambda: ops.prelu_pool(_x(2, 3, 4, 4), _x(3), _x(4)), RuntimeError, r"bias must hold C = 3 values"),
        (lambda: ops.prelu_pool(torch.ones(2, 3, 4, 4, dtype=torch.int32), torch.ones(3, dtype=torch.int32)),
         RuntimeError, "x has dtype int32; expected one of float16, bfloat16, float32, float64 on CPU"),
        (lambda: ops.prelu_pool(_x(2, 3, 4, 4), _x(3, dtype=torch.float64)), RuntimeError, "weight has dtype float64"),
        (lambda: ops.prelu_pool(_x(2, 3, 4, 4), 0.25), TypeError, "weight must be a torch.Tensor"),
        (lambda: torch.ops.pydcr.prelu_pool_backward(_x(2, 3, 3, 3), _x(2, 3, 7, 8), _x(3)), RuntimeError,
         r"grad must have the pooled shape of x, \[2, 3, 7, 8\] -> \[2, 3, 4, 4\], got \[2, 3, 3, 3\]"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# CUDA: the same checks on the device (run by scripts/gpu_check.sh on a GPU machine).


@pytest.mark.cuda
@settings(max_examples=100, deadline=None)
@given(shape=shapes | st.tuples(st.integers(1, 3), st.integers(1, 130), st.integers(1, 9), st.integers(1, 9)),
       dtype=st.sampled_from(ALL_DTYPES), layout=layouts, shared=st.booleans(),
       slope_values=st.lists(slopes, min_size=1, max_size=6), bias=st.booleans())
def test_cuda_matches_reference(shape, dtype, layout, shared, slope_values, bias):
    args = make_args(shape, dtype, layout, shared=shared, slope_values=slope_values, bias=bias, device="cuda")
    check_against_reference(args, FLOAT64_TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_special_values_and_gradcheck(layout):
    x = special_values((2, 3, 7, 37), 0, device="cuda")
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    w, b = torch.tensor([0.25, -0.5, 0.0], device="cuda"), torch.zeros(3, device="cuda")
    grad = torch.randn(2, 3, 4, 19, device="cuda")
    y, (gx,) = forward_and_grads(lambda x: ops.prelu_pool(x, w, b), (x,), grad)
    y_ref, (gx_ref,) = forward_and_grads(lambda x: reference.prelu_pool(x, w, b), (x,), grad)
    assert torch.equal(y.nan_to_num(), y_ref.nan_to_num()) and torch.equal(gx.nan_to_num(), gx_ref.nan_to_num())
    args = make_args((2, 3, 5, 7), torch.float64, layout, shared=False, slope_values=[0.25, -0.5], bias=True,
                     device="cuda")
    assert torch.autograd.gradcheck(ops.prelu_pool, [t.requires_grad_() for t in args])


@pytest.mark.cuda
@pytest.mark.parametrize("op,args", list(opcheck_samples("cuda")) if torch.cuda.is_available() else [])
def test_cuda_opcheck(op, args):
    opcheck(op, tuple(None if a is None else a.requires_grad_() for a in args))


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
# The trunk's pools at batch 64 (several blocks per channel) and shapes with ceil-mode edges.
@pytest.mark.parametrize("shape", [(64, 64, 112, 96), (64, 256, 28, 24), (5, 3, 37, 9), (2, 512, 1, 1)])
def test_cuda_trunk_shapes_and_determinism(shape, layout):
    x, w, b = make_args(shape, torch.float32, layout, shared=False, slope_values=[0.25, -0.2, 0.0], bias=True,
                        device="cuda")
    grad = activation(reference.prelu_pool(x, w, b).shape, device="cuda", seed=8)
    first = torch.ops.pydcr.prelu_pool_backward(grad, x, w, b)
    assert all(torch.equal(a, c) for a, c in zip(first, torch.ops.pydcr.prelu_pool_backward(grad, x, w, b)))
    y, grads = forward_and_grads(ops.prelu_pool, (x, w, b), grad)
    y_ref, grads_ref = forward_and_grads(reference.prelu_pool, (x, w, b), grad)
    assert torch.equal(y, y_ref) and torch.equal(grads[0], grads_ref[0])
    for ours, ref in zip(grads[1:], grads_ref[1:]):
        torch.testing.assert_close(ours.double(), ref.double(), atol=1e-4 * max(1.0, ref.abs().max().item()), rtol=1e-4)
