"""resize and degrade against their references in pydcr.reference (F.interpolate)."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from pydcr import ops, reference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Values in [0, 1] agree within 1e-5; uint8 images are read as [0, 255]; 16-bit results are within
# their rounding of the float64 reference.
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.uint8: 255e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}

sides = st.integers(1, 40)
layouts = st.sampled_from(["contiguous", "channels_last", "strided"])


def make_batch(n, c, h, w, dtype, layout, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    x = x.to(device)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a view with a gap between rows
        return torch.cat([x, x], dim=3)[..., :w]
    return x


def assert_close(ours, ref, dtype):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, atol=TOL[dtype], rtol=0)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), h=sides, w=sides, oh=sides, ow=sides,
       antialias=st.booleans(), dtype=st.sampled_from([torch.uint8, torch.float32, torch.float64]), layout=layouts)
def test_resize_matches_interpolate(n, c, h, w, oh, ow, antialias, dtype, layout):
    x = make_batch(n, c, h, w, dtype, layout)
    assert_close(ops.resize(x, (oh, ow), antialias=antialias), reference.resize(x, (oh, ow), antialias=antialias), dtype)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), h=sides, w=sides, low=st.tuples(st.sampled_from([1, 2, 6]) | sides, sides),
       out=st.none() | st.tuples(sides, sides), antialias=st.booleans(),
       dtype=st.sampled_from([torch.uint8, torch.float32, torch.float64]), layout=layouts)
def test_degrade_matches_two_resizes(n, c, h, w, low, out, antialias, dtype, layout):
    x = make_batch(n, c, h, w, dtype, layout)
    assert_close(ops.degrade(x, low, out, antialias=antialias), reference.degrade(x, low, out, antialias=antialias), dtype)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), h=sides, w=sides, low=st.tuples(sides, sides), out=st.tuples(sides, sides),
       antialias=st.booleans(), layout=layouts, dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_16_bit_is_computed_in_float32_and_rounded_once(n, c, h, w, low, out, antialias, layout, dtype):
    """float16 and bfloat16 batches, forward and backward: the float32 result rounded once, as on CUDA."""
    x = make_batch(n, c, h, w, dtype, layout)
    g = make_batch(n, c, *out, dtype, layout, seed=1)
    for f, arg in ((lambda t: ops.resize(t, out, antialias=antialias), x),
                   (lambda t: ops.degrade(t, low, out, antialias=antialias), x),
                   (lambda t: torch.ops.pydcr.resize_backward(t, [h, w], antialias), g),
                   (lambda t: torch.ops.pydcr.degrade_backward(t, list(low), [h, w], antialias), g)):
        ours = f(arg)
        assert ours.dtype == dtype
        assert torch.equal(ours, f(arg.float()).to(dtype))
    # Hence within the 16-bit rounding of the float64 reference.
    ref = reference.degrade(x.double(), low, out, antialias=antialias)
    torch.testing.assert_close(ops.degrade(x, low, out, antialias=antialias).double(), ref, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("k", [6, 8, 12, 16, 20, 40])
def test_face_sized_round_trip(k, antialias):
    x = make_batch(4, 3, 112, 96, torch.float32, "contiguous")
    low = ops.resize(x, k, antialias=antialias)
    assert_close(low, reference.resize(x, k, antialias=antialias), torch.float32)
    assert_close(ops.resize(low, (112, 96), antialias=antialias), reference.resize(low, (112, 96), antialias=antialias),
                 torch.float32)
    assert_close(ops.degrade(x, k, antialias=antialias), reference.degrade(x, k, antialias=antialias), torch.float32)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_memory_format_is_kept(layout):
    x = make_batch(2, 3, 16, 12, torch.float32, layout)
    for y in (ops.resize(x, 8), ops.degrade(x, 4)):
        assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def test_identity_size_is_exact():
    x = make_batch(2, 3, 13, 11, torch.float32, "contiguous")
    for aa in (True, False):
        assert torch.equal(ops.resize(x, (13, 11), antialias=aa), x)


@pytest.mark.parametrize("antialias", [True, False])
def test_gradcheck(antialias):
    x = make_batch(2, 2, 9, 7, torch.float64, "contiguous").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.resize(t, (4, 11), antialias=antialias), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.degrade(t, (3, 2), (10, 6), antialias=antialias), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.resize(t, (5, 3), antialias=antialias), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.degrade(t, 2, antialias=antialias), (x,))


@settings(max_examples=40, deadline=None)
@given(h=sides, w=sides, low=st.tuples(sides, sides), out=st.tuples(sides, sides), antialias=st.booleans())
def test_backward_is_adjoint(h, w, low, out, antialias):
    """<A x, y> = <x, A^T y> for the forward maps and their backward ops."""
    x = make_batch(2, 3, h, w, torch.float64, "contiguous", seed=1)
    y = make_batch(2, 3, *out, torch.float64, "contiguous", seed=2)
    fwd = ops.degrade(x, low, out, antialias=antialias)
    adj = torch.ops.pydcr.degrade_backward(y, list(low), [h, w], antialias)
    torch.testing.assert_close((fwd * y).sum(), (x * adj).sum(), rtol=1e-10, atol=1e-10)
    fwd = ops.resize(x, out, antialias=antialias)
    adj = torch.ops.pydcr.resize_backward(y, [h, w], antialias)
    torch.testing.assert_close((fwd * y).sum(), (x * adj).sum(), rtol=1e-10, atol=1e-10)


def test_backward_matches_interpolate_backward():
    x = make_batch(3, 2, 30, 20, torch.float32, "channels_last").requires_grad_()
    g = make_batch(3, 2, 7, 9, torch.float32, "contiguous", seed=3)
    (ours,) = torch.autograd.grad(ops.resize(x, (7, 9)), x, g)
    (ref,) = torch.autograd.grad(reference.resize(x, (7, 9)), x, g)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    g = make_batch(3, 2, 30, 20, torch.float32, "contiguous", seed=4)
    (ours,) = torch.autograd.grad(ops.degrade(x, 6), x, g)
    (ref,) = torch.autograd.grad(reference.degrade(x, 6), x, g)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def opcheck_samples(device="cpu", dtypes=(torch.float32, torch.float64)):
    for dtype in dtypes:
        for layout in ("contiguous", "channels_last"):
            x = make_batch(2, 3, 14, 10, dtype, layout, device)
            yield torch.ops.pydcr.resize.default, (x, [5, 7], True)
            yield torch.ops.pydcr.resize.default, (x, [20, 16], False)
            yield torch.ops.pydcr.degrade.default, (x, [3, 4], [14, 10], True)
            yield torch.ops.pydcr.degrade.default, (x, [6, 6], [9, 11], False)
            if dtype != torch.uint8:
                yield torch.ops.pydcr.resize_backward.default, (x, [6, 4], True)
                yield torch.ops.pydcr.degrade_backward.default, (x, [3, 3], [7, 5], False)
    empty = torch.zeros(0, 3, 8, 8, device=device)
    yield torch.ops.pydcr.resize.default, (empty, [4, 4], True)
    yield torch.ops.pydcr.degrade.default, (empty, [2, 2], [8, 8], True)


@pytest.mark.parametrize("op,args", list(opcheck_samples(dtypes=(torch.float32, torch.float64, torch.uint8, torch.bfloat16))))
def test_opcheck(op, args):
    if args[0].dtype == torch.uint8:  # no gradient to check
        opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    else:
        opcheck(op, args)


def test_compile():
    f = torch.compile(lambda t: ops.degrade(ops.resize(t, (56, 48)), 12) * 2, fullgraph=True, backend="eager")
    x = make_batch(2, 3, 112, 96, torch.float32, "contiguous")
    torch.testing.assert_close(f(x), reference.degrade(reference.resize(x, (56, 48)), 12) * 2, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ops.resize(torch.rand(3, 8, 8), 4), RuntimeError, "4-D tensor"),
        (lambda: ops.resize(torch.rand(1, 3, 8, 8), 0), RuntimeError, "size must be positive"),
        (lambda: ops.resize(torch.rand(1, 3, 8, 8), (4, -1)), RuntimeError, "size must be positive"),
        (lambda: ops.resize(torch.rand(1, 3, 8, 8), (4, 4, 4)), TypeError, "pair of ints"),
        (lambda: ops.resize(torch.rand(1, 3, 8, 8), 2.5), TypeError, "pair of ints"),
        (lambda: ops.resize(torch.zeros(1, 3, 8, 8, dtype=torch.int32), 4), RuntimeError, "dtype int32"),
        (lambda: ops.resize(torch.zeros(1, 3, 8, 8, dtype=torch.int64), 4), RuntimeError, "dtype int64"),
        (lambda: torch.ops.pydcr.resize_backward(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [8, 8], True), RuntimeError,
         "dtype uint8"),
        (lambda: ops.resize(torch.zeros(1, 3, 0, 8), 4), RuntimeError, "positive height and width"),
        (lambda: ops.resize([[1.0]], 4), TypeError, "torch.Tensor"),
        (lambda: ops.degrade(torch.rand(1, 3, 8, 8), 0), RuntimeError, "low must be positive"),
        (lambda: ops.degrade(torch.rand(8, 8), 2), RuntimeError, "4-D tensor"),
        (lambda: ops.degrade(torch.rand(1, 3, 8, 8), 2, (0, 8)), RuntimeError, "size must be positive"),
        (lambda: ops.degrade(torch.zeros(1, 1, 8, 8, dtype=torch.bool), 2), RuntimeError, "dtype bool"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# CUDA: the same checks on the device (run by scripts/gpu_check.sh on a GPU machine).

@pytest.mark.cuda
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), h=sides, w=sides, low=st.tuples(sides, sides), out=st.tuples(sides, sides),
       antialias=st.booleans(), layout=layouts,
       dtype=st.sampled_from([torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_cuda_matches_cpu_reference(n, c, h, w, low, out, antialias, layout, dtype):
    x = make_batch(n, c, h, w, dtype, layout, "cuda")
    # The float64 CPU reference, rounded to the result dtype: half-precision interpolate is not the oracle.
    ref_in = x.cpu().double()
    res_dtype = torch.float32 if dtype == torch.uint8 else dtype
    for ours, ref in (
        (ops.resize(x, out, antialias=antialias), reference.resize(ref_in, out, antialias=antialias)),
        (ops.degrade(x, low, out, antialias=antialias), reference.degrade(ref_in, low, out, antialias=antialias)),
    ):
        assert ours.device.type == "cuda" and ours.dtype == res_dtype
        # TOL[uint8] is already on the 0-255 scale; the float tolerances are relative to the values' size
        magnitude = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        atol = TOL[dtype] if dtype == torch.uint8 else TOL[dtype] * magnitude
        torch.testing.assert_close(ours.cpu().double(), ref, atol=atol, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("op,args", list(opcheck_samples("cuda") if torch.cuda.is_available() else []))
def test_cuda_opcheck(op, args):
    opcheck(op, args)


@pytest.mark.cuda
def test_cuda_gradcheck_and_large_plane_fallback():
    x = make_batch(2, 2, 9, 7, torch.float64, "contiguous", "cuda").requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.degrade(t, (3, 2), (10, 6)), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.resize(t, (4, 11), antialias=False), (x,))
    # A plane whose intermediate rows exceed shared memory takes the two-pass path.
    big = make_batch(1, 1, 1024, 1024, torch.float32, "contiguous", "cuda")
    torch.testing.assert_close(ops.degrade(big, 512), reference.degrade(big, 512), atol=1e-5, rtol=0)
    # There too 16-bit batches are computed in float32 and rounded once.
    assert torch.equal(ops.degrade(big.half(), 512), ops.degrade(big.half().float(), 512).half())
