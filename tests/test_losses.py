"""CenterLoss, TrunkLoss and CMLoss: values, gradients and center updates against plain formulas."""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pydcr import ops, reference
from pydcr.losses import CenterLoss, CMLoss, TrunkLoss
from two_processes import run_two_processes


def update_by_loop(centers, features, labels, alpha):
    """The rule written class by class, in float64."""
    c, x = centers.double().clone(), features.double()
    for j in labels.unique().tolist():
        rows = x[labels == j]
        c[j] = c[j] - alpha * (c[j] - rows).sum(0) / (1 + rows.shape[0])
    return c


def batch(b=12, c=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randint(0, c, (b,), generator=g)


def with_centers(loss: CenterLoss, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        loss.centers.copy_(torch.randn(loss.centers.shape, generator=g, dtype=loss.centers.dtype))
    return loss


# ---- CenterLoss ----------------------------------------------------------------------------------

def test_paper_mode_updates_centers_on_backward():
    crit = with_centers(CenterLoss(6, 5, alpha=0.4, dtype=torch.float64))
    assert "centers" in dict(crit.named_buffers()) and not list(crit.parameters())
    features, labels = batch()
    before = crit.centers.clone()
    x = features.clone().requires_grad_()
    loss = crit(x, labels)
    torch.testing.assert_close(loss, reference.center_loss(features, labels, before))
    assert torch.equal(crit.centers, before)  # nothing moves before the backward pass
    loss.backward()
    # The gradient comes from the centers the loss saw; the update from this batch.
    torch.testing.assert_close(x.grad, (features - before[labels]) / len(labels))
    torch.testing.assert_close(crit.centers, update_by_loop(before, features, labels, 0.4))


def test_paper_mode_called_twice_before_one_backward():
    """A loss per resolution, summed: each call's gradient comes from the centers it saw, although
    the first backward to run has moved them; each call's batch then updates them in turn."""
    crit = with_centers(CenterLoss(6, 5, alpha=0.4, dtype=torch.float64))
    (fa, la), (fb, lb) = batch(seed=1), batch(seed=2)
    before = crit.centers.clone()
    a, b = fa.clone().requires_grad_(), fb.clone().requires_grad_()
    (crit(a, la) + crit(b, lb)).backward()
    torch.testing.assert_close(a.grad, (fa - before[la]) / len(la))
    torch.testing.assert_close(b.grad, (fb - before[lb]) / len(lb))
    # autograd runs the later call's backward first
    torch.testing.assert_close(crit.centers, update_by_loop(update_by_loop(before, fb, lb, 0.4), fa, la, 0.4))


def test_paper_mode_without_backward_keeps_centers():
    crit = with_centers(CenterLoss(6, 5, dtype=torch.float64))
    features, labels = batch()
    before = crit.centers.clone()
    crit(features, labels)  # features need no gradient
    with torch.no_grad():
        crit(features.clone().requires_grad_(), labels)
    crit.eval()
    crit(features.clone().requires_grad_(), labels).backward()
    assert torch.equal(crit.centers, before)
    crit.update_centers(features, labels)
    torch.testing.assert_close(crit.centers, update_by_loop(before, features, labels, 0.5))


def test_paper_mode_casts_features_to_centers_dtype():
    crit = with_centers(CenterLoss(6, 5))
    features, labels = batch(dtype=torch.float64)
    x = features.clone().requires_grad_()
    before = crit.centers.clone()
    crit(x, labels).backward()
    assert x.grad.dtype == torch.float64 and crit.centers.dtype == torch.float32
    torch.testing.assert_close(crit.centers.double(), update_by_loop(before, features.float(), labels, 0.5),
                               atol=1e-6, rtol=1e-6)


def test_autograd_mode_trains_centers_as_a_parameter():
    crit = with_centers(CenterLoss(6, 5, update="autograd", dtype=torch.float64))
    assert [n for n, _ in crit.named_parameters()] == ["centers"]
    features, labels = batch()
    x = features.clone().requires_grad_()
    before = crit.centers.detach().clone()
    crit(x, labels).backward()
    c = before.clone().requires_grad_()
    xr = features.clone().requires_grad_()
    reference.center_loss(xr, labels, c).backward()
    torch.testing.assert_close(crit.centers.grad, c.grad)
    torch.testing.assert_close(x.grad, xr.grad)
    assert torch.equal(crit.centers.detach(), before)  # only the optimizer moves them


def test_bad_update_mode():
    with pytest.raises(ValueError, match="update must be one of"):
        CenterLoss(3, 2, update="sgd")


# ---- TrunkLoss -----------------------------------------------------------------------------------

def test_trunk_loss_is_softmax_plus_beta_center():
    crit = TrunkLoss(6, 5, beta=0.01)
    with_centers(crit.center)
    features, labels = batch(dtype=torch.float32)
    logits = torch.randn(len(labels), 6)
    before = crit.center.centers.clone()
    x = features.clone().requires_grad_()
    loss = crit(logits, x, labels)
    expected = F.cross_entropy(logits, labels) + 0.01 * reference.center_loss(features, labels, before)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(x.grad, 0.01 * (features - before[labels]) / len(labels))
    # The rule does not depend on beta.
    torch.testing.assert_close(crit.center.centers.double(), update_by_loop(before, features, labels, 0.5),
                               atol=1e-6, rtol=1e-6)


# ---- CMLoss --------------------------------------------------------------------------------------

def cm_inputs(b=10, c=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (b,), generator=g)
    x, z = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    hr, lr = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    return hr, lr, x, z, labels


def test_cm_loss_separate_centers():
    crit = CMLoss(6, 5, lam=0.1, alpha=0.2, center_alpha=0.3)
    assert crit.center_x is not crit.center_z
    with_centers(crit.center_x, seed=1), with_centers(crit.center_z, seed=2)
    hr, lr, x, z, labels = cm_inputs()
    cx, cz = crit.center_x.centers.clone(), crit.center_z.centers.clone()
    xg, zg = x.clone().requires_grad_(), z.clone().requires_grad_()
    loss = crit(hr, lr, xg, zg, labels)
    ls = F.cross_entropy(hr, labels) + F.cross_entropy(lr, labels)
    lc = reference.center_loss(x, labels, cx) + reference.center_loss(z, labels, cz)
    le = (x - z).pow(2).sum(1).mean()
    torch.testing.assert_close(loss, ls + 0.1 * lc + 0.2 * le)
    loss.backward()
    n = len(labels)
    torch.testing.assert_close(xg.grad, 0.1 * (x - cx[labels]) / n + 0.2 * 2 * (x - z) / n)
    torch.testing.assert_close(zg.grad, 0.1 * (z - cz[labels]) / n - 0.2 * 2 * (x - z) / n)
    tol = dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(crit.center_x.centers.double(), update_by_loop(cx, x, labels, 0.3), **tol)
    torch.testing.assert_close(crit.center_z.centers.double(), update_by_loop(cz, z, labels, 0.3), **tol)


def test_cm_loss_shared_centers():
    crit = CMLoss(6, 5, lam=0.1, alpha=0.2, center_alpha=0.3, shared_centers=True)
    assert crit.center_x is crit.center_z
    with_centers(crit.center_x)
    hr, lr, x, z, labels = cm_inputs()
    c = crit.center_x.centers.clone()
    terms = crit.terms(hr, lr, x.clone().requires_grad_(), z.clone().requires_grad_(), labels)
    torch.testing.assert_close(terms["center"], reference.center_loss(x, labels, c) + reference.center_loss(z, labels, c))
    crit(hr, lr, x.clone().requires_grad_(), z.clone().requires_grad_(), labels).backward()
    # One update over the HR and LR features together: n_j counts both.
    expected = update_by_loop(c, torch.cat([x, z]), torch.cat([labels, labels]), 0.3)
    torch.testing.assert_close(crit.center_x.centers.double(), expected, atol=1e-6, rtol=1e-6)


# ---- torch.distributed: two gloo processes on CPU ---------------------------------------------------

NUM_CLASSES, DIM, ALPHA = 9, 6, 0.5
# Uneven halves: class 0 on both ranks, some classes on one only; in the last step rank 1 has no rows.
STEPS = [(slice(0, 7), slice(7, 16)), (slice(0, 5), slice(5, 16)), (slice(0, 16), slice(16, 16))]


def distributed_data():
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([0, 3, 3, 5, 0, 8, 1, 0, 2, 2, 7, 0, 4, 4, 4, 1])
    features = [torch.randn(len(labels), DIM, generator=g, dtype=torch.float64) for _ in STEPS]
    centers = torch.randn(NUM_CLASSES, DIM, generator=g, dtype=torch.float64)
    return features, labels, centers


def distributed_worker(rank, out_dir):
    # A rendezvous file instead of a TCP port: nothing else on the machine can take it in between.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        features, labels, centers = distributed_data()
        crit = CenterLoss(NUM_CLASSES, DIM, alpha=ALPHA, dtype=torch.float64)
        crit.centers.copy_(centers)
        for step, (x, halves) in enumerate(zip(features, STEPS)):
            rows = halves[rank]
            if step < 2:  # through forward and backward
                crit(x[rows].clone().requires_grad_(), labels[rows]).backward()
            else:  # directly, with an empty batch on rank 1
                crit.update_centers(x[rows], labels[rows])
        torch.save(crit.centers, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_distributed_update_matches_single_process(tmp_path):
    run_two_processes(distributed_worker, str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)  # every rank holds the same centers, bit for bit
    features, labels, centers = distributed_data()
    expected = centers.clone()
    for x in features:  # the whole batch in one process
        ops.center_update_(expected, x, labels, ALPHA)
    torch.testing.assert_close(rank0, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.cuda
def test_cuda_center_loss_matches_cpu():
    features, labels = batch(b=300, c=40, d=64, dtype=torch.float32)
    crit_cpu = with_centers(CenterLoss(40, 64))
    crit_gpu = CenterLoss(40, 64, device="cuda")
    crit_gpu.centers.copy_(crit_cpu.centers)
    x_cpu, x_gpu = features.clone().requires_grad_(), features.cuda().half().requires_grad_()
    loss_cpu, loss_gpu = crit_cpu(x_cpu, labels), crit_gpu(x_gpu, labels.cuda())
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, atol=1e-2, rtol=1e-3)
    loss_cpu.backward()
    loss_gpu.backward()
    assert x_gpu.grad.dtype == torch.float16  # the cast to the centers' dtype is differentiated through
    torch.testing.assert_close(x_gpu.grad.float().cpu(), x_cpu.grad, atol=1e-4, rtol=1e-2)
    torch.testing.assert_close(crit_gpu.centers.cpu(), crit_cpu.centers, atol=2e-3, rtol=1e-3)
