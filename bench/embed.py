"""End-to-end gallery embedding throughput: the Embedder against the model alone and a naive loop.

    python -m bench.embed [--device cuda] [--width W] [--batch B ...] [--images N] [--quick]

Images/s of gallery features (trunk + HR branch) for
  - model: the model alone on preloaded uint8 tensors (the upper bound),
  - pack: the Embedder reading a pack file (JPEG crops decoded in background threads),
  - files: the Embedder reading JPEG files (LFW photos aligned with their landmarks when
    $PYDCR_SHARED/data/lfw, by default ../shared/data/lfw, is present, else the demo pack's crops
    written out as JPEGs),
  - naive: read one file, align it, forward it alone, for each image,
with the ratios end-to-end / model and end-to-end / naive. Each case runs --repeats times,
interleaved with the others; its rate is the median batch's (naive: the median image's, timed in the same
rounds), so the ratios compare figures taken side by side. The model runs channels_last, and on
CUDA in bf16 autocast, as the Embedder runs it.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import torch

import pydcr
from bench.data import DEFAULT_LFW
from bench.harness import Report, common_args, parse_args, sync
from pydcr.data import PackedFaces, align, read_image, read_landmarks
from pydcr.demo import DEMO_PACK
from pydcr.embed.embedder import hr_head
from pydcr.embed.items import ItemSource
from pydcr.embed.stream import batch_ranges
from pydcr.models import DCR, BranchPair, Trunk

LFW = DEFAULT_LFW  # $PYDCR_SHARED/data/lfw, else ../shared/data/lfw beside the checkout, as bench.data and the tests
RESOLUTION = 12


def jpeg_inputs(n: int, tmp: Path) -> tuple[list[str], list | None, str]:
    """n JPEG paths, their landmarks (None for aligned crops) and what they are."""
    if (LFW / "lfw_landmark.txt").is_file():
        marks = read_landmarks(LFW / "lfw_landmark.txt")
        names = sorted(marks)[:n]
        return [str(LFW / "lfw" / k) for k in names], [marks[k] for k in names], "LFW 250x250 JPEGs, aligned by landmarks"
    faces = PackedFaces(DEMO_PACK)
    paths = []
    for i in range(n):
        path = tmp / f"{i:05d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(faces.image(i), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths, None, "112x96 aligned JPEG crops (demo pack)"


@torch.inference_mode()
def model_alone(model, preloaded: torch.Tensor, batch: int, autocast, device) -> list[float]:
    """Seconds of each batch."""
    times = []
    for x in preloaded.split(batch):
        start = time.perf_counter()
        with autocast():
            model.embed_hr(x, RESOLUTION).float().cpu()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def end_to_end(embedder, source, n: int, batch: int) -> list[float]:
    """Seconds between consecutive batches coming out of the Embedder (the first one's wait, which
    includes starting the threads, is left out: a gallery run amortises it)."""
    times, last = [], None
    for _ in embedder.stream(source, [hr_head(RESOLUTION)], ranges=batch_ranges(0, n, batch)):
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
    # On CUDA the Embedder hands back a batch once the next one is launched: the last comes at once.
    return times[:-1] if embedder.device.type == "cuda" else times


def main(argv=None) -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0, help="trunk width (default 1.0, the full Face-ResNet)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 32 64 128 256 512)")
    p.add_argument("--images", type=int, default=None, help="images per measurement (default: 4 batches)")
    p.add_argument("--workers", type=int, default=None, help="Embedder threads (default: its own)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved runs per case: images_per_s is the median batch's over all of them, "
                        "whole_run_per_s the best run's (default 3, quick 2)")
    args = parse_args(p, argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batches = args.batch or ([32, 64] if args.quick and not cuda else [64, 256] if args.quick else [32, 64, 128, 256, 512])
    torch.manual_seed(0)
    model = DCR(Trunk(width=args.width), {RESOLUTION: BranchPair(0)})
    embedder = pydcr.Embedder(model, device=device, workers=args.workers)
    model = embedder.model  # on the device, eval, channels_last
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    pack = PackedFaces(DEMO_PACK)

    report = Report("embed", device, ["input", "batch", "images", "batches_timed", "images_per_s", "vs_model",
                                      "vs_naive", "whole_run_per_s"])
    with tempfile.TemporaryDirectory() as tmp:
        most = args.images or 4 * max(batches)
        paths, marks, files_kind = jpeg_inputs(most, Path(tmp))
        print(f"# files: {files_kind}; pack: {DEMO_PACK.name} (JPEG crops); width {args.width}; "
              f"Embedder workers {embedder.workers or 'default'}")

        @torch.inference_mode()
        def naive(n: int) -> list[float]:
            times = []
            for i in range(n):
                start = time.perf_counter()
                image = read_image(paths[i])
                crop = align(image, marks[i]) if marks is not None else image
                x = torch.from_numpy(crop).permute(2, 0, 1)[None].to(device).contiguous(memory_format=torch.channels_last)
                with autocast():
                    model.embed_hr(x, RESOLUTION).float().cpu()
                times.append(time.perf_counter() - start)
            return times

        naive(2)  # warm up
        per_repeat = 8 if not cuda else 128  # naive images per repeat, timed beside the batched cases

        for batch in batches:
            n = args.images or 4 * batch
            embedder.batch_size = batch
            preloaded = torch.from_numpy(pack.images(range(n))).permute(0, 3, 1, 2).to(device)
            preloaded = preloaded.contiguous(memory_format=torch.channels_last)

            pack_source = ItemSource(pack, embedder.crop_size)
            file_source = ItemSource(paths[:n], embedder.crop_size, landmarks=marks[:n] if marks else None)
            end_to_end(embedder, file_source, 2 * batch, batch)  # warm up
            cases = {
                "model": partial(model_alone, model, preloaded, batch, autocast, device),
                "pack": partial(end_to_end, embedder, pack_source, n, batch),
                "files": partial(end_to_end, embedder, file_source, n, batch),
                "naive": partial(naive, per_repeat),
            }
            # Interleaved repeats; the rate is the median batch's, so a burst of other load on a
            # shared machine during one batch does not decide the figure.
            times = {name: [] for name in cases}
            whole = dict.fromkeys(cases, 0.0)
            for _ in range(args.repeats):
                for name, fn in cases.items():
                    start = time.perf_counter()
                    times[name] += fn()
                    whole[name] = max(whole[name], n / (time.perf_counter() - start))
            rates = {name: (1 if name == "naive" else batch) / statistics.median(t) for name, t in times.items()}
            whole["naive"] = per_repeat / sum(times["naive"]) * args.repeats
            for name, rate in rates.items():
                report.add(input=name, batch=1 if name == "naive" else batch, images=per_repeat if name == "naive" else n,
                           batches_timed=len(times[name]), images_per_s=rate, vs_model=rate / rates["model"],
                           vs_naive=rate / rates["naive"], whole_run_per_s=whole[name])
    report.write(args.out, width=args.width, files=files_kind)


if __name__ == "__main__":
    main()
