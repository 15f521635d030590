"""The two routes to each differentiable op give the same results.

pydcr's Python API calls its ops through an autograd.Function in eager mode and straight to the
kernels when no gradient is needed; torch.ops.pydcr callers, torch.compile and torch.export go
through the gradient registered with torch.library. Both are made from the same setup_context and
backward functions, so values, gradients and second derivatives must agree bitwise.
"""

from __future__ import annotations

import pytest
import torch

from pydcr import ops


def _float(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _cases():
    """(name, public call, registered op, its arguments (tensors to differentiate first))."""
    x = _float(2, 3, 9, 7)
    w, b = torch.tensor([0.25, -0.5, 1.5], dtype=torch.float64), _float(3, seed=1)
    features, centers = _float(5, 4, seed=2), _float(3, 4, seed=3)
    labels = torch.tensor([0, 2, 2, 1, 0])
    pydcr = torch.ops.pydcr
    return [
        ("resize", lambda x: ops.resize(x, (5, 4)), lambda x: pydcr.resize.default(x, [5, 4], True), (x,)),
        ("degrade", lambda x: ops.degrade(x, 4), lambda x: pydcr.degrade.default(x, [4, 4], [9, 7], True), (x,)),
        ("prelu", ops.prelu, pydcr.prelu.default, (x, w, b, _float(*x.shape, seed=4))),
        ("prelu_pool", ops.prelu_pool, pydcr.prelu_pool.default, (x, w, b)),
        ("center_loss", lambda f, c: ops.center_loss(f, labels, c),
         lambda f, c: pydcr.center_loss.default(f, labels, c), (features, centers)),
    ]


CASES = _cases()


def _values_and_derivatives(fn, args):
    """fn's value, its gradients for an output gradient, and the derivatives of those gradients'
    weighted sum with respect to the inputs and the output gradient (the double backward)."""
    args = [a.detach().clone().requires_grad_() for a in args]
    y = fn(*args)
    grad_out = _float(*y.shape, seed=9).requires_grad_()
    grads = torch.autograd.grad(y, args, grad_out, create_graph=True)
    total = sum((g * _float(*g.shape, seed=10 + i)).sum() for i, g in enumerate(grads))
    second = torch.autograd.grad(total, [*args, grad_out], allow_unused=True)
    return y.detach(), [g.detach() for g in grads], second


@pytest.mark.parametrize("name,public,registered,args", CASES, ids=[c[0] for c in CASES])
def test_public_and_registered_routes_agree(name, public, registered, args):
    y, grads, second = _values_and_derivatives(public, args)
    y_reg, grads_reg, second_reg = _values_and_derivatives(registered, args)
    assert torch.equal(y, y_reg)
    for ours, theirs in zip(grads, grads_reg, strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(second, second_reg, strict=True):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name,public,registered,args", CASES, ids=[c[0] for c in CASES])
def test_without_gradients_nothing_is_recorded(name, public, registered, args):
    args = [a.detach().clone().requires_grad_() for a in args]
    with torch.no_grad():
        y = public(*args)
    assert y.grad_fn is None and not y.requires_grad
    y_plain = public(*[a.detach() for a in args])
    assert y_plain.grad_fn is None
    assert torch.equal(y, y_plain)


@pytest.mark.parametrize("name,public,registered,args", CASES, ids=[c[0] for c in CASES])
def test_eager_route_records_the_graph(name, public, registered, args):
    args = [a.detach().clone().requires_grad_() for a in args]
    y = public(*args)
    assert y.requires_grad and type(y.grad_fn).__name__ == f"{name}_functionBackward"


# torch's forward AD loads its decompositions through torch.jit.script, which warns of its own deprecation
# (a FutureWarning in torch 2.14, a DeprecationWarning in 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name,public,registered,args", CASES, ids=[c[0] for c in CASES])
def test_forward_mode_ad_is_refused_not_dropped(name, public, registered, args):
    """The ops have no forward-mode derivative: a dual input raises instead of losing its tangent."""
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(args[0], torch.ones_like(args[0]))
        with pytest.raises(NotImplementedError, match=f"pydcr.{name}: forward-mode AD is not supported"):
            public(dual, *args[1:])
        y = public(*args)  # plain tensors inside a dual level are fine
    assert torch.equal(y, public(*args))
