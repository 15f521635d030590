"""Step 2: branch pairs on a frozen trunk, trained with the CM loss on cached trunk features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from .. import ops
from .._machine import use_amp
from ..data import face_loader
from ..losses import CMLoss
from ..models import DCR, BranchPair, Trunk
from .presets import make_optimizer, BranchConfig
from .progress import Progress


@torch.no_grad()
def trunk_features(
    trunk: Trunk,
    dataset: Dataset,
    low_sizes: Sequence[int],
    *,
    antialias: bool = True,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    amp: bool | None = None,
    num_workers: int = 0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """Trunk features of every image at 112 x 96 and degraded to each low size, computed once.

    Returns (hr N x D, {k: N x D}, labels N), float32 on the CPU. The trunk is frozen in step 2, so
    branch training then costs seconds instead of a trunk pass per step. amp: the trunk in
    bfloat16 autocast, as the Embedder runs it (default: on CUDA only). The trunk is left in eval
    mode, channels_last, on `device` (the DCR it belongs to moves with it).
    """
    device = torch.device(device)
    amp = use_amp(amp, device)
    trunk = trunk.eval().to(device, memory_format=torch.channels_last)  # as in training
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    hr, low, labels = [], {k: [] for k in low_sizes}, []
    loader = face_loader(dataset, batch_size, shuffle=False, workers=num_workers, pin_memory=device.type == "cuda")
    with Progress(len(loader), "trunk features", enabled=progress) as bar:
        for images, y in loader:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            with autocast:
                hr.append(trunk(images).float().cpu())
                for k in low_sizes:
                    low[k].append(trunk(ops.degrade(images, k, antialias=antialias)).float().cpu())
            labels.append(y)
            bar.update()
    return torch.cat(hr), {k: torch.cat(v) for k, v in low.items()}, torch.cat(labels)


def train_branch_pair(
    hr: torch.Tensor,
    lr: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: BranchConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "branch",
    init: BranchPair | None = None,
) -> BranchPair:
    """One branch pair from cached HR and LR trunk features of the same images (row i = image i).

    init: fine-tune this pair's feature layers instead of starting afresh (its classifiers, if any,
    are not used: the new ones are sized for `num_classes`, the identities of these labels).
    """
    if hr.dim() != 2 or lr.shape != hr.shape or labels.shape != hr.shape[:1]:
        raise ValueError(f"hr and lr must be N x D features of the same N images as the N labels, got hr "
                         f"{tuple(hr.shape)}, lr {tuple(lr.shape)}, labels {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError("no features to train a branch pair on")
    device = torch.device(device)
    torch.manual_seed(seed)
    dim = config.dim if init is None else init.dim
    pair = BranchPair(num_classes, in_dim=hr.shape[1], dim=dim).to(device)
    if init is not None:
        if init.in_dim != hr.shape[1]:
            raise ValueError(f"the pair to fine-tune takes {init.in_dim}-d features, got {hr.shape[1]}-d")
        pair.hr_branch.fc.load_state_dict(init.hr_branch.fc.state_dict())
        pair.lr_branch.fc.load_state_dict(init.lr_branch.fc.state_dict())
    # Local centers: branch training runs in one process, even inside a distributed job.
    loss_fn = CMLoss(num_classes, dim, config.lam, config.alpha, shared_centers=config.shared_centers,
                     center_alpha=config.center_alpha, process_group=False).to(device)
    opt = make_optimizer(pair.parameters(), config)
    steps = -(-len(labels) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * config.epochs)
    hr, lr, labels = hr.to(device), lr.to(device), labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    pair.train()
    with Progress(steps * config.epochs, desc, enabled=progress) as bar:
        for _ in range(config.epochs):
            for idx in torch.randperm(len(labels), generator=gen).to(device).split(config.batch_size):
                x, z = pair.hr(hr[idx]), pair.lr(lr[idx])
                loss = loss_fn(pair.hr_branch.logits(x), pair.lr_branch.logits(z), x, z, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(lambda loss=loss: {"loss": loss.item()})
    return pair.eval()


def train_branches(
    model: DCR,
    dataset: Dataset,
    num_classes: int,
    sizes: Sequence[int],
    config: BranchConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    amp: bool | None = None,
    num_workers: int = 0,
) -> DCR:
    """Add a trained branch pair (classifiers dropped) to `model` for each size; the trunk is not
    touched. amp: the trunk's features in bfloat16 autocast (see :func:`trunk_features`);
    num_workers: data loader processes reading the faces for them."""
    hr, low, labels = trunk_features(model.trunk, dataset, sizes, antialias=model.antialias, device=device,
                                     progress=progress, amp=amp, num_workers=num_workers)
    for k in sizes:
        pair = train_branch_pair(hr, low[k], labels, num_classes, config, seed=seed, device=device,
                                 progress=progress, desc=f"branch {k}x{k}")
        model.add_branch(k, pair.without_classifiers())
    return model
