"""center_loss, center_stats, center_apply_ and center_update_ against their references and a plain loop."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

from pydcr import ops, reference

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def update_by_loop(centers, features, labels, alpha):
    """The oracle: the rule written class by class, in float64."""
    c, x = centers.double().clone(), features.double()
    for j in labels.long().unique().tolist():
        rows = x[labels.long() == j]
        c[j] = c[j] - alpha * (c[j] - rows).sum(0) / (1 + rows.shape[0])
    return c


def make_batch(b, c, d, dtype, *, labels=None, seed=0, label_dtype=torch.int64, layout="contiguous", device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64).to(dtype)
    if labels is None:
        labels = torch.randint(0, c, (b,), generator=g)
    labels = torch.as_tensor(labels).to(label_dtype)
    if layout == "strided":  # rows with gaps, as slices of wider tensors give
        features = torch.cat([features, features], 1)[:, :d]
        centers = torch.cat([centers, centers], 1)[:, :d]
    elif layout == "transposed":  # columns not contiguous: the kernels read a copy
        features = features.t().contiguous().t()
        centers = centers.t().contiguous().t()
    return features.to(device), labels.to(device), centers.to(device)


def assert_update_matches_loop(features, labels, centers, alpha):
    before = centers.clone()
    ops.center_update_(centers, features, labels, alpha)
    expected = update_by_loop(before, features, labels, alpha)
    torch.testing.assert_close(centers.double(), expected, atol=TOL[centers.dtype], rtol=TOL[centers.dtype])
    absent = torch.ones(centers.shape[0], dtype=torch.bool)
    absent[labels.long()] = False
    assert torch.equal(centers[absent], before[absent])  # untouched, bit for bit


# ---- center_update_ ----------------------------------------------------------------------------

@settings(max_examples=120, deadline=None)
@given(b=st.integers(1, 70), c=st.integers(1, 30), d=st.integers(1, 300), alpha=st.floats(0.0, 1.0),
       dtype=st.sampled_from([torch.float32, torch.float64]), label_dtype=st.sampled_from([torch.int64, torch.int32]),
       layout=st.sampled_from(["contiguous", "strided", "transposed"]), seed=st.integers(0, 2**16))
def test_update_matches_loop(b, c, d, alpha, dtype, label_dtype, layout, seed):
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed, label_dtype=label_dtype, layout=layout)
    assert_update_matches_loop(features, labels, centers, alpha)


@pytest.mark.parametrize("labels", [
    [3, 3, 3, 3, 3, 3, 3],                 # a single label
    [0, 1, 2, 3, 4, 5, 6],                 # all distinct
    [6, 5, 4, 3, 2, 1, 0],                 # all distinct, descending
    [2, 0, 2, 5, 0, 2, 9],                 # repeats, first and last class
    [9],                                   # one row
], ids=["single", "distinct", "descending", "repeated", "one-row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_label_patterns(labels, dtype):
    features, labels, centers = make_batch(len(labels), 10, 300, dtype, labels=labels)
    assert_update_matches_loop(features, labels, centers, 0.5)


def test_update_large_batch_of_one_class():
    features, labels, centers = make_batch(1000, 4, 40, torch.float64, labels=[2] * 1000)
    assert_update_matches_loop(features, labels, centers, 0.3)


def test_update_empty_batch_is_a_no_op():
    features, labels, centers = make_batch(0, 5, 8, torch.float32)
    before = centers.clone()
    assert ops.center_update_(centers, features, labels, 0.5) is centers
    assert torch.equal(centers, before)
    classes, sums, counts = ops.center_stats(features, labels, centers)
    assert classes.shape == (0,) and sums.shape == (0, 8) and counts.shape == (0,)
    ops.center_apply_(centers, classes, sums, counts, 0.5)
    assert torch.equal(centers, before)


def test_update_zero_alpha_keeps_centers():
    features, labels, centers = make_batch(20, 5, 8, torch.float32)
    before = centers.clone()
    ops.center_update_(centers, features, labels, 0.0)
    assert torch.equal(centers, before)


def test_update_is_bitwise_deterministic_across_runs_and_threads():
    features, labels, centers = make_batch(777, 50, 515, torch.float32, seed=3)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads, max(2, threads)):
            torch.set_num_threads(n)
            for _ in range(3):
                results.append(ops.center_update_(centers.clone(), features, labels, 0.5))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 60), c=st.integers(1, 20), d=st.integers(0, 260), alpha=st.floats(0.0, 1.0),
       dtype=st.sampled_from([torch.float32, torch.float64]), label_dtype=st.sampled_from([torch.int64, torch.int32]),
       layout=st.sampled_from(["contiguous", "strided"]), seed=st.integers(0, 2**16))
def test_update_equals_stats_then_apply_bitwise(b, c, d, alpha, dtype, label_dtype, layout, seed):
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed, label_dtype=label_dtype, layout=layout)
    fused = ops.center_update_(centers.clone(), features, labels, alpha)
    two_step = ops.center_apply_(centers.clone(), *ops.center_stats(features, labels, centers), alpha)
    assert torch.equal(fused, two_step)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 60), c=st.integers(1, 20), d=st.integers(0, 40), dtype=st.sampled_from([torch.float32, torch.float64]),
       label_dtype=st.sampled_from([torch.int64, torch.int32]), seed=st.integers(0, 2**16))
def test_stats_match_reference(b, c, d, dtype, label_dtype, seed):
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed, label_dtype=label_dtype)
    classes, sums, counts = ops.center_stats(features, labels, centers)
    ref_classes, ref_sums, ref_counts = reference.center_stats(features, labels, centers)
    assert classes.dtype == counts.dtype == torch.int64 and sums.dtype == dtype
    assert torch.equal(classes, ref_classes) and torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, atol=TOL[dtype] * 10, rtol=TOL[dtype])


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 60), c=st.integers(1, 20), d=st.integers(1, 40), alpha=st.floats(0.0, 1.0),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_references_match_loop(b, c, d, alpha, dtype, seed):
    """The pure-torch twins (the benchmark's baselines) compute the same rule."""
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed)
    expected = update_by_loop(centers, features, labels, alpha)
    tol = TOL[dtype] * 10
    got = reference.center_update_(centers.clone(), features, labels, alpha)
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)
    got = reference.center_apply_(centers.clone(), *reference.center_stats(features, labels, centers), alpha)
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)


def test_stats_of_split_batches_add_up():
    """Stats of two halves, summed on the union of their classes, update like the whole batch."""
    features, labels, centers = make_batch(40, 12, 16, torch.float64, seed=5)
    parts = [ops.center_stats(features[s], labels[s], centers) for s in (slice(0, 17), slice(17, None))]
    union = torch.unique(torch.cat([p[0] for p in parts]))
    sums = torch.zeros(union.numel(), 16, dtype=torch.float64)
    counts = torch.zeros(union.numel(), dtype=torch.int64)
    for classes, s, n in parts:
        rows = torch.searchsorted(union, classes)
        sums[rows] += s
        counts[rows] += n
    merged = ops.center_apply_(centers.clone(), union, sums, counts, 0.5)
    torch.testing.assert_close(merged, ops.center_update_(centers.clone(), features, labels, 0.5), atol=1e-12, rtol=0)


# ---- center_loss ---------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(b=st.integers(0, 50), c=st.integers(1, 20), d=st.integers(1, 300), dtype=st.sampled_from([torch.float32, torch.float64]),
       label_dtype=st.sampled_from([torch.int64, torch.int32]), layout=st.sampled_from(["contiguous", "strided", "transposed"]),
       seed=st.integers(0, 2**16))
def test_loss_and_gradients_match_reference(b, c, d, dtype, label_dtype, layout, seed):
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed, label_dtype=label_dtype, layout=layout)
    x1, c1 = features.clone().requires_grad_(), centers.clone().requires_grad_()
    x2, c2 = features.clone().requires_grad_(), centers.clone().requires_grad_()
    ours, ref = ops.center_loss(x1, labels, c1), reference.center_loss(x2, labels, c2)
    assert ours.shape == () and ours.dtype == dtype
    tol = TOL[dtype] * 10
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    g = torch.tensor(1.7, dtype=dtype)
    gx1, gc1 = torch.autograd.grad(ours, (x1, c1), g)
    gx2, gc2 = torch.autograd.grad(ref, (x2, c2), g)
    torch.testing.assert_close(gx1, gx2, atol=tol, rtol=tol)
    torch.testing.assert_close(gc1, gc2, atol=tol, rtol=tol)


def test_loss_gradient_to_features_only():
    features, labels, centers = make_batch(9, 4, 6, torch.float64, labels=[0, 1, 1, 3, 3, 3, 0, 1, 3])
    x = features.clone().requires_grad_()
    (gx,) = torch.autograd.grad(ops.center_loss(x, labels, centers), x)
    torch.testing.assert_close(gx, (features - centers[labels]) / 9, atol=1e-14, rtol=0)
    gx, gc = torch.ops.pydcr.center_loss_backward(torch.tensor(1.0, dtype=torch.float64), features, labels, centers, False)
    assert gc.numel() == 0


def test_empty_batch_loss_is_zero():
    features, labels, centers = make_batch(0, 5, 8, torch.float32)
    x = features.clone().requires_grad_()
    c = centers.clone().requires_grad_()
    loss = ops.center_loss(x, labels, c)
    assert loss.item() == 0.0
    gx, gc = torch.autograd.grad(loss, (x, c))
    assert gx.shape == (0, 8) and torch.equal(gc, torch.zeros_like(c))


def test_gradcheck():
    features, labels, centers = make_batch(7, 4, 5, torch.float64, labels=[0, 2, 2, 3, 0, 2, 1])
    x, c = features.requires_grad_(), centers.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.center_loss(a, labels, b), (x, c))
    assert torch.autograd.gradgradcheck(lambda a, b: ops.center_loss(a, labels, b), (x, c))
    assert torch.autograd.gradcheck(lambda a: ops.center_loss(a, labels, c.detach()), (x,))
    assert torch.autograd.gradgradcheck(lambda a: ops.center_loss(a, labels, c.detach()), (x,))
    g = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    backward = torch.ops.pydcr.center_loss_backward
    assert torch.autograd.gradcheck(lambda gg, a, b: backward(gg, a, labels, b, True), (g, x, c))


def test_compile():
    features, labels, centers = make_batch(12, 5, 8, torch.float32)
    f = torch.compile(lambda x, c: ops.center_loss(x, labels, c) * 2, fullgraph=True, backend="eager")
    x, c = features.clone().requires_grad_(), centers.clone().requires_grad_()
    torch.testing.assert_close(f(x, c), reference.center_loss(features, labels, centers) * 2)


def test_compiled_update_equals_eager():
    features, labels, centers = make_batch(12, 5, 8, torch.float32)
    f = torch.compile(lambda c, x: ops.center_update_(c, x, labels, 0.5), fullgraph=True, backend="eager")
    compiled, eager = centers.clone(), centers.clone()
    f(compiled, features)
    ops.center_update_(eager, features, labels, 0.5)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_inputs_that_share_the_centers_memory_are_refused():
    """The kernels would read centers they have already moved: refused, as built-in ops refuse
    partial overlap; disjoint views of one buffer are fine and equal the reference."""
    buffer = torch.randn(8, 3, dtype=torch.float64)
    labels = torch.tensor([1, 0])
    with pytest.raises(RuntimeError, match="features shares memory with centers, which the op writes"):
        ops.center_update_(buffer[:4], buffer[2:4], labels, 0.5)
    sums, counts = torch.zeros(2, 3, dtype=torch.float64), torch.tensor([1, 1])
    with pytest.raises(RuntimeError, match="sums shares memory with centers"):
        ops.center_apply_(buffer[:2], torch.tensor([0, 1]), buffer[:2], counts, 0.5)
    ops.center_apply_(buffer[:2], torch.tensor([0, 1]), sums, counts, 0.5)
    want = reference.center_update_(buffer[:4].clone(), buffer[4:6].clone(), labels, 0.5)
    torch.testing.assert_close(ops.center_update_(buffer[:4], buffer[4:6], labels, 0.5), want, rtol=0, atol=0)
    # A graph refuses it too, in the fake kernel (its fake tensors keep the aliasing).
    torch._dynamo.reset()
    compiled = torch.compile(lambda c: ops.center_update_(c, c[:2], labels, 0.5), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="features shares memory with centers"):
        compiled(torch.randn(4, 3))
    # The distributed update's two steps in one graph: the stats' sums (of data-dependent size) are
    # checked without a guard on that size.
    torch._dynamo.reset()
    features = torch.randn(6, 3, dtype=torch.float64)
    labels6 = torch.tensor([0, 2, 2, 1, 0, 3])

    def two_steps(c, x):
        return ops.center_apply_(c, *ops.center_stats(x, labels6, c), 0.5)

    compiled = torch.compile(two_steps, fullgraph=True, backend="eager")
    centers = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(compiled(centers.clone(), features), two_steps(centers.clone(), features), rtol=0, atol=0)


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("update", ["center_update_", "center_apply_"])
def test_centers_that_require_grad_are_refused(update, view):
    """As built-in in-place ops refuse: outside no_grad, moving a tracked leaf, or a view of one,
    is an error."""
    features, labels, centers = make_batch(12, 5, 8, torch.float32)
    stats = ops.center_stats(features, labels, centers)
    leaf = torch.cat([centers, centers]).requires_grad_() if view else centers.clone().requires_grad_()
    c = leaf[: len(centers)]
    move = (lambda: ops.center_update_(c, features, labels, 0.5)) if update == "center_update_" else (
        lambda: ops.center_apply_(c, *stats, 0.5))
    with pytest.raises(RuntimeError, match="centers requires grad"):
        move()
    assert torch.equal(c.detach(), centers)
    with torch.no_grad():
        move()
    assert not torch.equal(c.detach(), centers)


@pytest.mark.parametrize("update", ["center_update_", "center_apply_"])
def test_centers_whose_elements_share_memory_are_refused(update):
    """An expand()ed tensor would take every class's move in its one row: refused, as built-in
    in-place ops refuse to write through such views."""
    features, labels = torch.ones(3, 4), torch.tensor([0, 1, 2])
    centers = torch.zeros(1, 4).expand(3, 4)
    with pytest.raises(RuntimeError, match="elements of centers share memory"):
        if update == "center_update_":
            ops.center_update_(centers, features, labels, 0.5)
        else:
            ops.center_apply_(centers, labels, features, torch.ones(3, dtype=torch.long), 0.5)
    assert torch.equal(centers, torch.zeros(3, 4))
    transposed = torch.zeros(4, 3).t()  # strided but with no shared element: fine
    ops.center_update_(transposed, features, labels, 0.5)
    torch.testing.assert_close(transposed, reference.center_update_(torch.zeros(3, 4), features, labels, 0.5))


@pytest.mark.parametrize("update", ["center_update_", "center_apply_"])
def test_in_place_updates_bump_the_version(update):
    """As a built-in in-place op: a backward that saved the centers before they moved must raise,
    not silently use the new centers."""
    features, labels, centers = make_batch(12, 5, 8, torch.float32)
    x = features.clone().requires_grad_()
    loss = ops.center_loss(x, labels, centers)
    if update == "center_update_":
        ops.center_update_(centers, features, labels, 0.5)
    else:
        ops.center_apply_(centers, *ops.center_stats(features, labels, centers), 0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with torch.inference_mode():  # inference tensors have no version counter to bump
        c = centers.clone()
        ops.center_update_(c, features, labels, 0.5)


# ---- opcheck -------------------------------------------------------------------------------------

def opcheck_samples(device="cpu", dtypes=(torch.float32, torch.float64)):
    for dtype in dtypes:
        for label_dtype in (torch.int64, torch.int32):
            features, labels, centers = make_batch(11, 6, 9, dtype, labels=[1, 4, 1, 0, 5, 1, 4, 4, 2, 0, 1],
                                                   label_dtype=label_dtype, device=device)
            grad = torch.tensor(0.5, dtype=dtype, device=device)
            yield "center_loss", (features, labels, centers)
            yield "center_loss_backward", (grad, features, labels, centers, True)
            yield "center_loss_backward", (grad, features, labels, centers, False)
            yield "center_stats", (features, labels, centers)
            yield "center_update_", (centers.clone(), features, labels, 0.5)
            classes, sums, counts = ops.center_stats(features, labels, centers)
            yield "center_apply_", (centers.clone(), classes, sums, counts, 0.5)
    empty, no_labels, centers = make_batch(0, 6, 9, torch.float32, device=device)
    yield "center_loss", (empty, no_labels, centers)
    yield "center_update_", (centers.clone(), empty, no_labels, 0.5)


def run_opcheck(name, args):
    opcheck(getattr(torch.ops.pydcr, name).default, args)  # every default test


@pytest.mark.parametrize("name,args", list(opcheck_samples()))
def test_opcheck(name, args):
    run_opcheck(name, args)


def test_opcheck_with_gradients():
    features, labels, centers = make_batch(8, 4, 5, torch.float64, labels=[0, 1, 1, 3, 3, 3, 0, 1])
    x, c = features.requires_grad_(), centers.requires_grad_()
    opcheck(torch.ops.pydcr.center_loss.default, (x, labels, c))
    opcheck(torch.ops.pydcr.center_loss.default, (x, labels, centers.detach()))
    g = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    opcheck(torch.ops.pydcr.center_loss_backward.default, (g, x, labels, c, True))


# ---- errors --------------------------------------------------------------------------------------

def _batch(b=4, c=5, d=3, dtype=torch.float32):
    return torch.zeros(b, d, dtype=dtype), torch.zeros(b, dtype=torch.int64), torch.zeros(c, d, dtype=dtype)


X, Y, C = _batch()


def _stats():
    return ops.center_stats(X, Y, C)


BAD_ARGUMENTS = [
    (lambda: ops.center_update_(C.clone(), X, torch.tensor([0, 1, 5, 2]), 0.5), r"labels must lie in \[0, C\) = \[0, 5\).*got 5 at index 2"),
    (lambda: ops.center_update_(C.clone(), X, torch.tensor([0, -1, 4, 2]), 0.5), r"labels must lie in \[0, C\).*got -1 at index 1"),
    (lambda: ops.center_loss(X, torch.tensor([0, 1, 7, 2]), C), r"center_loss: labels must lie in \[0, C\).*got 7"),
    (lambda: ops.center_stats(X, torch.tensor([9, 1, 0, 2], dtype=torch.int32), C), r"center_stats: labels must lie in \[0, C\).*got 9 at index 0"),
    (lambda: torch.ops.pydcr.center_loss_backward(torch.tensor(1.0), X, torch.tensor([0, 1, 2, 5]), C, True), r"labels must lie in \[0, C\).*got 5"),
    (lambda: ops.center_update_(C.clone(), X, Y.float(), 0.5), r"labels has dtype float32; expected one of int64, int32"),
    (lambda: ops.center_update_(C.clone(), X, Y[:3], 0.5), r"labels must be a 1-D tensor of B = 4 class indices, got shape \[3\]"),
    (lambda: ops.center_update_(C.clone(), X, Y[:, None], 0.5), r"labels must be a 1-D tensor of B = 4"),
    (lambda: ops.center_update_(C.clone(), X[0], Y, 0.5), r"features must be a 2-D tensor B x D, got shape \[3\]"),
    (lambda: ops.center_update_(C[0].clone(), X, Y, 0.5), r"centers must be a 2-D tensor C x D, got shape \[3\]"),
    (lambda: ops.center_update_(torch.zeros(5, 4), X, Y, 0.5), r"features has width D = 3 but centers has shape \[5, 4\]; expected C x 3"),
    (lambda: ops.center_update_(C.double(), X, Y, 0.5), r"features has dtype float32 but centers has dtype float64"),
    (lambda: ops.center_loss(X.half(), Y, C.half()), r"centers has dtype float16; expected one of float32, float64 on CPU"),
    (lambda: ops.center_loss(X.int(), Y, C.int()), r"centers has dtype int32"),
    (lambda: torch.ops.pydcr.center_loss_backward(torch.ones(2), X, Y, C, False), r"grad must hold the one gradient of the scalar loss, got shape \[2\]"),
    (lambda: torch.ops.pydcr.center_loss_backward(torch.tensor(1.0, dtype=torch.float64), X, Y, C, False), r"grad has dtype float64 but features has dtype float32"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([2, 1]), torch.zeros(2, 3), torch.ones(2, dtype=torch.int64), 0.5), r"classes must be strictly increasing.*got 1 after 2 at index 1"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 1]), torch.zeros(2, 3), torch.ones(2, dtype=torch.int64), 0.5), r"classes must be strictly increasing.*got 1 after 1"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 5]), torch.zeros(2, 3), torch.ones(2, dtype=torch.int64), 0.5), r"classes must lie in \[0, C\) = \[0, 5\).*got 5 at index 1"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 3]), torch.zeros(2, 3), torch.tensor([1, -2]), 0.5), r"counts must be >= 0, got -2 at index 1"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 3]), torch.zeros(3, 3), torch.ones(2, dtype=torch.int64), 0.5), r"sums must be K x D = 2 x 3.*got shape \[3, 3\]"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 3]), torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.int64), 0.5), r"sums has dtype float64; expected float32"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 3]), torch.zeros(2, 3), torch.ones(2, dtype=torch.int32), 0.5), r"counts has dtype int32; expected one of int64"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1.0, 3.0]), torch.zeros(2, 3), torch.ones(2, dtype=torch.int64), 0.5), r"classes has dtype float32"),
    (lambda: ops.center_apply_(C.clone(), torch.tensor([1, 3]), torch.zeros(2, 3), torch.ones(3, dtype=torch.int64), 0.5), r"counts must be a 1-D tensor of K = 2 counts, got shape \[3\]"),
]


@pytest.mark.parametrize("call,match", BAD_ARGUMENTS)
def test_bad_arguments(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_label_leaves_centers_untouched():
    centers = C.clone() + 1
    with pytest.raises(RuntimeError, match="labels must lie"):
        ops.center_update_(centers, X + 3, torch.tensor([0, 1, 2, 9]), 0.5)
    assert torch.equal(centers, C + 1)


@pytest.mark.parametrize("call", [lambda: ops.center_loss([[1.0]], Y, C), lambda: ops.center_update_(C, X, [0, 1, 2, 3], 0.5)])
def test_non_tensor_arguments(call):
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        call()


# ---- CUDA: the same checks on the device (run by scripts/gpu_check.sh on a GPU machine) ------------

CUDA_TOL = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-4, torch.float64: 1e-10}


@pytest.mark.cuda
@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 1100), c=st.integers(1, 40), d=st.integers(1, 300), alpha=st.floats(0.0, 1.0),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       label_dtype=st.sampled_from([torch.int64, torch.int32]), layout=st.sampled_from(["contiguous", "strided", "transposed"]),
       seed=st.integers(0, 2**16))
def test_cuda_update_matches_loop_and_cpu(b, c, d, alpha, dtype, label_dtype, layout, seed):
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed, label_dtype=label_dtype, layout=layout, device="cuda")
    expected = update_by_loop(centers.cpu(), features.cpu(), labels.cpu(), alpha)
    got = ops.center_update_(centers.clone(), features, labels, alpha)
    assert got.device.type == "cuda" and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), expected, atol=CUDA_TOL[dtype], rtol=CUDA_TOL[dtype])
    if dtype in (torch.float32, torch.float64):  # CPU and CUDA agree up to rounding
        cpu = ops.center_update_(centers.cpu().clone(), features.cpu(), labels.cpu(), alpha)
        torch.testing.assert_close(got.cpu(), cpu, atol=CUDA_TOL[dtype], rtol=CUDA_TOL[dtype])
    two_step = ops.center_apply_(centers.clone(), *ops.center_stats(features, labels, centers), alpha)
    assert torch.equal(got, two_step)
    assert all(torch.equal(ops.center_update_(centers.clone(), features, labels, alpha), got) for _ in range(3))


@pytest.mark.cuda
@pytest.mark.parametrize("b", [1, 1024, 1025, 5000])  # one block groups up to 1024 labels; torch's sort beyond
def test_cuda_small_and_large_batches(b):
    features, labels, centers = make_batch(b, 37, 130, torch.float32, seed=b, device="cuda")
    labels[: b // 3] = 5  # one large class
    expected = update_by_loop(centers.cpu(), features.cpu(), labels.cpu(), 0.5)
    got = ops.center_update_(centers.clone(), features, labels, 0.5)
    torch.testing.assert_close(got.cpu().double(), expected, atol=1e-4, rtol=1e-4)
    stats = ops.center_stats(features, labels, centers)
    for ours, ref in zip(stats, reference.center_stats(features.cpu(), labels.cpu(), centers.cpu())):
        torch.testing.assert_close(ours.cpu(), ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(ops.center_apply_(centers.clone(), *stats, 0.5), got)
    with pytest.raises(RuntimeError, match=rf"labels must lie in \[0, C\).*got 37 at index {b - 1}"):
        ops.center_update_(centers, features, torch.cat([labels[:-1], labels.new_tensor([37])]), 0.5)


@pytest.mark.cuda
@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 600), c=st.integers(1, 40), d=st.integers(1, 300),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       label_dtype=st.sampled_from([torch.int64, torch.int32]), seed=st.integers(0, 2**16))
def test_cuda_loss_and_stats_match_reference(b, c, d, dtype, label_dtype, seed):
    features, labels, centers = make_batch(b, c, d, dtype, seed=seed, label_dtype=label_dtype, device="cuda")
    tol = CUDA_TOL[dtype]
    x, cc = features.clone().requires_grad_(), centers.clone().requires_grad_()
    loss = ops.center_loss(x, labels, cc)
    xr, cr = features.cpu().double().requires_grad_(), centers.cpu().double().requires_grad_()
    ref = reference.center_loss(xr, labels.cpu(), cr)
    torch.testing.assert_close(loss.cpu().double(), ref, atol=tol * max(1.0, ref.item()), rtol=tol)
    gx, gc = torch.autograd.grad(loss, (x, cc))
    gxr, gcr = torch.autograd.grad(ref, (xr, cr))
    torch.testing.assert_close(gx.cpu().double(), gxr, atol=tol, rtol=tol)
    torch.testing.assert_close(gc.cpu().double(), gcr, atol=tol, rtol=tol)
    classes, sums, counts = ops.center_stats(features, labels, centers)
    rc, rs, rn = reference.center_stats(features.cpu().double(), labels.cpu(), centers.cpu().double())
    assert torch.equal(classes.cpu(), rc) and torch.equal(counts.cpu(), rn)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(sums.cpu().double(), rs, atol=tol * 10, rtol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("name,args", list(opcheck_samples("cuda") if torch.cuda.is_available() else []))
def test_cuda_opcheck(name, args):
    run_opcheck(name, args)


@pytest.mark.cuda
def test_cuda_gradcheck_and_errors():
    features, labels, centers = make_batch(7, 4, 5, torch.float64, labels=[0, 2, 2, 3, 0, 2, 1], device="cuda")
    x, c = features.requires_grad_(), centers.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.center_loss(a, labels, b), (x, c))
    centers = torch.zeros(5, 3, device="cuda")
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, C\) = \[0, 5\).*got 5 at index 2"):
        ops.center_update_(centers, torch.zeros(4, 3, device="cuda"), torch.tensor([0, 1, 5, 2], device="cuda"), 0.5)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, C\).*got -1 at index 1"):
        ops.center_loss(torch.zeros(4, 3, device="cuda"), torch.tensor([0, -1, 4, 2], device="cuda"), centers)
    with pytest.raises(RuntimeError, match=r"classes must be strictly increasing"):
        ops.center_apply_(centers, torch.tensor([2, 1], device="cuda"), torch.zeros(2, 3, device="cuda"),
                          torch.ones(2, dtype=torch.int64, device="cuda"), 0.5)
    with pytest.raises(RuntimeError, match=r"labels is on cpu but features is on cuda:0"):
        ops.center_update_(centers, torch.zeros(4, 3, device="cuda"), torch.tensor([0, 1, 2, 2]), 0.5)
    with pytest.raises(RuntimeError, match=r"on cpu but features is on cuda:0|centers is on cpu"):
        ops.center_loss(torch.zeros(4, 3, device="cuda"), torch.tensor([0, 1, 2, 2], device="cuda"), centers.cpu())
    assert torch.equal(centers, torch.zeros_like(centers))
