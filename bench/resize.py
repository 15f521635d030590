"""pydcr.ops.resize against F.interpolate (the reference) and low-rank matmuls, forward and forward + backward.

    python -m bench.resize [--device cuda] [--quick] [--batch N]

Contenders, all producing the same N x C x h x w result (checked before timing):
  ours       pydcr.ops.resize
  ref        pydcr.reference.resize: F.interpolate(mode="bicubic")
  lowrank    the strongest pure-torch form: M_h X M_w^T with each axis's resize matrix, built once
             per shape from F.interpolate on identity matrices (bench.lowrank); its backward is
             autograd's, two more matrix products
Each row times its contenders in alternating rounds (bench.harness.time_interleaved).
"""

from __future__ import annotations

import torch

from bench.harness import Report, common_args, parse_args, time_interleaved
from bench.lowrank import LowRankResize
from pydcr import ops, reference

CASES = [  # (N, C, H, W) -> (h, w): a batch of faces to a probe size and back, to the trunk's 40x40, gallery crops to 112x96
    ((256, 3, 112, 96), (12, 12)),
    ((256, 3, 12, 12), (112, 96)),
    ((256, 3, 112, 96), (40, 40)),
    ((64, 3, 250, 250), (112, 96)),
]


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="N of every case (default: each case's own, 256 or 64)")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    dtypes = [torch.uint8, torch.float32, torch.float16 if device.type == "cuda" else torch.bfloat16]
    report = Report("resize", device, ["input", "size", "dtype", "antialias", "pass", "ours_ms", "ref_ms", "lowrank_ms",
                                       "speedup", "vs_lowrank"])
    min_time = 0.1 if args.quick else 0.4
    for shape, size in CASES[:2] if args.quick else CASES:
        shape = (args.batch or shape[0], *shape[1:])
        for dtype in dtypes:
            for antialias in (True, False):
                x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
                x = x if dtype == torch.uint8 else (x / 255).to(dtype)
                lowrank = LowRankResize(shape, size, antialias, torch.float32 if dtype == torch.uint8 else dtype,
                                        device)
                contenders = {"ours": lambda x, s, antialias: ops.resize(x, s, antialias=antialias),
                              "ref": lambda x, s, antialias: reference.resize(x, s, antialias=antialias),
                              "lowrank": lambda x, s, antialias: lowrank(x)}
                _check_agree(contenders, x, size, antialias)
                passes = [("fwd", x)]
                if dtype.is_floating_point:
                    passes.append(("fwd+bwd", x.clone().requires_grad_()))
                for name, inp in passes:
                    def run(fn, inp=inp, name=name):
                        y = fn(inp, size, antialias)
                        if name == "fwd+bwd":
                            y.backward(torch.ones_like(y))
                    ms = time_interleaved({k: (lambda fn=fn: run(fn)) for k, fn in contenders.items()}, device,
                                          min_time=min_time)
                    ours = ms["ours"]
                    report.add(input="x".join(map(str, shape)), size="x".join(map(str, size)),
                               dtype=str(dtype).removeprefix("torch."), antialias=antialias, **{"pass": name},
                               ours_ms=ours, ref_ms=ms["ref"], lowrank_ms=ms["lowrank"], speedup=ms["ref"] / ours,
                               vs_lowrank=ms["lowrank"] / ours)
    report.write(args.out)


def _check_agree(contenders, x, size, antialias) -> None:
    """Every contender computes the same resize (to the input type's precision), or the timing means nothing."""
    want = reference.resize(x.double(), size, antialias=antialias)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    tol = {torch.bfloat16: 3e-2, torch.float16: 3e-3}.get(x.dtype, 1e-4) * scale
    for name, fn in contenders.items():
        got = fn(x, size, antialias).double()
        if not torch.allclose(got, want, atol=tol, rtol=0):
            raise AssertionError(f"bench.resize: {name} differs from the reference by "
                                 f"{(got - want).abs().max().item():.3g} (> {tol:.3g})")


if __name__ == "__main__":
    main()
