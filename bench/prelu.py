"""pydcr.ops.prelu and prelu_pool against eager and compiled PReLU + add / + max-pool, and
ResidualUnit stacks against their eager twin.

    python -m bench.prelu [--device cuda] [--quick] [--no-compile] [--half] [--op-batch N] [--stack-batch N]

Op rows, forward and forward + backward (the gradients of every input via torch.autograd.grad,
so nothing accumulates):
  ours      prelu at the trunk's activation shapes (batch 64): torch.ops.pydcr.prelu /
            prelu_backward, one pass each way; prelu_pool at the shapes the trunk pools (batch
            32): torch.ops.pydcr.prelu_pool / prelu_pool_backward
  eager     pydcr.reference.prelu: F.prelu(x + b.view(1, -1, 1, 1), w) + r, and
            pydcr.reference.prelu_pool: F.max_pool2d(F.prelu(x + b...), 2, 2, ceil_mode=True)
  compiled  torch.compile of the eager formula (inductor), the strong baseline, forward +
            backward only; "n/a" when it fails to compile (or with --no-compile)
Call rows: the cost of one call where the arithmetic is negligible (2 x 8 x 6 x 6), which on a GPU
is the host's time per layer: ours (the Python API, whose eager calls take an autograd.Function
or, without gradients, go straight to the kernels), "registered" (torch.ops.pydcr.*, through the
gradient registered with torch.library, as torch.compile and export see it) and eager.
Stack rows: each trunk stage's residual units (1, 2, 5 and 3 units at 64, 128, 256 and 512
channels) as pydcr.nn.ResidualUnit against reference.ResidualUnit with the same weights,
forward + backward. Each row also gives the peak memory of one call, in MiB
(bench.harness.peak_memory_mib: the caching allocator's on CUDA, resident memory on a Linux CPU).
"""

from __future__ import annotations

import torch

from bench.harness import Report, common_args, parse_args, peak_memory_mib, time_interleaved
from pydcr import nn, ops, reference

TRUNK = [(64, 54, 46), (128, 26, 22), (256, 12, 10), (512, 5, 4)]
POOLED = [(64, 108, 92), (128, 52, 44), (256, 24, 20), (512, 10, 8)]  # what the trunk's 4 pools take
# op name: (ours, eager twin, shapes (C, H, W), batch, whether it takes a residual)
OPS = {
    "prelu": (ops.prelu, reference.prelu, TRUNK, 64, True),
    "prelu_pool": (ops.prelu_pool, reference.prelu_pool, POOLED, 32, False),
}
STAGES = [(64, 54, 46, 1), (128, 26, 22, 2), (256, 12, 10, 5), (512, 5, 4, 3)]


def fwd_bwd(fn, inputs, grad):
    """One training step's worth of fn: forward, then the gradients of every input."""
    def step():
        y = fn(*inputs)
        return torch.autograd.grad(y, inputs, grad)
    return step


def compiled(fn):
    torch._dynamo.reset()  # a fresh cache per case: the cases would pass dynamo's recompile limit
    return torch.compile(fn, dynamic=False)


def timed(fns: dict, device, min_time: float) -> dict:
    """Median ms per call of each contender (bench.harness.time_interleaved, 9 rounds). A
    "compiled" contender that fails (to compile) is left out and reported, not raised."""
    if "compiled" in fns:
        try:
            fns["compiled"]()  # compiles here, so that a failure is seen before any timing
        except Exception as err:  # noqa: BLE001 - a failed baseline is reported as n/a
            print(f"# compiled baseline failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            fns = {name: fn for name, fn in fns.items() if name != "compiled"}
    return time_interleaved(fns, device, min_time=min_time, repeats=9)


def compiled_columns(ms: dict, attempted: bool) -> dict:
    """compiled_ms and vs_compiled: "n/a" when compilation failed or was skipped, "-" when not timed."""
    if not attempted:
        return {"compiled_ms": "-", "vs_compiled": "-"}
    if ms.get("compiled") is None:
        return {"compiled_ms": "n/a", "vs_compiled": "n/a"}
    return {"compiled_ms": ms["compiled"], "vs_compiled": ms["compiled"] / ms["ours"]}


def bench_ops(report, device, dtypes, layouts, passes, compile_baseline, min_time, quick, op_batch=None):
    for op_name, (op, twin, shapes, batch, with_residual) in OPS.items():
        batch = op_batch or batch
        for c, h, w in shapes[:1] if quick else shapes:
            for dtype in dtypes:
                for layout in layouts:
                    g = torch.Generator(device=device).manual_seed(0)
                    x = torch.randn(batch, c, h, w, device=device, dtype=dtype, generator=g)
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    slope = torch.full((c,), 0.25, device=device, dtype=dtype)
                    bias = torch.randn(c, device=device, dtype=dtype, generator=g)
                    inputs = (x, slope, bias) + ((torch.randn_like(x),) if with_residual else ())
                    grad = torch.randn_like(op(*inputs))
                    baseline = compiled(twin) if compile_baseline else None
                    for name in passes:
                        if name == "fwd":
                            fns = {"ours": lambda: op(*inputs), "eager": lambda: twin(*inputs)}
                        else:
                            args = tuple(t.detach().clone().requires_grad_() for t in inputs)
                            fns = {"ours": fwd_bwd(op, args, grad), "eager": fwd_bwd(twin, args, grad)}
                            if baseline:
                                fns["compiled"] = fwd_bwd(baseline, args, grad)
                        ms = timed(fns, device, min_time)
                        row = dict(kind=op_name, shape=f"{batch}x{c}x{h}x{w}", dtype=str(dtype).removeprefix("torch."),
                                   layout=layout, **{"pass": name}, ours_ms=ms["ours"], eager_ms=ms["eager"],
                                   vs_eager=ms["eager"] / ms["ours"], **compiled_columns(ms, name == "fwd+bwd"))
                        row.update(ours_MiB=peak_memory_mib(fns["ours"], device),
                                   eager_MiB=peak_memory_mib(fns["eager"], device))
                        if ms.get("compiled") is not None:
                            row.update(compiled_MiB=peak_memory_mib(fns["compiled"], device))
                        report.add(**row)


def bench_calls(report, device, min_time):
    for op_name, (op, twin, _, _, with_residual) in OPS.items():
        registered = getattr(torch.ops.pydcr, op_name).default
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(2, 8, 6, 6, device=device, generator=g)
        inputs = (x, torch.full((8,), 0.25, device=device), torch.randn(8, device=device, generator=g))
        inputs += (torch.randn_like(x),) if with_residual else ()
        grad = torch.randn_like(op(*inputs))
        args = tuple(t.detach().clone().requires_grad_() for t in inputs)
        for name in ("fwd", "fwd+bwd"):
            fns = {}
            for label, fn in (("ours", op), ("registered", registered), ("eager", twin)):
                if name == "fwd":
                    fns[label] = lambda fn=fn: fn(*inputs)
                else:
                    fns[label] = lambda fn=fn: torch.autograd.grad(fn(*args), args, grad)
            ms = timed(fns, device, min_time)
            report.add(kind=f"{op_name} call", shape="2x8x6x6", dtype="float32", layout="contiguous",
                       **{"pass": name}, ours_ms=ms["ours"], eager_ms=ms["eager"], registered_ms=ms["registered"],
                       vs_eager=ms["eager"] / ms["ours"], vs_registered=ms["registered"] / ms["ours"],
                       **compiled_columns(ms, False))


def bench_stacks(report, device, batch, layouts, min_time, stages):
    for c, h, w, units in stages:
        torch.manual_seed(0)
        eager = torch.nn.Sequential(*[reference.ResidualUnit(c) for _ in range(units)]).to(device)
        ours = torch.nn.Sequential(*[nn.ResidualUnit(c) for _ in range(units)]).to(device)
        ours.load_state_dict(eager.state_dict())
        for layout in layouts:
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            eager, ours = eager.to(memory_format=fmt), ours.to(memory_format=fmt)
            x = torch.randn(batch, c, h, w, device=device).contiguous(memory_format=fmt).requires_grad_()
            grad = torch.randn_like(x)
            fns = {}
            for name, model in (("ours", ours), ("eager", eager)):
                inputs = (x, *model.parameters())
                fns[name] = fwd_bwd(lambda x, *_, m=model: m(x), inputs, grad)
            ms = timed(fns, device, min_time)
            row = dict(kind="stack", shape=f"{batch}x{c}x{h}x{w} x{units}", dtype="float32", layout=layout,
                       **{"pass": "fwd+bwd"}, ours_ms=ms["ours"], eager_ms=ms["eager"], vs_eager=ms["eager"] / ms["ours"],
                       **compiled_columns(ms, False))
            row.update(ours_MiB=peak_memory_mib(fns["ours"], device), eager_MiB=peak_memory_mib(fns["eager"], device))
            report.add(**row)


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--half", action="store_true", help="also time bfloat16 and float16 (autocast's types)")
    p.add_argument("--op-batch", type=int, default=None,
                   help="batch of the op rows (default: the trunk's, 64 for prelu and 32 for prelu_pool)")
    p.add_argument("--stack-batch", type=int, default=None,
                   help="batch of the ResidualUnit stacks (default: 64 on CUDA, 8 on CPU)")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cols = ["kind", "shape", "dtype", "layout", "pass", "ours_ms", "eager_ms", "compiled_ms", "vs_eager", "vs_compiled",
            "registered_ms", "vs_registered", "ours_MiB", "eager_MiB", "compiled_MiB"]
    report = Report("prelu", device, cols)
    min_time = 0.1 if args.quick else 0.5
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if args.half else [])
    layouts = ["contiguous", "channels_last"]
    bench_ops(report, device, dtypes, layouts, ["fwd", "fwd+bwd"], not args.no_compile, min_time, args.quick,
              args.op_batch)
    bench_calls(report, device, min_time)
    batch = args.stack_batch or (64 if cuda else 8)
    stack_layouts = layouts if cuda else ["contiguous"]
    bench_stacks(report, device, batch, stack_layouts, min_time, STAGES[:2] if args.quick else STAGES)
    report.write(args.out)


if __name__ == "__main__":
    main()
