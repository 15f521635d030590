"""The pydcr command's CPU allocator setting against glibc's default: trunk inference and training step.

    python -m bench.allocator [--batch N] [--width W] [--quick]

The setting (pydcr.allocator.retain_freed_memory) is process-wide and cannot be undone to glibc's
pristine state, so each side runs in a worker process of its own: both build the same trunk (ours,
float32, channels_last, as training and the Embedder run it) and batch, and the parent has them
time a round in turn, so that the ratio compares rounds taken side by side. Also the peak resident
memory of one call in each (bench.harness.peak_memory_mib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from bench.harness import Report, common_args, peak_memory_mib
from bench.trunk import passes, setup
from pydcr.denormals import set_flush_denormal

SETTINGS = ("glibc_default", "retain_freed_memory")


def worker(setting: str, batch: int, width: float) -> None:
    """Answer each line `PASS time` on stdin with the milliseconds of one call of the pass, and
    `PASS memory` with its peak memory in MiB."""
    if setting == "retain_freed_memory":
        from pydcr.allocator import retain_freed_memory

        if not retain_freed_memory():
            raise SystemExit("this malloc is not glibc's: nothing to compare")
    set_flush_denormal(True)  # as training on the CPU does
    trunk, _, x, autocast = setup(torch.device("cpu"), batch, width)
    steps = passes(trunk, x, autocast)
    for step in steps.values():
        step()  # warm up
    for line in sys.stdin:
        name, what = line.split()
        if what == "memory":
            answer = peak_memory_mib(steps[name], torch.device("cpu"))
        else:
            start = time.perf_counter()
            steps[name]()
            answer = (time.perf_counter() - start) * 1e3
        print(json.dumps(answer), flush=True)


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0], malloc=False)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.batch, args.width)
    device = torch.device("cpu")
    if args.device != "cpu":
        raise SystemExit("bench.allocator measures the CPU allocator: run it with --device cpu")
    workers = {
        s: subprocess.Popen([sys.executable, "-m", "bench.allocator", "--worker", s, "--batch", str(args.batch),
                             "--width", str(args.width)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for s in SETTINGS
    }

    def ask(setting: str, request: str):
        w = workers[setting]
        w.stdin.write(request + "\n")
        w.stdin.flush()
        answer = w.stdout.readline()
        if not answer:
            raise SystemExit(f"the {setting} worker stopped (exit {w.wait()})")
        return json.loads(answer)

    report = Report("allocator", device, ["pass", "setting", "batch", "ms", "speedup_vs_default", "peak_mib"])
    rounds = 3 if args.quick else 7
    try:
        for name in ("inference", "train_step"):
            samples = {s: [] for s in SETTINGS}
            for _ in range(rounds):  # one call per round and setting, the two settings in turn
                for s in SETTINGS:
                    samples[s].append(ask(s, f"{name} time"))
            ms = {s: statistics.median(v) for s, v in samples.items()}
            for s in SETTINGS:
                report.add(**{"pass": name}, setting=s, batch=args.batch, ms=ms[s],
                           speedup_vs_default=ms["glibc_default"] / ms[s], peak_mib=ask(s, f"{name} memory"))
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    report.write(args.out, width=args.width, precision="float32", layout="channels_last")


if __name__ == "__main__":
    main()
