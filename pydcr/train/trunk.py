"""Step 1: train the trunk with softmax + beta * center loss on multi-resolution batches."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from .._machine import use_amp
from ..denormals import denormals_flushed
from ..data import MultiResolution, face_loader
from ..losses import TrunkLoss
from ..models import Trunk
from .checkpoint import OtherRunError, StopFlag, check_same_run, load_checkpoint, save_checkpoint
from .distributed import current_world
from .metrics_log import MetricsLog
from .presets import make_optimizer, TrunkConfig
from .progress import Progress


class TrunkWithHead(nn.Module):
    """The trunk and its training classifier as one module, so one DDP wrapper covers both."""

    def __init__(self, trunk: Trunk, head: nn.Linear):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.trunk(images)
        return v, self.head(v)


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
    tensorboard: bool = False,
    init: TrunkRun | None = None,
    amp: bool | None = None,
    label: str = "trunk",
    data_key: str | None = None,
) -> TrunkRun:
    """Train a trunk on `dataset` (items: an h x w x 3 uint8 aligned crop at the trunk's input size, an
    int label; a pydcr.data.PackedFaces, say) and return it.

    Writes out_dir/checkpoint.pt after every epoch and when stopped by SIGINT / SIGTERM, and resumes
    from it when present; out_dir/metrics.jsonl gets one line per epoch (and, with `tensorboard`,
    out_dir/tensorboard the same figures as TensorBoard scalars). `init` starts from a trained
    run's trunk and classifier instead of afresh (a fine-tune; the optimizer and schedule start
    anew, and a checkpoint in out_dir still wins). With the same seed, a
    resumed run trains on the same batches (shuffling and flips come from seeded generators).

    label: what the progress bar calls the network.

    data_key: a string that identifies the training data (which people, which images), kept in the
    checkpoint: a checkpoint made from other data is not resumed (an OtherRunError), even when the
    number of identities agrees; given, a checkpoint that records no data (an earlier version's) is
    not resumed either. Default: a digest of the dataset's labels, when it has `labels` (and a
    checkpoint without a record is resumed).

    amp: the forward pass in bfloat16 autocast; the loss, the optimizer and the
    weights stay float32. Default: on CUDA only. On a CPU with bfloat16 arithmetic (AMX,
    AVX512-BF16) it makes a step about twice as fast; on other CPUs it may cost time (not measured).

    Data parallel when a torch.distributed process group is initialised (see
    :mod:`pydcr.train.distributed`): each of the W processes trains on config.batch_size / W images
    of every batch on its `device`, gradients are averaged by DistributedDataParallel and the
    center update sums the class statistics of all processes, so the W processes together take
    the steps one process would take with the whole batch. Only rank 0 shows progress and writes
    to out_dir (which every rank reads when resuming: a shared folder).
    """
    if len(dataset) == 0:
        raise ValueError("no images to train on: the dataset is empty")
    world = current_world()
    if config.batch_size % world.size:
        raise ValueError(f"the batch of {config.batch_size} images does not split evenly over {world.size} "
                         "processes: choose a batch size that is a multiple of the number of processes")
    local_batch = config.batch_size // world.size
    key_given = data_key is not None
    if data_key is None:
        data_key = labels_digest(dataset)
    out_dir = Path(out_dir)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    amp = use_amp(amp, device)
    torch.manual_seed(seed)
    trunk = Trunk(width=config.width, feature_dim=config.feature_dim, input_size=config.input_size).to(device)
    head = nn.Linear(config.feature_dim, num_classes).to(device)
    loss_fn = TrunkLoss(num_classes, config.feature_dim, config.beta, alpha=config.center_alpha).to(device)
    if init is not None:
        if init.head.out_features != num_classes:
            raise ValueError(f"the run to fine-tune classifies {init.head.out_features} identities, "
                             f"these data {num_classes}")
        trunk.load_state_dict(init.trunk.state_dict())
        head.load_state_dict(init.head.state_dict())
    params = list(trunk.parameters()) + list(head.parameters())
    opt = make_optimizer(params, config)
    # One process: a plain permutation per epoch. W processes: rank r takes every W-th image of it.
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed * 1_000_003)
    steps_per_epoch = -(-len(sampler) // local_batch)
    total = steps_per_epoch * config.epochs
    # A milestone at step 0 would cut the rate before the first step (a run of one or two steps).
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, int(m * total)) for m in config.milestones],
                                                 config.gamma)
    # channels_last: cuDNN's and oneDNN's convolutions run fastest in it, float32 included (bench.trunk)
    trunk = trunk.to(memory_format=torch.channels_last)

    ckpt_path = out_dir / "checkpoint.pt"
    start_epoch, start_step = 0, 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        # Only the same run resumes: other weights' shapes do not load, another schedule or batch misleads.
        if key_given and "data" not in state:  # made before checkpoints recorded their data
            raise OtherRunError(f"{out_dir} holds a run that does not record which data it trained on (an earlier "
                                "version's), so it cannot be told from a run on other data; use another --out or "
                                "delete it")
        saved = {**state.get("config", {}), "identities": state["head"]["weight"].shape[0]}
        for key in ("seed", "data"):
            if key in state:
                saved[key] = state[key]
        check_same_run(out_dir, saved, {**config.to_dict(), "seed": seed, "identities": num_classes, "data": data_key})
        trunk.load_state_dict(state["trunk"])
        head.load_state_dict(state["head"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, start_step = state["epoch"], state["step"]
    # A stopped epoch's figures so far (summed over the processes), so that its line covers it all.
    partial = state.get("epoch_sums") if state is not None and start_step else None

    def checkpoint(epoch: int, step: int, epoch_sums: list[float] | None = None) -> None:
        if world.is_main:  # every rank holds the same state
            save_checkpoint(ckpt_path, {
                "trunk": trunk.state_dict(), "head": head.state_dict(), "loss": loss_fn.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                "config": config.to_dict(), "seed": seed, "data": data_key, "world_size": world.size,
                "epoch_sums": epoch_sums,
            })
        world.barrier()  # no rank runs ahead of, or returns before, the checkpoint on disk

    model = TrunkWithHead(trunk, head)
    if world.distributed:  # after loading the checkpoint: DDP broadcasts rank 0's parameters
        model = DistributedDataParallel(model, device_ids=[device.index] if device.index is not None else None)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    # Flips come from a generator reseeded at every step, so a resumed run draws what it would have.
    flips = torch.Generator()
    flip_probability = 0.5 if config.flip else 0.0
    resolutions = MultiResolution(config.low_sizes, antialias=config.antialias)
    model.train()
    initial = start_epoch * steps_per_epoch + start_step
    # One loader for the run (its workers persist); a resumed epoch's order skips the trained batches.
    order = _Resumable(sampler, local_batch)
    loader = face_loader(dataset, local_batch, shuffle=False, sampler=order, workers=num_workers,
                         pin_memory=device.type == "cuda")
    with StopFlag() as stop, denormals_flushed(device.type == "cpu"), Progress(
            total, label, enabled=progress and world.is_main, initial=initial) as bar, MetricsLog(
            out_dir, tensorboard=tensorboard, enabled=world.is_main, after_epoch=start_epoch) as log:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            order.skip = start_step
            # Sums stay on the device: the host reads them when the bar shows them and at the epoch's end.
            # Rank 0 carries on a stopped epoch's totals; the others start at 0 (they are summed).
            earlier = partial if partial is not None and world.is_main else [0.0, 0, 0, 0, 0.0]
            loss_sum = torch.tensor(earlier[0], dtype=torch.float64, device=device)
            correct = torch.tensor(earlier[1], dtype=torch.int64, device=device)
            seen, images_seen = earlier[2], earlier[3]
            started = time.perf_counter() - earlier[4]
            partial, stopping, lr = None, False, sched.get_last_lr()[0]
            for step, (images, labels) in enumerate(loader, start=start_step):
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                flips.manual_seed(seed * 1_000_003 + epoch * 10_007 + step)
                flipped = world.shard(torch.rand(len(images) * world.size, generator=flips)) < flip_probability
                b = resolutions(images, flipped)
                batch = torch.cat([b.hr, *b.low.values()]).contiguous(memory_format=torch.channels_last)
                targets = labels.repeat(1 + len(config.low_sizes))
                with autocast:
                    v, logits = model(batch)
                loss = loss_fn(logits.float(), v.float(), targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lr = sched.get_last_lr()[0]  # the rate this step trained at
                sched.step()
                loss_sum += loss.detach().double() * len(targets)
                correct += (logits.detach().argmax(1) == targets).sum()
                seen += len(targets)
                images_seen += len(images)
                bar.update(lambda: {"loss": loss_sum.item() / seen, "acc": correct.item() / seen,
                                    "img_s": images_seen / (time.perf_counter() - started)})
                if on_step is not None:
                    on_step(epoch * steps_per_epoch + step)
                if world.any(stop.stop):  # a signal reaches the ranks at different steps
                    if step + 1 == steps_per_epoch:  # the epoch is done: end it as usual, then stop
                        stopping = True
                        break
                    sums = world.sum([loss_sum.item(), correct.item(), seen, images_seen])
                    checkpoint(epoch, step + 1, [*sums, time.perf_counter() - started])
                    return TrunkRun(trunk, head, False, epoch)
            start_step = 0
            total_loss, total_correct, total_seen, total_images = world.sum(
                [loss_sum.item(), correct.item(), seen, images_seen])
            metrics = {"epoch": epoch + 1, "loss": total_loss / max(total_seen, 1),
                       "train_acc": total_correct / max(total_seen, 1),
                       "images_per_s": total_images / (time.perf_counter() - started), "lr": lr}
            log.write(metrics)
            checkpoint(epoch + 1, 0)
            if stopping and epoch + 1 < config.epochs:
                return TrunkRun(trunk, head, False, epoch + 1)
    return TrunkRun(trunk, head, True, config.epochs)


class _Resumable(torch.utils.data.Sampler):
    """An epoch's order from `sampler`, less its first `skip` batches of `batch` (trained on before a
    resume): they are not loaded again."""

    def __init__(self, sampler, batch: int) -> None:
        self.sampler, self.batch, self.skip = sampler, batch, 0

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip * self.batch, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip * self.batch)


def labels_digest(dataset) -> str | None:
    """A digest of the dataset's labels (None when it has none): the default key of its data."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    return "labels:" + hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()[:32]
