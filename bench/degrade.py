"""pydcr.ops.degrade against the two-call torch reference, low-rank matmuls and an OpenCV loop.

    python -m bench.degrade [--device cuda] [--quick] [--batch N]

Contenders, all producing the same N x C x 112 x 96 float result:
  ours       torch.ops.pydcr.degrade, one pass
  two_call   pydcr.reference.degrade: F.interpolate down, then up (materialises the low image)
  lowrank    the strongest pure-torch form: U_h (D_h X D_w^T) U_w^T with the per-axis down (k x n)
             and up (n x k) matrices, built once per shape from F.interpolate on identity matrices
             (bench.lowrank)
  opencv     a per-image cv2.resize(INTER_CUBIC) loop down and up (antialias=False semantics;
             OpenCV has no antialiased bicubic), CPU only, uint8 and float32 rows only: OpenCV has
             no bfloat16, and timing it on a float32 copy would compare a different dtype's work
             (those rows give "-", and their JSON leaves opencv_ms and vs_opencv out, as the
             antialiased rows do)
Every row times its contenders in alternating rounds (bench.harness.time_interleaved).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from bench.harness import Report, common_args, copy_bandwidth_gbs, parse_args, time_interleaved
from bench.lowrank import LowRankDegrade
from pydcr import ops, reference


# What cv2.resize takes of the benchmark's dtypes (it has no bfloat16; float16 it does not resize).
OPENCV_DTYPES = (torch.uint8, torch.float32)


def opencv_loop(images: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(images.shape, dtype=np.float32)
    for i, img in enumerate(images):  # images: N x H x W x C
        low = cv2.resize(img, (k, k), interpolation=cv2.INTER_CUBIC)
        out[i] = cv2.resize(low, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC).reshape(out[i].shape)
    return out


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="N, images per call (default 256)")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    n = args.batch
    ks = [12] if args.quick else [6, 8, 12, 16, 20, 40]
    dtypes = [torch.uint8, torch.float32, torch.float16 if device.type == "cuda" else torch.bfloat16]
    cols = ["N", "k", "dtype", "antialias", "ours_ms", "two_call_ms", "lowrank_ms", "opencv_ms",
            "vs_two_call", "vs_lowrank", "vs_opencv"]
    peak = None
    if device.type == "cuda":
        peak = copy_bandwidth_gbs(device)
        cols += ["GB/s", "of_copy_bw"]
        print(f"# device copy bandwidth: {peak:.0f} GB/s (read + write)")
    report = Report("degrade", device, cols)
    min_time = 0.1 if args.quick else 0.4
    for k in ks:
        for dtype in dtypes:
            for antialias in (True, False):
                if args.quick and dtype == torch.uint8 and not antialias:
                    continue
                u8 = torch.randint(0, 256, (n, 3, 112, 96), dtype=torch.uint8, device=device)
                x = u8 if dtype == torch.uint8 else (u8 / 255).to(dtype)
                lowrank = LowRankDegrade(x.shape, k, antialias, torch.float32 if dtype == torch.uint8 else dtype, device)
                fns = {
                    "ours": lambda: ops.degrade(x, k, antialias=antialias),
                    "two_call": lambda: reference.degrade(x, k, antialias=antialias),
                    "lowrank": lambda: lowrank(x),
                }
                if device.type == "cpu" and not antialias and dtype in OPENCV_DTYPES:
                    hwc = x.permute(0, 2, 3, 1).contiguous().numpy()
                    fns["opencv"] = lambda: opencv_loop(hwc, k)
                ms = time_interleaved(fns, device, min_time=min_time)
                ours = ms["ours"]
                row = dict(N=n, k=k, dtype=str(dtype).removeprefix("torch."), antialias=antialias, ours_ms=ours,
                           two_call_ms=ms["two_call"], lowrank_ms=ms["lowrank"],
                           vs_two_call=ms["two_call"] / ours, vs_lowrank=ms["lowrank"] / ours)
                if "opencv" in ms:
                    row.update(opencv_ms=ms["opencv"], vs_opencv=ms["opencv"] / ours)
                if peak is not None:
                    out_bytes = x.numel() * (4 if dtype == torch.uint8 else x.element_size())
                    gbs = (x.numel() * x.element_size() + out_bytes) / (ours * 1e-3) / 1e9
                    row.update(**{"GB/s": gbs, "of_copy_bw": gbs / peak})
                report.add(**row)
    report.write(args.out, copy_bandwidth_gbs=peak)


if __name__ == "__main__":
    main()
