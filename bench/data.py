"""The face data path on real LFW images: decode + align, MTCNN, packing and packed reads, in images/s.

    python -m bench.data [--lfw PATH] [--images N] [--quick] [--device cuda]

Rows (each timed in this process, best of two passes over the same images):
  decode+align  naive_pil: one thread, PIL decode + align; naive_cv: one thread, read_image + align;
                ours: FaceDataset items (read_image + align) on a thread pool, one thread per core
  mtcnn         detect one image at a time; detect_batch of 16 (equal-size images share P-Net); with
                one torch thread and with all (workers = torch threads); vs_naive: over detect, 1 thread
  pack          pydcr.data.pack to a JPEG pack (decode, align, encode, write), all cores
  read          PackedFaces: a plain loop over faces.image(i), and face_loader (batches of 64) with
                0 and 2 worker processes (their start-up included), against the naive
                loop (the same crops decoded and aligned from the original files, one at a time)
vs_naive is images/s over the naive OpenCV loop of the same task.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.harness import Report, common_args, parse_args
from pydcr.data import LFW, MTCNN, FaceDataset, PackedFaces, align, face_loader, pack, read_image

DEFAULT_LFW = (
    Path(os.environ.get("PYDCR_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data" / "lfw"
)


def images_per_s(fn, n: int, passes: int = 2) -> float:
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def naive_pil(data: LFW, indices) -> None:
    from PIL import Image

    for i in indices:
        with Image.open(data.path(i)) as im:
            align(np.asarray(im.convert("RGB")), data.landmarks_of(i))


def naive_cv(data: LFW, indices) -> None:
    for i in indices:
        align(read_image(data.path(i)), data.landmarks_of(i))


def threaded(data: LFW, indices, workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(data.__getitem__, indices, chunksize=16):
            pass


def read_pack(faces: PackedFaces, workers: int) -> None:
    for _ in face_loader(faces, 64, shuffle=False, workers=workers, pin_memory=False):
        pass


def main(argv=None) -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW root (with lfw/ and lfw_landmark.txt)")
    parser.add_argument("--images", type=int, default=None,
                        help="LFW images for the decode, pack and read rows (default 2000, with --quick 400)")
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    n = args.images if args.images is not None else 400 if args.quick else 2000  # --images wins over --quick
    data = LFW(args.lfw, pairs=None)
    indices = [i for i in range(0, len(data), max(1, len(data) // n)) if data.landmarks_of(i) is not None][:n]
    cores = os.cpu_count() or 1
    report = Report("data", device, ["task", "contender", "workers", "images", "img_per_s", "vs_naive"])

    naive_cv(data, indices[:20])  # warm the page cache and the libraries
    base = images_per_s(lambda: naive_cv(data, indices), len(indices))
    if importlib.util.find_spec("PIL") is not None:
        r = images_per_s(lambda: naive_pil(data, indices), len(indices))
        report.add(
            task="decode+align", contender="naive_pil", workers=1, images=len(indices), img_per_s=r, vs_naive=r / base
        )
    report.add(task="decode+align", contender="naive_cv", workers=1, images=len(indices), img_per_s=base, vs_naive=1.0)
    r = images_per_s(lambda: threaded(data, indices, cores), len(indices))
    report.add(
        task="decode+align", contender="ours", workers=cores, images=len(indices), img_per_s=r, vs_naive=r / base
    )

    m = min(len(indices), 50 if args.quick else 200)
    images = [read_image(data.path(i)) for i in indices[:m]]
    one = None
    for threads in sorted({1, torch.get_num_threads()}):  # the default (1) and torch's own setting
        detector = MTCNN(device, threads=threads)
        detector.detect_batch(images[:16])
        r = images_per_s(lambda: [detector.detect(im) for im in images], m)
        one = one or r
        report.add(task="mtcnn", contender="detect", workers=threads, images=m, img_per_s=r, vs_naive=r / one)
        r = images_per_s(lambda: [detector.detect_batch(images[k : k + 16]) for k in range(0, m, 16)], m)
        report.add(task="mtcnn", contender="detect_batch16", workers=threads, images=m, img_per_s=r, vs_naive=r / one)

    subset = FaceDataset(
        data.image_root, [data.paths[i] for i in indices], data.labels[indices], data.classes, data.landmarks
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lfw.pack"
        r = images_per_s(lambda: pack(subset, out, workers=cores, resume=False, progress=False), len(indices))
        report.add(task="pack", contender="ours", workers=cores, images=len(indices), img_per_s=r, vs_naive=r / base)
        faces = PackedFaces(out)
        r = images_per_s(lambda: [faces.image(i) for i in range(len(faces))], len(faces))
        report.add(task="read", contender="packed_loop", workers=1, images=len(faces), img_per_s=r, vs_naive=r / base)
        for workers in (0, 2):
            read_pack(faces, workers)
            r = images_per_s(lambda: read_pack(faces, workers), len(faces))
            report.add(
                task="read", contender="packed", workers=workers, images=len(faces), img_per_s=r, vs_naive=r / base
            )
        size_mib = out.stat().st_size / 2**20
    print(f"# pack of {len(indices)} LFW faces: {size_mib:.1f} MiB (JPEG quality 90)")
    report.write(args.out, lfw=str(args.lfw), pack_mib=size_mib)


if __name__ == "__main__":
    main()
