"""Flushing denormal floats to zero on every CPU thread torch computes on.

Activations of the plain, batch-norm-free network drift into denormal range as it trains, and CPUs
compute on denormals many times slower. ``torch.set_flush_denormal`` sets the mode of the calling
thread only, while the threads of torch's intra-op pool run most of a step (the convolutions, the
fused ops, large elementwise ops): with it alone, half of a 2-thread step still computes on
denormals. On x86, :func:`set_flush_denormal` sets the calling thread and every thread of the pool
(reached through one parallel_for item each, which torch's OpenMP pool, the one pip's torch builds
use, hands one to every thread); elsewhere (ARM) it is torch's setting of the calling thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ._extension import _C

__all__ = ["denormals_flushed", "flushes_denormals", "set_flush_denormal"]


def set_flush_denormal(enabled: bool) -> bool:
    """Flush denormals to zero (or stop) on this thread and, on x86, on every thread of torch's CPU
    pool. Returns whether the CPU supports it, as ``torch.set_flush_denormal`` does; where it does
    not, nothing changes."""
    if not torch.set_flush_denormal(enabled):
        return False
    _C.set_flush_denormal_pool(enabled)  # x86; elsewhere torch's own setting of this thread stands
    return True


def flushes_denormals() -> bool | None:
    """Whether the calling thread flushes denormals to zero; None where pydcr cannot read it (not x86)."""
    return _C.flush_denormal_here()


@contextlib.contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush denormals to zero on every CPU thread inside the block, then restore the calling
    thread's mode from before on all of them (where it cannot be read, off: torch's default).
    ``enabled=False`` changes nothing."""
    before = bool(flushes_denormals())
    flushed = enabled and set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed and not before:
            set_flush_denormal(False)
