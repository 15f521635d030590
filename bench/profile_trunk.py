"""Where a trunk training step (or inference) spends its time: the top kernels of ours and of the eager twin.

    python -m bench.profile_trunk [--device cuda] [--batch N] [--width W] [--rows 12] [--bf16] [--inference]

A companion to bench.trunk (which gives the ratio): torch.profiler over a few steps, self time per
op or kernel on the device, ours and eager (and with --compile torch.compile of the eager twin)
printed one after the other, with each one's device time per step beside its wall-clock time per
step. On a GPU, device time well under wall time means the host (Python, dispatch, launches) is
what limits the step, not the kernels.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from bench.harness import common_args, parse_args, sync, time_ms
from bench.trunk import passes, setup
from pydcr._machine import describe, machine


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--rows", type=int, default=12, help="ops shown per model")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--compile", action="store_true", help="also profile torch.compile of the eager twin")
    p.add_argument("--bf16", action="store_true", help="on the CPU: bf16 autocast (CUDA always is)")
    p.add_argument("--inference", action="store_true", help="profile inference instead of a training step")
    args = parse_args(p, argv)
    pass_name = "inference" if args.inference else "train_step"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    ours, eager, x, autocast = setup(device, args.batch, args.width, bf16=args.bf16 or cuda)
    batch = len(x)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"# trunk {pass_name} profile on {describe(machine(device))}, batch {batch}, width {args.width}")

    contenders = {"ours": ours, "eager": eager}
    if args.compile:
        contenders["eager_compiled"] = torch.compile(eager)
    for name, model in contenders.items():
        step = passes(model, x, autocast)[pass_name]
        for _ in range(2):  # warm up: cuDNN autotuning, allocator, compilation
            step()
        sync(device)
        wall = time_ms(step, device, min_time=1.0, repeats=3)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            sync(device)
        events = prof.key_averages()
        total = sum(getattr(e, "self_device_time_total" if cuda else "self_cpu_time_total") for e in events)
        print(f"\n## {name}: {total / 1e3 / args.steps:.2f} ms of {'device' if cuda else 'CPU'} time per step, "
              f"{wall:.2f} ms wall-clock per step")
        print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
