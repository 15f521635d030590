"""The pieces of data-parallel training: which process this is, the process group, and the few
collectives the training loop needs. Without a process group every helper is the one-process case.

Launch with ``torchrun --nproc_per_node=N -m pydcr train trunk ...``: torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, :func:`from_environment` reads them and
:func:`process_group` initialises (NCCL on CUDA, gloo on the CPU) and destroys the group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank among size processes, local_rank on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def shard(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's share of per-image values drawn for the whole step's batch.

        A DistributedSampler deals the shuffled images out in turn (rank r gets positions r, r + size,
        ...), so rank r's images are the step's global batch [r::size]; taking the same positions of
        values drawn for the global batch gives every image the value one process would have drawn.
        """
        return values[self.rank :: self.size]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (so all ranks stop at the same step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64), the same list on every rank."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def current_world() -> World:
    """The World of an initialised process group, else the one-process World."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def from_environment(environ=os.environ) -> World | None:
    """The World torchrun describes in the environment, or None when not launched by torchrun."""
    present = [name for name in _TORCHRUN_VARIABLES if name in environ]
    if not present:
        return None
    missing = [name for name in _TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise ValueError(f"an incomplete torch.distributed environment: {', '.join(missing)} not set "
                         f"(launch with torchrun, or unset {', '.join(present)})")
    try:
        world = World(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"]))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= world.rank < world.size:
        raise ValueError(f"RANK {world.rank} is not in [0, WORLD_SIZE {world.size})")
    return world


def local_device(world: World, device: str | torch.device) -> torch.device:
    """The device of this process: on CUDA, GPU number LOCAL_RANK of its machine."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if device.index is not None and world.size > 1:
        raise ValueError(f"under torchrun each process uses GPU LOCAL_RANK; give --device cuda, not {device}")
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def process_group(world: World, device: torch.device, timeout_s: float = 1800) -> Iterator[World]:
    """Initialise the default process group for `world` (from the torchrun environment) around a block."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend, bound = "nccl", {"device_id": device}
    else:
        backend, bound = "gloo", {}
    if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()):
        raise RuntimeError(f"this torch has no {backend} backend for distributed training")
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(seconds=timeout_s), **bound)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
