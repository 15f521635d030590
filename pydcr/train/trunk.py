"""Step 1: train the trunk with softmax + beta * center loss on multi-resolution batches."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import MultiResolution, face_loader
from ..losses import TrunkLoss
from ..models import Trunk
from .checkpoint import StopFlag, load_checkpoint, save_checkpoint
from .presets import make_optimizer, TrunkConfig
from .progress import Progress


@contextlib.contextmanager
def denormals_flushed(enabled: bool):
    """Flush denormal floats to zero inside the block (CPU). Activations of the plain, batch-norm-free
    network drift into denormal range as it trains, and CPUs compute on denormals many times slower."""
    flushed = enabled and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


@dataclass
class TrunkRun:
    trunk: Trunk
    head: nn.Linear
    finished: bool  # False when stopped by a signal (a checkpoint was saved)
    epochs_done: int


def train_trunk(
    dataset: Dataset,
    num_classes: int,
    config: TrunkConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrunkRun:
    """Train a trunk on `dataset` (items: an h x w x 3 uint8 aligned crop at the trunk's input size, an
    int label; a pydcr.data.PackedFaces, say) and return it.

    Writes out_dir/checkpoint.pt after every epoch and when stopped by SIGINT / SIGTERM, and resumes
    from it when present; out_dir/metrics.jsonl gets one line per epoch. With the same seed, a
    resumed run trains on the same batches (shuffling and flips come from seeded generators).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    torch.manual_seed(seed)
    trunk = Trunk(width=config.width, feature_dim=config.feature_dim, input_size=config.input_size).to(device)
    head = nn.Linear(config.feature_dim, num_classes).to(device)
    loss_fn = TrunkLoss(num_classes, config.feature_dim, config.beta, alpha=config.center_alpha).to(device)
    params = list(trunk.parameters()) + list(head.parameters())
    opt = make_optimizer(params, config)
    steps_per_epoch = -(-len(dataset) // config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m * total) for m in config.milestones], config.gamma)
    if device.type == "cuda":
        trunk = trunk.to(memory_format=torch.channels_last)

    ckpt_path = out_dir / "checkpoint.pt"
    start_epoch, start_step = 0, 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        trunk.load_state_dict(state["trunk"])
        head.load_state_dict(state["head"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, start_step = state["epoch"], state["step"]

    def checkpoint(epoch: int, step: int) -> None:
        save_checkpoint(ckpt_path, {
            "trunk": trunk.state_dict(), "head": head.state_dict(), "loss": loss_fn.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
            "config": config.to_dict(), "seed": seed,
        })

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    # Flips come from a generator reseeded at every step, so a resumed run draws what it would have.
    flips = torch.Generator()
    resolutions = MultiResolution(config.low_sizes, antialias=config.antialias, flip=0.5 if config.flip else 0.0,
                                  generator=flips)
    trunk.train()
    head.train()
    initial = start_epoch * steps_per_epoch + start_step
    with StopFlag() as stop, denormals_flushed(device.type == "cpu"), Progress(total, "trunk", enabled=progress,
                                                                             initial=initial) as bar:
        for epoch in range(start_epoch, config.epochs):
            loader = face_loader(dataset, config.batch_size, shuffle=True, workers=num_workers,
                                 pin_memory=device.type == "cuda", seed=seed * 1_000_003 + epoch)
            sums = {"loss": 0.0, "correct": 0, "seen": 0, "images": 0}
            started = time.perf_counter()
            for step, (images, labels) in enumerate(loader):
                if step < (start_step if epoch == start_epoch else 0):
                    continue  # resuming mid-epoch: these batches were trained on
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                flips.manual_seed(seed * 1_000_003 + epoch * 10_007 + step)
                b = resolutions(images)
                batch = torch.cat([b.hr, *b.low.values()])
                if device.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                targets = labels.repeat(1 + len(config.low_sizes))
                with autocast:
                    v = trunk(batch)
                    logits = head(v)
                loss = loss_fn(logits.float(), v.float(), targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums["loss"] += loss.item() * len(targets)
                sums["correct"] += int((logits.argmax(1) == targets).sum())
                sums["seen"] += len(targets)
                sums["images"] += len(images)
                rate = sums["images"] / (time.perf_counter() - started)
                bar.update(loss=sums["loss"] / sums["seen"], acc=sums["correct"] / sums["seen"], img_s=rate)
                if on_step is not None:
                    on_step(epoch * steps_per_epoch + step)
                if stop.stop:
                    checkpoint(epoch, step + 1)
                    return TrunkRun(trunk, head, False, epoch)
            start_step = 0
            metrics = {"epoch": epoch + 1, "loss": sums["loss"] / max(sums["seen"], 1),
                       "train_acc": sums["correct"] / max(sums["seen"], 1),
                       "images_per_s": sums["images"] / (time.perf_counter() - started), "lr": sched.get_last_lr()[0]}
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            checkpoint(epoch + 1, 0)
    return TrunkRun(trunk, head, True, config.epochs)
