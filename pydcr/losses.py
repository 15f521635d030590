"""The losses of DCR: center loss with Wen et al.'s center update, the trunk loss and the CM loss.

Conventions. Every term is a mean over the batch, as torch's cross-entropy is: the center loss is
1/2 mean ||x_i - c_{y_i}||^2 (Wen et al.'s Caffe layer, which the paper builds on) and the
Euclidean coupling term is mean ||x_i - z_i||^2. The paper writes its losses as sums over the
batch (eqs. 1-5) and its eqs. 3 and 4 in the same form, so against them lambda here weighs the
center terms half as much (docs/center.md, "Scale"); with means, beta, lambda and alpha do not
change meaning with the batch size. All centers start at zero, so every process of a distributed
job starts with the same ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import ops

__all__ = ["CenterLoss", "TrunkLoss", "CMLoss"]

_UPDATES = ("paper", "autograd")


class CenterLoss(nn.Module):
    """Center loss 1/2 mean_i ||x_i - c_{y_i}||^2 with class centers c (num_classes x dim).

    ``update="paper"``: the centers are a buffer moved by Wen et al.'s rule, not by the optimizer:
    for every class j in the batch, ``c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)``
    (:func:`pydcr.ops.center_update_`). As in their Caffe layer, the update happens when the loss is
    backpropagated, after the gradient to the features has been computed from the centers the loss
    saw; each backward pass through the loss moves the centers once. Without a backward pass (eval,
    ``torch.no_grad``, features that need no gradient) nothing moves; :meth:`update_centers` applies
    the rule directly.

    ``update="autograd"``: the centers are a parameter that the optimizer trains with the loss's
    gradient ``-1/B sum_{i: y_i = j} (x_i - c_j)`` (dense, num_classes x dim).

    Under torch.distributed (initialised, world size > 1) the paper update sums the per-class
    statistics of all processes of ``process_group`` before applying the rule, so every process
    moves its centers by the combined batch and all hold identical centers. Every process must
    then run the update (forward and backward, or :meth:`update_centers`) the same number of times.
    ``process_group=False`` keeps the update to this process's batches whatever the processes
    (branch training, which runs in one of them).

    Features are cast to the centers' dtype (``dtype``, float32 by default), so half-precision
    features under autocast meet float32 centers.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        alpha: float = 0.5,
        update: str = "paper",
        *,
        process_group=None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        if update not in _UPDATES:
            raise ValueError(f"CenterLoss: update must be one of {_UPDATES}, got {update!r}")
        self.num_classes, self.dim, self.alpha, self.update = num_classes, dim, float(alpha), update
        self.process_group = process_group
        centers = torch.zeros(num_classes, dim, dtype=dtype, device=device)
        if update == "paper":
            self.register_buffer("centers", centers)
        else:
            self.centers = nn.Parameter(centers)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, alpha={self.alpha}, update={self.update!r}"

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = features.to(self.centers.dtype)
        if self.update == "paper" and self.training and torch.is_grad_enabled() and features.requires_grad:
            return _LossThenUpdate.apply(features, labels, self.centers, self)
        return ops.center_loss(features, labels, self.centers)

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Moves the centers of the classes in the batch by the rule (across processes when distributed)."""
        features = features.detach().to(self.centers.dtype)
        centers = self.centers.data
        if _distributed(self.process_group):
            classes, sums, counts = ops.center_stats(features, labels, centers)
            classes, sums, counts = all_reduce_center_stats(classes, sums, counts, self.process_group)
            ops.center_apply_(centers, classes, sums, counts, self.alpha)
        else:
            ops.center_update_(centers, features, labels, self.alpha)


class _LossThenUpdate(torch.autograd.Function):
    """The center loss whose backward, after computing the features' gradient, updates the centers."""

    @staticmethod
    def forward(ctx, features, labels, centers, module):
        loss = torch.ops.pydcr.center_loss.default(features, labels, centers)  # checks the labels first
        # The rows this loss read, kept apart: the centers move in place at every update, and a
        # second call of the module before one backward (a loss per resolution, summed) moves
        # them before this backward runs.
        seen = centers.index_select(0, labels)
        ctx.save_for_backward(features, labels, seen)
        ctx.module = module
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        features, labels, seen = ctx.saved_tensors
        rows = torch.arange(len(labels), dtype=labels.dtype, device=labels.device)  # row i of `seen` is c_{y_i}
        grad_features, _ = torch.ops.pydcr.center_loss_backward.default(grad, features, rows, seen, False)
        ctx.module.update_centers(features, labels)
        return grad_features, None, None, None


def _distributed(group) -> bool:
    """Whether centers are updated with the statistics of other processes too; False: this one's only."""
    if group is False:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_center_stats(
    classes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, group=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums per-class statistics (:func:`pydcr.ops.center_stats`) over the processes of ``group``.

    Returns the same triple for the union of the processes' classes (ascending), identical on every
    process. Nothing is sized by the number of classes: the ranks' class lists are gathered, and
    the sums and counts are all-reduced on their union only.
    """
    k = torch.tensor([classes.numel()], device=classes.device)
    dist.all_reduce(k, op=dist.ReduceOp.MAX, group=group)
    padded = classes.new_full((int(k),), -1)
    padded[: classes.numel()] = classes
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, padded, group=group)
    union = torch.unique(torch.cat(gathered))  # ascending
    union = union[union >= 0]
    rows = torch.searchsorted(union, classes)
    all_sums = sums.new_zeros((union.numel(), sums.shape[1])).index_copy_(0, rows, sums)
    all_counts = counts.new_zeros(union.numel()).index_copy_(0, rows, counts)
    dist.all_reduce(all_sums, group=group)
    dist.all_reduce(all_counts, group=group)
    return union, all_sums, all_counts


class TrunkLoss(nn.Module):
    """The trunk's joint loss (paper eq. 1): softmax cross-entropy + beta * center loss.

    ``forward(logits, features, labels)`` takes the classifier's logits and the trunk features v
    the classifier was applied to; the classifier head belongs to the model, not to the loss. The
    centers live in ``self.center`` (a :class:`CenterLoss`; ``alpha`` and ``update`` go to it).
    """

    def __init__(
        self, num_classes: int, dim: int, beta: float = 0.008, *, alpha: float = 0.5, update: str = "paper",
        process_group=None,
    ):
        super().__init__()
        self.beta = float(beta)
        self.center = CenterLoss(num_classes, dim, alpha, update, process_group=process_group)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    def forward(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels) + self.beta * self.center(features, labels)


class CMLoss(nn.Module):
    """The coupled-mapping loss of the branch pair (paper eqs. 2-5): Ls + lam * Lc + alpha * Le.

    ``forward(hr_logits, lr_logits, x, z, labels)``: x are the HR branch features of a batch of
    images and z the LR branch features of the same images (row i of both is image i, label y_i);
    the logits are the branches' classifier outputs (U x + b and V z + a).
      Ls  cross-entropy of the HR logits + cross-entropy of the LR logits (eq. 2)
      Lc  center loss of x + center loss of z (eq. 3)
      Le  mean_i ||x_i - z_i||^2, the coupling of each image's HR and LR features (eq. 4)

    Which centers: the paper's eq. 3 gives HR and LR features their own class centers, c^x_{y_i}
    for x and c^z_{y_i} for z ("the y_i-th class centers of HR features x and LR features z"), so
    by default ``self.center_x`` and ``self.center_z`` are separate, each updated with its own
    features. HR and LR features live in different branches that Le pulls together; separate
    centers let each branch's compactness be measured in its own space. ``shared_centers=True``
    uses one set for both (``center_z is center_x``): each center is updated with the HR and LR
    features of its class together (n_j counts both), which also pulls the HR and LR class means
    onto one point.

    ``center_alpha`` is the centers' update rate (Wen et al.'s alpha, :class:`CenterLoss`); ``alpha``
    is the paper's weight of Le.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        lam: float = 0.008,
        alpha: float = 0.008,
        *,
        shared_centers: bool = False,
        center_alpha: float = 0.5,
        update: str = "paper",
        process_group=None,
    ):
        super().__init__()
        self.lam, self.alpha, self.shared_centers = float(lam), float(alpha), bool(shared_centers)
        self.center_x = CenterLoss(num_classes, dim, center_alpha, update, process_group=process_group)
        self.center_z = (
            self.center_x
            if shared_centers
            else CenterLoss(num_classes, dim, center_alpha, update, process_group=process_group)
        )

    def extra_repr(self) -> str:
        return f"lam={self.lam}, alpha={self.alpha}, shared_centers={self.shared_centers}"

    def terms(
        self, hr_logits: torch.Tensor, lr_logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The three terms: ``softmax`` (Ls), ``center`` (Lc) and ``euclidean`` (Le)."""
        softmax = F.cross_entropy(hr_logits, labels) + F.cross_entropy(lr_logits, labels)
        if self.shared_centers:
            # One call over both halves, so the update sees each class's HR and LR rows together;
            # twice the mean over 2B rows is the sum of the two means.
            center = 2 * self.center_x(torch.cat([x, z]), torch.cat([labels, labels]))
        else:
            center = self.center_x(x, labels) + self.center_z(z, labels)
        euclidean = (x - z).pow(2).sum(1).mean()
        return {"softmax": softmax, "center": center, "euclidean": euclidean}

    def forward(
        self, hr_logits: torch.Tensor, lr_logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        t = self.terms(hr_logits, lr_logits, x, z, labels)
        return t["softmax"] + self.lam * t["center"] + self.alpha * t["euclidean"]
