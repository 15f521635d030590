"""pydcr.ops.center_update_ against three pure-torch formulations of Wen et al.'s center update.

    python -m bench.center [--device cuda] [--quick] [--batch B ...]

C = 10575 classes (CASIA-WebFace), D = 512, batches of B in {256, 768} labels drawn uniformly.
Every contender moves the centers of the classes in the batch by
c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j); their results are checked against
ours before timing, then timed in alternating rounds (bench.harness.time_interleaved).
  ours      torch.ops.pydcr.center_update_: labels grouped in one pass, O(B * D)
  all       (a) pydcr.reference.center_update_: index_add_ + bincount over all C classes, O(C * D)
  present   (b) the same restricted to the classes in the batch (torch.unique), O(B * D)
  distmat   (c) the B x C distance-matrix formulation of popular ports: the masked squared
            distances ||x_i||^2 + ||c_j||^2 - 2 x_i . c_j, their gradient to the centers by
            autograd, then the rule; O(B * C * D)
"""

from __future__ import annotations

from functools import partial

import torch

from bench.harness import Report, common_args, parse_args, peak_memory_mib, time_interleaved
from pydcr import ops, reference

NUM_CLASSES = 10575
DIM = 512
ALPHA = 0.5


def update_present(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """(b): index_add_ over the classes present in the batch."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    diff = centers.index_select(0, labels) - features
    delta = diff.new_zeros((classes.numel(), diff.shape[1])).index_add_(0, inverse, diff)
    step = (-alpha / (1 + counts)).to(delta.dtype)
    return centers.index_add_(0, classes, delta.mul_(step[:, None]))


def update_distmat(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """(c): the gradient of the masked B x C distance matrix, scaled by the rule."""
    c = centers.detach().requires_grad_()
    distmat = features.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1) - 2 * features @ c.t()
    mask = labels[:, None] == torch.arange(centers.shape[0], device=labels.device)
    (grad,) = torch.autograd.grad((distmat * mask).sum(), c)  # 2 * sum_{i: y_i = j} (c_j - x_i)
    counts = mask.sum(0)
    return centers.sub_(alpha * grad / (2 * (1 + counts)).to(grad.dtype)[:, None])


CONTENDERS = {
    "ours": ops.center_update_,
    "all": reference.center_update_,
    "present": update_present,
    "distmat": update_distmat,
}


def check_agreement(centers, features, labels, dtype) -> None:
    expected = ops.center_update_(centers.clone(), features, labels, ALPHA)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, fn in CONTENDERS.items():
        got = fn(centers.clone(), features, labels, ALPHA)
        torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol, msg=f"{name} disagrees")


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes B (default 256 768, quick 256)")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    batches = args.batch or ([256] if args.quick else [256, 768])
    dtypes = [torch.float32] + ([torch.float16] if device.type == "cuda" else [])
    cols = ["B", "C", "D", "dtype", "ours_ms", "all_ms", "present_ms", "distmat_ms", "vs_all", "vs_present",
            "vs_distmat", "ours_MiB", "present_MiB", "distmat_MiB"]
    report = Report("center", device, cols)
    min_time = 0.1 if args.quick else 0.4
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for batch in batches:
            centers = torch.randn(NUM_CLASSES, DIM, generator=g).to(dtype=dtype, device=device)
            features = torch.randn(batch, DIM, generator=g).to(dtype=dtype, device=device)
            labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
            check_agreement(centers, features, labels, dtype)
            row = dict(B=batch, C=NUM_CLASSES, D=DIM, dtype=str(dtype).removeprefix("torch."))
            # Each contender keeps moving its own copy of the centers; all are timed in alternating rounds.
            calls = {name: partial(fn, centers.clone(), features, labels, ALPHA) for name, fn in CONTENDERS.items()}
            ms = time_interleaved(calls, device, min_time=min_time)
            for name in CONTENDERS:
                row[f"{name}_ms"] = ms[name]
            for name in ("ours", "present", "distmat"):
                row[f"{name}_MiB"] = peak_memory_mib(calls[name], device)
            for name in ("all", "present", "distmat"):
                row[f"vs_{name}"] = row[f"{name}_ms"] / row["ours_ms"]
            report.add(**row)
    report.write(args.out, num_classes=NUM_CLASSES, dim=DIM, alpha=ALPHA)


if __name__ == "__main__":
    main()
