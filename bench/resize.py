"""pydcr.ops.resize against F.interpolate (the reference), forward and forward + backward.

    python -m bench.resize [--device cuda] [--quick] [--batch N]

Each row times ours and the reference in alternating rounds (bench.harness.time_interleaved).
"""

from __future__ import annotations

import torch

from bench.harness import Report, common_args, time_interleaved
from pydcr import ops, reference

CASES = [  # (N, C, H, W) -> (h, w): a batch of faces to a probe size and back, and gallery crops to 112x96
    ((256, 3, 112, 96), (12, 12)),
    ((256, 3, 12, 12), (112, 96)),
    ((256, 3, 112, 96), (40, 40)),
    ((64, 3, 250, 250), (112, 96)),
]


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="N of every case (default: each case's own, 256 or 64)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [torch.uint8, torch.float32, torch.float16 if device.type == "cuda" else torch.bfloat16]
    report = Report("resize", device, ["input", "size", "dtype", "antialias", "pass", "ours_ms", "ref_ms", "speedup"])
    min_time = 0.1 if args.quick else 0.4
    for shape, size in CASES[:2] if args.quick else CASES:
        shape = (args.batch or shape[0], *shape[1:])
        for dtype in dtypes:
            for antialias in (True, False):
                x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
                x = x if dtype == torch.uint8 else (x / 255).to(dtype)
                passes = [("fwd", x)]
                if dtype.is_floating_point:
                    passes.append(("fwd+bwd", x.clone().requires_grad_()))
                for name, inp in passes:
                    def run(fn, inp=inp, name=name):
                        y = fn(inp, size, antialias=antialias)
                        if name == "fwd+bwd":
                            y.backward(torch.ones_like(y))
                    ms = time_interleaved({"ours": lambda: run(ops.resize), "ref": lambda: run(reference.resize)},
                                          device, min_time=min_time)
                    ours, ref = ms["ours"], ms["ref"]
                    report.add(input="x".join(map(str, shape)), size="x".join(map(str, size)),
                               dtype=str(dtype).removeprefix("torch."), antialias=antialias, **{"pass": name},
                               ours_ms=ours, ref_ms=ref, speedup=ref / ours)
    report.write(args.out)


if __name__ == "__main__":
    main()
