"""The benchmark harness measures what its figures claim (bench/ is not a package the wheel installs,
so it is loaded from the source tree)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).parents[1] / "bench" / "harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

CPU = torch.device("cpu")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is read from /proc")


def touching(mib: int):
    """A call that allocates `mib` MiB, writes every page and frees them."""

    def call():
        t = torch.ones(mib * 2**20 // 4)
        return float(t[-1])

    return call


@needs_linux
@pytest.mark.parametrize("mib", [16, 64, 200])
def test_cpu_peak_memory_counts_what_the_call_touches(mib):
    call = touching(mib)
    call()  # warm, as the benchmarks measure after timing: a first call's lazy set-up is not its work
    assert abs(harness.peak_memory_mib(call, CPU) - mib) < 4


@needs_linux
def test_cpu_peak_memory_ignores_memory_held_before_and_earlier_peaks():
    held = torch.ones(64 * 2**20 // 4)  # in use before the call: not the call's
    harness.peak_memory_mib(touching(128), CPU)  # an earlier, larger peak
    assert harness.peak_memory_mib(lambda: float(held[0]), CPU) < 4
    assert abs(harness.peak_memory_mib(touching(32), CPU) - 32) < 4
