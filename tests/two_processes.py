"""Two spawned processes for the torch.distributed tests (gloo on the CPU)."""

import socket
import time

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(fn, *args, timeout_s: float = 180) -> None:
    """fn(rank, *args) in two spawned processes; fails the test if they are not done in time."""
    context = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the two distributed processes did not finish in time")
