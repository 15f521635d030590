"""pydcr.nn layers against their eager twins in pydcr.reference, sharing the weights."""

import copy

import pytest
import torch

from pydcr import nn, reference

CASES = [
    (lambda: nn.ConvPReLU(3, 8, 0), lambda: reference.ConvPReLU(3, 8, 0), 3),
    (lambda: nn.ConvPReLU(4, 6, 1, bias=False), lambda: reference.ConvPReLU(4, 6, 1, bias=False), 4),
    (lambda: nn.ResidualUnit(5), lambda: reference.ResidualUnit(5), 5),
]


def twins(make_ours, make_eager, dtype, device="cpu", seed=0):
    """Our layer with its eager twin's weights (slopes made varied, some negative)."""
    torch.manual_seed(seed)
    eager = make_eager().to(dtype=dtype, device=device)
    with torch.no_grad():
        for name, p in eager.named_parameters():
            if "prelu" in name:
                p.copy_(torch.linspace(-0.5, 0.75, p.numel(), dtype=dtype))
    ours = make_ours().to(dtype=dtype, device=device)
    ours.load_state_dict(eager.state_dict())
    return ours, eager


def run(module, x, grad):
    """Output and gradients of the input and every parameter, in named_parameters order."""
    x = x.detach().clone().requires_grad_()
    y = module(x)
    params = [p for _, p in sorted(module.named_parameters())]
    grads = torch.autograd.grad(y, [x, *params], grad)
    return y, grads


def assert_twins_agree(ours, eager, x, tol):
    grad = torch.randn_like(eager(x))
    y, grads = run(ours, x, grad)
    y_ref, grads_ref = run(eager, x, grad)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    assert y.is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_parameters_match_the_eager_twin(case):
    make_ours, make_eager, _ = CASES[case]
    ours, eager = make_ours(), make_eager()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in eager.state_dict().items()}
    eager.load_state_dict(ours.state_dict())  # and back
    assert all(torch.all(p == 0.25) for name, p in ours.named_parameters() if "prelu" in name)


# Eager rounds x + bias to 16 bits before the PReLU; the fused pass rounds once, after it.
TWIN_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", list(TWIN_TOL))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_eager_twin(case, dtype, layout):
    make_ours, make_eager, channels = CASES[case]
    ours, eager = twins(make_ours, make_eager, dtype)
    x = torch.randn(2, channels, 9, 7, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        ours, eager = ours.to(memory_format=torch.channels_last), eager.to(memory_format=torch.channels_last)
    assert_twins_agree(ours, eager, x, TWIN_TOL[dtype])


def autocast_twins(device):
    """A ConvPReLU then a ResidualUnit, ours and eager with the same float32 weights."""
    unit, unit_eager = twins(lambda: nn.ResidualUnit(8), lambda: reference.ResidualUnit(8), torch.float32, device)
    first, first_eager = twins(lambda: nn.ConvPReLU(3, 8), lambda: reference.ConvPReLU(3, 8), torch.float32, device)
    return (torch.nn.Sequential(first, unit), torch.nn.Sequential(first_eager, unit_eager)), (unit, unit_eager)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_autocast_is_as_accurate_as_the_eager_twin(layout):
    # Under CPU autocast the convolutions return bfloat16 and the fused ops take it as it comes.
    # bfloat16 gradients are a few percent off, eager's as much as ours (a per-channel sum over
    # differently rounded terms can be 5% off either way): each is held to the float64 result,
    # ours within twice eager's error plus 5%. A wrong gradient is off by tens of percent.
    (ours, eager), _ = autocast_twins("cpu")
    exact = copy.deepcopy(eager).double()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    ours, eager = ours.to(memory_format=fmt), eager.to(memory_format=fmt)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 10).contiguous(memory_format=fmt)
    grad = torch.randn(2, 8, 12, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, grads = run(ours, x, grad)
        y_eager, grads_eager = run(eager, x, grad)
    y_exact, grads_exact = run(exact, x.double(), grad.double())
    assert y.dtype == y_eager.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=fmt)
    for a, b, c in zip((y, *grads), (y_eager, *grads_eager), (y_exact, *grads_exact)):
        assert a.dtype == b.dtype
        error, eager_error = ((t.double() - c).norm().item() / c.norm().item() for t in (a, b))
        assert error <= 2 * eager_error + 0.05, (tuple(c.shape), error, eager_error)


def test_residual_takes_the_layout_of_its_input_when_the_convolutions_change_it():
    # A convolution returns channels_last when its weight is, whatever its input's layout: with
    # channels_last weights and an NCHW x, the branch comes back in another layout than x.
    ours, eager = twins(*CASES[2][:2], torch.float64)
    ours, eager = ours.to(memory_format=torch.channels_last), eager.to(memory_format=torch.channels_last)
    x = torch.randn(2, 5, 9, 7, dtype=torch.float64)
    assert ours.conv1(x).stride() != x.stride()
    assert_twins_agree(ours, eager, x, 1e-10)
    assert ours(x).is_contiguous()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiled_stack_matches_eager_twin(backend, layout):
    ours = torch.nn.Sequential(nn.ConvPReLU(3, 8, 0), nn.ResidualUnit(8), nn.ResidualUnit(8))
    eager = torch.nn.Sequential(reference.ConvPReLU(3, 8, 0), reference.ResidualUnit(8), reference.ResidualUnit(8))
    ours.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 12, 10)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        ours, eager = ours.to(memory_format=torch.channels_last), eager.to(memory_format=torch.channels_last)
    compiled = torch.compile(ours, fullgraph=True, backend=backend)
    assert_twins_agree(compiled, eager, x, 1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cuda_matches_eager_twin(case, dtype, layout):
    make_ours, make_eager, channels = CASES[case]
    ours, eager = twins(make_ours, make_eager, dtype, "cuda")
    x = torch.randn(2, channels, 9, 7, dtype=dtype, device="cuda")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        ours, eager = ours.to(memory_format=torch.channels_last), eager.to(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(deterministic=True, allow_tf32=False):
        assert_twins_agree(ours, eager, x, 1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.cuda
def test_cuda_compiled_residual_unit():
    ours, eager = twins(lambda: nn.ResidualUnit(16), lambda: reference.ResidualUnit(16), torch.float32, "cuda")
    x = torch.randn(4, 16, 12, 10, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(allow_tf32=False):
        assert_twins_agree(torch.compile(ours, fullgraph=True, backend="aot_eager"), eager, x, 1e-4)


@pytest.mark.cuda
def test_cuda_autocast_matches_eager_twin():
    (ours, eager), (unit, unit_eager) = autocast_twins("cuda")
    x = torch.randn(2, 3, 12, 10, device="cuda")
    x8 = torch.randn(2, 8, 12, 10, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        for model, twin, inp in ((ours, eager, x), (unit, unit_eager, x8)):
            y, y_ref = model(inp), twin(inp)
            assert y.dtype == y_ref.dtype
            torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)
