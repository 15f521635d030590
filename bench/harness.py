"""A small benchmark harness: ours against a reference in the same process, as a ratio, to JSON.

Absolute times on shared machines are noisy; ratios measured side by side are what the
benchmarks report. Each row times every contender with the same inputs, interleaved.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pydcr._machine import describe, machine
from pydcr.allocator import retain_freed_memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, min_time: float = 0.3, repeats: int = 7) -> float:
    """Median milliseconds per call over `repeats` runs of enough calls to last ~min_time / repeats."""
    fn()  # warm up: lazy init, caches, compilation
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(min_time / repeats / once))
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        samples.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(samples)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, min_time: float = 0.3,
                     repeats: int = 7, statistic: Callable[[list[float]], float] = statistics.median
                     ) -> dict[str, float]:
    """Milliseconds per call of each function, timed in alternating rounds: the median round
    (or `statistic`'s pick: min for a cost that noise can only add to).

    For contenders that take seconds a call on a shared machine: a burst of load then slows a
    round of every contender instead of one contender's whole measurement.
    """
    calls = {}
    for label, fn in fns.items():
        fn()  # warm up: lazy init, caches, compilation
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        calls[label] = max(1, int(min_time / repeats / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(calls[label]):
                fn()
            sync(device)
            samples[label].append((time.perf_counter() - start) / calls[label] * 1e3)
    return {label: statistic(v) for label, v in samples.items()}


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory of one call above what was in use before it, in MiB.

    CUDA: the caching allocator's peak. CPU: the process's peak resident memory over the call,
    above its resident memory just before, on Linux with glibc (None elsewhere). Before the call,
    freed heap memory goes back to the system (malloc_trim) and the kernel's high-water mark is
    reset (/proc/self/clear_refs), so pages the call touches count and earlier peaks do not.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if device.type != "cpu":
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
        trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size
        base = _resident_kib("VmRSS")
    except OSError:  # not Linux, not glibc, or not allowed
        return None
    fn()
    return (_resident_kib("VmHWM") - base) / 1024


def _resident_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak since the reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Achievable device bandwidth: bytes read plus written by a large copy, per second."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def common_args(description: str, *, malloc: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark takes; `malloc=False` for one that sets the allocator itself."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/<name>-<device>.json)")
    p.add_argument("--quick", action="store_true", help="fewer cases and shorter timings")
    if malloc:
        p.add_argument("--malloc", choices=["retain", "default"], default="retain",
                       help="retain (default): keep freed CPU memory in the process, as the pydcr command "
                            "does (pydcr.allocator); default: glibc's own, which unmaps each freed block "
                            "above 32 MiB, so whichever contender allocates one next pays its page faults")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the options and apply --malloc (the report's machine records what applied)."""
    args = p.parse_args(argv)
    if getattr(args, "malloc", "default") == "retain" and not retain_freed_memory():
        print("# --malloc retain: this malloc is not glibc's; its own behaviour applies")
    return args


class Report:
    """Rows of one benchmark, printed as they come and written as JSON at the end."""

    def __init__(self, name: str, device: torch.device, columns: list[str]):
        self.name, self.device, self.columns = name, device, columns
        self.machine = machine(device)
        self.rows: list[dict] = []
        malloc = f", malloc {self.machine['malloc']}" if device.type == "cpu" else ""
        print(f"# {name} on {describe(self.machine)}, torch {torch.__version__}{malloc}")
        print(" | ".join(columns))

    def add(self, **row) -> None:
        self.rows.append(row)
        print(" | ".join(_fmt(row.get(c)) for c in self.columns), flush=True)

    def write(self, path: Path | None, **extra) -> Path:
        if path is None:
            path = Path(__file__).parent / "results" / f"{self.name}-{self.device.type}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"benchmark": self.name, "machine": self.machine, **extra, "rows": self.rows}
        path.write_text(json.dumps(data, indent=2))
        print(f"# wrote {path}")
        return path


def _fmt(v) -> str:
    if v is None:  # a column this row does not have (or a figure this device does not give)
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
