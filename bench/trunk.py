"""The Face-ResNet trunk on the fused ops against its eager twin: inference and training step.

    python -m bench.trunk [--device cuda] [--batch N] [--width W] [--compile] [--quick] [--host] [--bf16] [--nchw]

Images/s for forward (no grad) and a training step (forward + backward of the features' sum, no
optimizer), ours vs the eager twin (nn.Conv2d / nn.PReLU / add, same weights), timed in alternating
rounds (denormals flushed on the CPU, as in training), and with --compile
also torch.compile of each. Both models run channels_last, as training and the Embedder run them
(--nchw adds both in NCHW to the same rounds), in bf16 autocast on CUDA and float32 on the CPU
(--bf16: bf16 autocast, as the Embedder's amp); peak memory per step.

--host times the per-call cost instead of the arithmetic: a trunk so small (width 0.0625, 36 x 36
faces, batch 1; one thread on the CPU) that what remains is dispatch, allocation, autograd and, on
a GPU, kernel launches, about 90 op calls per forward; the fastest of 25 rounds, not the median.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from bench.harness import Report, common_args, parse_args, peak_memory_mib, time_interleaved
from pydcr.denormals import set_flush_denormal
from pydcr.models import Trunk


# The --host case: every layer still runs, on a few hundred values each.
HOST_CASE = {"width": 0.0625, "input_size": (36, 36), "batch": 1}


def setup(device: torch.device, batch: int | None, width: float, input_size: tuple[int, int] = (112, 96),
          bf16: bool | None = None):
    """The trunk, its eager twin with the same weights, a uint8 batch in their layout, and the
    autocast to run them in: bf16 (default on CUDA, where the batch defaults to 256) or float32
    (default on the CPU, batch 32)."""
    cuda = device.type == "cuda"
    bf16 = cuda if bf16 is None else bf16
    torch.manual_seed(0)
    ours = Trunk(width=width, input_size=input_size).to(device)
    eager = ours.eager_twin()
    ours, eager = ours.to(memory_format=torch.channels_last), eager.to(memory_format=torch.channels_last)
    shape = (batch or (256 if cuda else 32), 3, *input_size)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device).contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    return ours, eager, x, autocast


def passes(model, x: torch.Tensor, autocast) -> dict:
    """The two timed passes of `model` on batch `x`, under `autocast`: inference (no gradients) and
    a training step (forward, then backward of the features' sum; no optimizer)."""

    def inference():
        with torch.no_grad(), autocast():
            model(x)

    def train_step():
        with autocast():
            loss = model(x).float().sum()
        loss.backward()

    return {"inference": inference, "train_step": train_step}


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of both")
    p.add_argument("--host", action="store_true", help="per-call host cost: width 0.0625, 36x36, batch 1 (--batch and --width are not used)")
    p.add_argument("--bf16", action="store_true", help="on the CPU: bf16 autocast (CUDA always is)")
    p.add_argument("--nchw", action="store_true", help="also time both models in NCHW")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    case = HOST_CASE if args.host else {"width": args.width, "input_size": (112, 96), "batch": args.batch}
    if args.host and device.type == "cpu":
        torch.set_num_threads(1)  # nothing to share out at this size; threads only add noise
    bf16 = args.bf16 or device.type == "cuda"
    ours, eager, x, autocast = setup(device, case["batch"], case["width"], case["input_size"], bf16)
    batch = len(x)
    if device.type == "cpu":  # as training on the CPU does (pydcr.train): denormal values stall both sides
        set_flush_denormal(True)

    # Each contender: a model and the batch in its layout.
    contenders = {"ours": (ours, x), "eager": (eager, x)}
    if args.compile:
        contenders["ours_compiled"] = (torch.compile(ours), x)
        contenders["eager_compiled"] = (torch.compile(eager), x)
    if args.nchw:
        nchw = torch.contiguous_format
        x_nchw = x.contiguous(memory_format=nchw)
        contenders["ours_nchw"] = (copy.deepcopy(ours).to(memory_format=nchw), x_nchw)
        contenders["eager_nchw"] = (copy.deepcopy(eager).to(memory_format=nchw), x_nchw)

    columns = ["pass", "model", "batch", "ms", "images_per_s", "speedup_vs_eager", "peak_mib"]
    name = ("trunk-host" if args.host else "trunk") + ("-bf16" if args.bf16 and device.type == "cpu" else "")
    report = Report(name, device, columns)
    min_time = 0.5 if args.quick else 2.0
    for name in ("inference", "train_step"):
        runnable, failures = {}, {}
        for label, (model, inputs) in contenders.items():
            step = passes(model, inputs, autocast)[name]
            try:
                step()
                runnable[label] = step
            except Exception as err:  # torch.compile may not work everywhere: report it, don't hide it
                failures[label] = f"failed: {type(err).__name__}"
        if args.host:  # sub-millisecond calls: many short rounds, the fastest (noise only adds)
            times = time_interleaved(runnable, device, min_time=min_time, repeats=25, statistic=min)
        else:
            times = time_interleaved(runnable, device, min_time=min_time, repeats=3 if args.quick else 5)
        for label in contenders:
            row = {"pass": name, "model": label, "batch": batch}
            if label in failures:
                report.add(**row, ms=failures[label])
                continue
            report.add(**row, ms=times[label], images_per_s=batch / times[label] * 1e3,
                       speedup_vs_eager=times["eager"] / times[label], peak_mib=peak_memory_mib(runnable[label], device))
    report.write(args.out, width=case["width"], input_size=list(case["input_size"]),
                 precision="bf16 autocast" if bf16 else "float32",
                 layout="channels_last; the _nchw rows NCHW" if args.nchw else "channels_last")


if __name__ == "__main__":
    main()
