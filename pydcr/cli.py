"""The ``pydcr`` command (also ``python -m pydcr``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .allocator import retain_freed_memory
from .cli_embed import add_embed_parsers
from .cli_eval import add_eval_parser
from .cli_reproduce import add_reproduce_parser
from .cli_train import (UsageError, add_train_parser, check_out, check_out_folder, check_out_of_images,
                        check_positive, device_or_default, landmark_list, not_written, reading, usage_errors)


def _info(args: argparse.Namespace) -> int:
    import pydcr

    info = pydcr.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    del info["torch"]  # the same as torch_built, shown once
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(f"sm_{v}" if key == "cuda_archs" else str(v) for v in value) or "-"
        print(f"{key:<{width}}  {value}")
    return 0


def _version() -> str:
    """The installed distribution's version, read without loading the compiled extension."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pydcr")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pydcr", description="Deep Coupled ResNet for low-resolution faces",
        epilog="A bad argument exits with status 2, an unusable input (a damaged file, say) with 1, each with a "
               "one-line message; set PYDCR_DEBUG=1 for the Python traceback instead.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="how pydcr was built and what it runs with")
    info.add_argument("--json", action="store_true", help="print as JSON (default: one 'key  value' line each)")
    info.set_defaults(func=_info)
    _add_pack(sub)
    _add_align(sub)
    _add_demo(sub)
    add_train_parser(sub)
    add_reproduce_parser(sub)
    add_eval_parser(sub)
    add_embed_parsers(sub)
    return parser


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="train a small DCR on the bundled faces and compare it with its trunk",
        description="Trains a small DCR (a quarter-width trunk on 56x48 crops, then branch pairs for 8, 12, 16 "
                    "and 20) on four fifths of the people of the bundled LFW faces and tests it on the other "
                    "fifth: 10-fold verification, each pair's first face the HR gallery and the second "
                    "degraded to k x k, the trunk alone against DCR. Writes the model, report.md, report.json "
                    "and the plots to --out; a stopped demo resumes.")
    p.add_argument("--out", type=Path, default=Path("pydcr-demo"), help="output folder (default: ./pydcr-demo)")
    p.add_argument("--preset", default="demo", help="training preset (default: demo)")
    p.add_argument("--epochs", type=int, default=None, help="trunk epochs (default: the preset's)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pydcr.demo import run_demo
    from pydcr.train import PRESETS
    from pydcr.train.checkpoint import OtherRunError

    if args.preset not in PRESETS:
        print(f"pydcr demo: unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    check_positive(args, "epochs")
    check_out_folder(args.out)
    try:
        result = run_demo(args.out, preset=args.preset, epochs=args.epochs, device=device_or_default(args.device),
                          progress=not args.quiet)
    except OtherRunError as err:  # refused before any step: the --out is the mistake
        raise UsageError(str(err)) from None
    return 0 if result else 130  # stopped by a signal: the same command resumes


def _dataset_args(p: argparse.ArgumentParser) -> None:
    from pydcr.data.datasets import LAYOUTS

    p.add_argument("src", type=Path, help="dataset root")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="lfw (ROOT/lfw/<Name>/...), folder (ROOT/<identity>/...), flat (ROOT/<image>, no "
                        "identities), scface, or auto (default)")
    p.add_argument("--workers", type=int, default=None, help="threads (default: one per CPU core)")
    p.add_argument("--device", default=None, help="where MTCNN runs (default: cuda if available)")
    p.add_argument("--fresh", action="store_true", help="start over (default: resume an interrupted run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="align a dataset's faces into one pack file")
    _dataset_args(p)
    p.add_argument("out", type=Path, help="the pack file to write")
    p.add_argument("--size", type=int, nargs=2, default=(112, 96), metavar=("H", "W"),
                   help="crop size (default 112 96)")
    p.add_argument("--landmarks", type=Path, default=None, metavar="LIST",
                   help="landmark list, paths relative to the image root (default: none; for LFW its "
                        "lfw_landmark.txt)")
    p.add_argument("--format", choices=("jpeg", "png", "raw"), default="jpeg", help="crop encoding (default jpeg)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--detect", action="store_true",
                   help="find the landmarks of unlisted images with MTCNN (default: off, they are skipped)")
    p.set_defaults(func=_pack)


def _open_source(args: argparse.Namespace, landmarks: Path | None = None, size=(112, 96)):
    """The dataset under args.src; a missing folder or landmark list, or no image, is a usage error."""
    from pydcr.data import open_dataset
    from pydcr.data.datasets import MixedLayoutError

    if not args.src.is_dir():
        raise UsageError(f"no such dataset folder: {args.src}")
    found = landmark_list(landmarks, args.src)  # messages name it as it was given
    check_positive(args, "workers")
    # where the dataset may look for its landmark list (LFW's own by default)
    listed = landmarks or Path("lfw_landmark.txt")
    check_out(args.out, listed, args.src / listed, args.src / "lfw" / listed)
    with reading(landmarks or "the landmark list"), usage_errors(MixedLayoutError):
        dataset = open_dataset(args.src, args.layout, found, size)
    if len(dataset) == 0:
        raise UsageError(f"no images under {args.src} in the {args.layout} layout (see --layout)")
    check_out_of_images(args.out, dataset)  # not over a source image
    return dataset


def _pack(args: argparse.Namespace) -> int:
    from pydcr.data import MTCNN, PackedFaces, pack
    from pydcr.data.packed import NothingPacked

    if min(args.size) <= 0:
        raise UsageError(f"--size must be positive, got {' '.join(map(str, args.size))}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1-100, got {args.quality}")
    dataset = _open_source(args, args.landmarks, args.size)
    detector = MTCNN(device_or_default(args.device)) if args.detect else None
    existed = args.out.exists()
    try:  # as embed and identify: a pack of no face is a failure, and an earlier pack is kept
        out = pack(dataset, args.out, format=args.format, quality=args.quality, workers=args.workers,
                   detector=detector, resume=not args.fresh, progress=not args.quiet, allow_empty=False)
    except NothingPacked as nothing:
        skipped, out = nothing.skipped, None
    else:
        with PackedFaces(out) as faces:
            # a flat folder's images have no identity (identities are subfolders, or LFW's names)
            identities = len(set(faces.labels.tolist()) - {-1})
            whose = f"of {identities} identities" if faces.classes else "without identities (a flat folder)"
            print(f"{out}: {len(faces)} faces {whose}, {out.stat().st_size / 2**20:.1f} MiB, "
                  f"{faces.format} {faces.size[0]}x{faces.size[1]}")
            skipped = faces.skipped
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    unmarked = sum(reason == "no landmarks" for _, reason in skipped)
    if unmarked:
        how = ("are not in the landmark list: add them (pydcr align writes a list), or give --detect"
               if dataset.landmarks is not None else
               "have no landmarks: give --landmarks LIST (pydcr align writes one) or --detect")
        print(f"pydcr pack: {unmarked} of {len(dataset)} images {how}", file=sys.stderr)
    if out is None:
        print(f"pydcr pack: no face could be packed from {args.src} (every image skipped, listed above); "
              f"{not_written(args.out, existed)}", file=sys.stderr)
        return 1
    return 0


def _add_align(sub) -> None:
    p = sub.add_parser("align", help="find five landmarks per image with MTCNN and write a landmark list")
    _dataset_args(p)
    p.add_argument("out", type=Path, help="the landmark list to write (path<TAB>x1<TAB>y1 ... x5<TAB>y5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per detector call (default 16)")
    p.add_argument("--min-face-size", type=float, default=20.0, help="smallest face searched for, pixels (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for MTCNN (default 1)")
    p.set_defaults(func=_align)


def _align(args: argparse.Namespace) -> int:
    from pydcr.data import MTCNN
    from pydcr.data.mtcnn import NothingAligned, detect_landmarks

    check_positive(args, "batch_size", "threads")
    if args.min_face_size < 12:  # P-Net's window: MTCNN finds no smaller face
        raise UsageError(f"--min-face-size must be at least 12 pixels, got {args.min_face_size:g}")
    dataset = _open_source(args)
    detector = MTCNN(device_or_default(args.device), min_face_size=args.min_face_size, threads=args.threads)
    unreadable: dict[str, str] = {}
    existed = args.out.exists()
    try:
        missing = detect_landmarks(dataset, args.out, detector=detector, batch_size=args.batch_size,
                                   workers=args.workers, resume=not args.fresh, progress=not args.quiet,
                                   unreadable=unreadable, allow_empty=False)
    except NothingAligned as nothing:
        _list_missing(nothing.missing, unreadable)
        print(f"pydcr align: no face found in {args.src} (every image listed above); "
              f"{not_written(args.out, existed)}", file=sys.stderr)
        return 1
    print(f"{args.out}: landmarks of {len(dataset) - len(missing)} of {len(dataset)} images")
    _list_missing(missing, unreadable)
    return 0


def _list_missing(missing: list[str], unreadable: dict[str, str]) -> None:
    for path in missing:
        if path in unreadable:
            print(f"unreadable: {path}: {unreadable[path]}", file=sys.stderr)
        else:
            print(f"no face: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The command is the whole process: let CPU tensors reuse freed memory instead of paging it in
    # anew at every step (pydcr.allocator).
    retain_freed_memory()
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed stdout shows here, not at exit where it cannot be caught
        return status
    except BrokenPipeError:  # the reader of stdout went away (`pydcr info --json | head -3`): not an error here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except KeyboardInterrupt:  # where a command has no stop of its own (e.g. step 2): nothing is half-written
        print(f"pydcr {args.command}: interrupted (outputs are written whole, so none is left half-written)",
              file=sys.stderr)
        return 130
    except UsageError as err:
        print(f"pydcr {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError) as err:  # an unusable input (CorruptPackError is a ValueError)
        if os.environ.get("PYDCR_DEBUG", "") not in ("", "0"):
            raise
        print(f"pydcr {args.command}: {_input_error(err)}", file=sys.stderr)
        return 1


def _input_error(err: Exception) -> str:
    """One line for an input error the command let through."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = message.strip().splitlines() or [type(err).__name__]
    # a DataLoader worker's error carries its traceback: the last line says what went wrong
    return lines[-1] if len(lines) > 1 and lines[1].startswith("Original Traceback") else lines[0]


if __name__ == "__main__":
    sys.exit(main())
