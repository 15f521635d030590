"""`pydcr embed`, `pydcr identify` and `pydcr verify`: galleries, probe search and one-pair checks."""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

from ._files import NamedWrites, atomic_write
from .cli_train import (UsageError, add_amp_argument, check_out, check_out_of_images, check_positive,
                        check_probe_sizes, device_or_default, landmark_list, load_model, not_written,
                        one_layout_only, reading)

PACK_MAGIC = b"PYDCRPK1"
MAX_SHARDS = 65536
#: The reason given for an image that is not an aligned crop, in the command's words (see ItemSource).
ALIGN_ADVICE = ("give --landmarks LIST or --detect to align it",
                "it is not in the landmark list: add it, or use --detect (without --landmarks) to align it")


def add_embed_parsers(sub) -> None:
    e = sub.add_parser("embed", help="embed a gallery of faces into one file (resumable; shards merge)",
                       description="Embed INPUT (a folder, a list file of paths, or a pack) with MODEL into "
                                   "the gallery file --out; or, with --merge, join the shard files of a "
                                   "multi-process run into --out. A finished --out made from the same input "
                                   "and settings is kept as it is (--fresh embeds again).")
    e.add_argument("model", type=Path, nargs="?", help="model file (pydcr.models.save)")
    e.add_argument("input", type=Path, nargs="?",
                   help="folder of images (one folder per identity, or flat), list file (path[<TAB>identity] "
                        "per line), or pack file")
    e.add_argument("--out", type=Path, required=True, help="the gallery file to write (.safetensors)")
    e.add_argument("--merge", type=Path, nargs="+", metavar="SHARD", help="join these shard files into --out")
    e.add_argument("--dtype", choices=("float16", "float32"), default=None, help="stored features (default float16)")
    e.add_argument("--resolution", type=int, nargs="+", default=None,
                   help="branch pairs whose HR features to store (default: all; the trunk's for a model without pairs)")
    e.add_argument("--trunk", action="store_true", help="store trunk features only (default: the pairs' HR features)")
    e.add_argument("--chunk-size", type=int, default=4096, help="images per resumable chunk (default 4096)")
    e.add_argument("--flip", action="store_true",
                   help="store each face's feature plus its mirror image's; identify then embeds probes the "
                        "same way (default: off)")
    e.add_argument("--shard", default=None, metavar="RANK/WORLD",
                   help="embed this process's share of the input into its own shard file; 'auto' reads "
                        "RANK and WORLD_SIZE (set by torchrun) (default: one process embeds it all)")
    e.add_argument("--fresh", action="store_true",
                   help="start over (default: resume an interrupted run, keep a finished one)")
    _common(e, probes=False)
    e.set_defaults(func=run_embed)

    i = sub.add_parser("identify", help="top-k gallery matches of low-resolution probes, to CSV")
    i.add_argument("model", type=Path, help="model file (the one that embedded the gallery)")
    i.add_argument("--gallery", type=Path, required=True, help="gallery file (pydcr embed)")
    i.add_argument("--probes", type=Path, required=True, help="folder, list file or pack of probe faces")
    i.add_argument("--size", type=int, default=None,
                   help="probe resolution k (default: a small crop's own size, else estimated per face)")
    i.add_argument("--top-k", type=int, default=5, help="matches per probe (default 5)")
    i.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                   help="exact torch matmul (default) or faiss IndexFlatIP")
    i.add_argument("--out", type=Path, required=True, help="results CSV")
    _common(i, probes=True)
    i.set_defaults(func=run_identify)

    v = sub.add_parser("verify", help="cosine score of one gallery image and one probe")
    v.add_argument("model", type=Path, help="model file")
    v.add_argument("image_a", type=Path, help="the high-resolution (gallery) image")
    v.add_argument("image_b", type=Path, help="the low-resolution (probe) image")
    v.add_argument("--size", type=int, default=None,
                   help="probe resolution k (default: a small crop's own size, else estimated)")
    v.add_argument("--threshold", type=float, default=None,
                   help="also say same / different at this score (default: the score only)")
    _alignment(v, probes=True, lfw=False)
    v.add_argument("--device", default=None, help="default: cuda when available")
    add_amp_argument(v, "the model")
    v.set_defaults(func=run_verify)


def _alignment(p: argparse.ArgumentParser, *, probes: bool, lfw: bool = True) -> None:
    default = "none, or an LFW root's lfw_landmark.txt" if lfw else "none"
    p.add_argument("--landmarks", type=Path, default=None, metavar="LIST",
                   help=f"five-point landmark list (pydcr align) to align the images with (default: {default})")
    small = "; probes smaller than the model's input are taken as they are" if probes else ""
    p.add_argument("--detect", action="store_true",
                   help="align each image that is not an aligned crop on the face MTCNN finds nearest its centre "
                        f"(default: off, such images need --landmarks){small}")


def _common(p: argparse.ArgumentParser, *, probes: bool) -> None:
    _alignment(p, probes=probes)
    p.add_argument("--batch-size", type=int, default=None, help="faces per forward (default 256 on CUDA, 64 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="decode / align threads (default: half the cores, <= 8)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    add_amp_argument(p, "the model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------
# Shared pieces


def _embedder(args: argparse.Namespace):
    from .embed import Embedder

    device = device_or_default(args.device)
    model = load_model(args.model)
    try:
        return Embedder(model, device=device, batch_size=getattr(args, "batch_size", None), amp=args.amp,
                        workers=getattr(args, "workers", None))
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None


def _detector(args: argparse.Namespace, embedder):
    if not args.detect:
        return None
    if args.landmarks is not None:
        raise UsageError("give --landmarks or --detect, not both")
    from .data import MTCNN

    return MTCNN(embedder.device, threads=None)


def open_input(path: Path, crop_size, landmarks: Path | None):
    """A folder, list file or pack as a dataset (or PackedFaces), and a description for the metadata."""
    from .data import CorruptPackError, FlatFolder, PackedFaces, open_dataset
    from .data.datasets import IMAGE_EXTENSIONS

    if path.is_dir():
        found = landmark_list(landmarks, path)  # messages name it as it was given
        with reading(landmarks or "the landmark list"), one_layout_only():
            dataset = open_dataset(path, "auto", found, crop_size)
        return dataset, {"source": str(path), "kind": "flat folder" if isinstance(dataset, FlatFolder) else "folder"}
    if not path.is_file():
        raise UsageError(f"no such input folder, list or pack: {path}")
    with open(path, "rb") as f:
        magic = f.read(len(PACK_MAGIC))
    if magic == PACK_MAGIC:
        if landmarks is not None:
            raise UsageError(f"{path} is a pack of aligned crops: --landmarks does not apply")
        try:
            return PackedFaces(path), {"source": str(path), "kind": "pack"}
        except CorruptPackError as err:
            raise UsageError(str(err)) from None
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise UsageError(f"{path} is one image: give a folder, a list file of paths or a pack")
    return _list_file(path, crop_size, landmark_list(landmarks, path.parent)), {"source": str(path), "kind": "list"}


def _list_file(path: Path, crop_size, landmarks):
    """``path`` or ``path<TAB>identity`` per line; relative paths are taken from the list's folder."""
    from .data import FaceDataset

    try:
        # -sig: a byte-order mark is not part of the first path; lines end at "\n" (or "\r\n") only,
        # as a file name may hold other line breaks (newline="": no translation of a lone "\r")
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    except UnicodeDecodeError:
        raise UsageError(f"{path} is neither a pack nor a text list of image paths") from None
    paths, names = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise UsageError(f"{path}:{number}: expected 'path' or 'path<TAB>identity', got {len(fields)} fields")
        paths.append(fields[0])
        names.append(fields[1] if len(fields) == 2 else None)
    classes = sorted({n for n in names if n is not None})
    label = {n: i for i, n in enumerate(classes)}
    labels = [label[n] if n is not None else -1 for n in names]
    marks = _match_landmarks(landmarks, paths) if landmarks is not None else None
    return FaceDataset(path.parent, paths, labels, classes, marks, crop_size)


def _match_landmarks(path: Path, images: list) -> dict:
    """Each listed image's landmarks from a list keyed by paths relative to some dataset root: the
    key that is the longest tail of the image's path ("Name/Name_0001.jpg" for ".../lfw/Name/Name_0001.jpg")."""
    from .data import read_landmarks

    with reading(path):
        table = read_landmarks(path)
    out = {}
    for image in images:
        parts = Path(image).parts
        for k in range(len(parts)):
            key = Path(*parts[k:]).as_posix()
            if key in table:
                out[image] = table[key]
                break
    return out


def _source(embedder, args, *, allow_small: bool = False, input_path: Path, out: Path):
    """The images at input_path to embed; a UsageError when there are none or `out` is one of them."""
    from .embed import ItemSource

    items, description = open_input(input_path, embedder.crop_size, args.landmarks)
    if len(items) == 0:
        raise UsageError(f"no images in {input_path}")
    check_out_of_images(out, items)
    return ItemSource(items, embedder.crop_size, detector=_detector(args, embedder), allow_small=allow_small,
                      advice=ALIGN_ADVICE), description


def _report_failures(command: str, failures, total: int) -> None:
    for name, reason in failures:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if failures:
        print(f"pydcr {command}: {len(failures)} of {total} inputs skipped (listed above)", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# embed


def _shard(spec: str | None):
    from .embed import Shard

    if spec is None:
        return None
    if spec == "auto":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise UsageError("--shard auto reads RANK and WORLD_SIZE (run under torchrun), which are not set")
        rank, world = os.environ["RANK"], os.environ["WORLD_SIZE"]
    else:
        rank, _, world = spec.partition("/")
    try:
        shard = Shard(int(rank), int(world))
    except ValueError:
        raise UsageError(f"--shard must be RANK/WORLD with 0 <= RANK < WORLD, or auto; got {spec!r}") from None
    if shard.world > MAX_SHARDS:  # a typo: --merge would look for that many files
        raise UsageError(f"--shard WORLD must be at most {MAX_SHARDS}, got {shard.world}")
    return shard


def run_embed(args: argparse.Namespace) -> int:
    from .embed import Gallery, complete_gallery, embed_gallery, merge_shards
    from .embed.embedder import TRUNK, hr_head
    from .embed.gallery import NothingEmbedded, work_folder

    if args.merge:
        if args.model is not None or args.input is not None:
            raise UsageError("--merge joins shard files: give no MODEL or INPUT with it")
        settings = {"--dtype": args.dtype is not None, "--resolution": args.resolution is not None,
                    "--trunk": args.trunk, "--shard": args.shard is not None, "--fresh": args.fresh}
        given = [flag for flag, on in settings.items() if on]
        if given:  # the shards were embedded with their own settings, which the merge keeps
            raise UsageError(f"--merge joins shard files as they were embedded, so {', '.join(given)} cannot apply")
        for p in args.merge:
            if not p.is_file():
                raise UsageError(f"no such shard file: {p}")
        check_out(args.out, *args.merge)
        try:
            shards = [Gallery(p) for p in args.merge]
            # shards that hold no face make no gallery, nor replace an earlier one (other mistakes: merge_shards)
            if all("shard" in g.meta for g in shards) and not any(len(g) for g in shards):
                failures = [f for g in shards for f in g.failures]
                _report_failures("embed", failures, len(failures))
                print(f"pydcr embed: the shards hold no face; {not_written(args.out, args.out.exists())}",
                      file=sys.stderr)
                return 1
            out = merge_shards(args.merge, args.out)
        except ValueError as err:
            raise UsageError(str(err)) from None
        print(f"{out}: {len(Gallery(out))} faces from {len(args.merge)} shards")
        return 0
    if args.model is None or args.input is None:
        raise UsageError("give MODEL and INPUT (or --merge SHARD...)")
    check_positive(args, "batch_size", "workers", "chunk_size")
    args.dtype = args.dtype or "float16"
    shard = _shard(args.shard)
    target = shard.path(args.out) if shard else args.out
    check_out(target, args.model, args.input, args.landmarks)
    try:
        work_folder(target)
    except ValueError as err:
        raise UsageError(str(err)) from None
    embedder = _embedder(args)
    model = embedder.model
    if args.trunk and args.resolution:
        raise UsageError("give --trunk or --resolution, not both")
    heads = None
    if args.trunk:
        heads = [TRUNK]
    elif args.resolution:
        unknown = [k for k in args.resolution if k not in model.resolutions]
        if unknown:
            raise UsageError(f"the model has no branch pair for {unknown}; it has {model.resolutions}")
        heads = [hr_head(k) for k in args.resolution]
    source, description = _source(embedder, args, input_path=args.input, out=target)
    plan = dict(heads=heads, dtype=args.dtype, chunk_size=args.chunk_size, shard=shard, flip=args.flip)
    done = None if args.fresh else complete_gallery(embedder, source, args.out, **plan)
    if done is not None:
        skipped = f", {len(done.failures)} inputs skipped" if done.failures else ""
        print(f"{done.path}: already complete ({len(done)} faces{skipped}) from the same input and settings; "
              "nothing embedded (--fresh embeds again)")
        return 0
    try:
        about = {**description, "model_file": args.model.name}
        # an empty shard is still needed by --merge; an empty gallery replaces no earlier one
        out = embed_gallery(embedder, source, args.out, **plan, description=about, resume=not args.fresh,
                            progress=not args.quiet, allow_empty=shard is not None)
    except KeyboardInterrupt:
        print("pydcr embed: interrupted; the same command resumes from the last finished chunk", file=sys.stderr)
        return 130
    except NothingEmbedded as nothing:
        _report_failures("embed", nothing.skipped, len(nothing.skipped))
        print(f"pydcr embed: no face could be embedded from {args.input}; {not_written(target, target.exists())}",
              file=sys.stderr)
        return 1
    gallery = Gallery(out)
    _report_failures("embed", gallery.failures, len(gallery) + len(gallery.failures))
    print(f"{out}: {len(gallery)} faces, {', '.join(gallery.heads)} features ({args.dtype})")
    return 0


# ----------------------------------------------------------------------------------------------
# identify


def run_identify(args: argparse.Namespace) -> int:
    from .embed import Gallery, make_index, model_identity
    from .embed.embedder import LR, TRUNK, hr_head
    from .embed.search import import_faiss

    check_positive(args, "size", "top_k", "batch_size", "workers")
    if not args.gallery.is_file():
        raise UsageError(f"no such gallery file: {args.gallery}")
    check_out(args.out, args.model, args.gallery, args.probes, args.landmarks)
    if args.backend == "faiss":
        try:
            import_faiss()
        except ImportError as err:
            raise UsageError(str(err)) from None
    embedder = _embedder(args)
    if args.size is not None:
        check_probe_sizes("--size", [args.size], embedder.model.trunk.input_size, str(args.model))
    try:
        gallery = Gallery(args.gallery)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if gallery.model != model_identity(embedder.model):
        raise UsageError(f"{args.gallery} was embedded by a different model than {args.model} (model identity "
                         f"{gallery.model[:12]}... vs {model_identity(embedder.model)[:12]}...): embed the gallery "
                         "again with this model")
    if len(gallery) == 0:
        raise UsageError(f"{args.gallery} holds no faces")
    trunk_only = gallery.heads == [TRUNK]
    if trunk_only and args.size is not None:  # probes match through the trunk, which takes no size
        if not embedder.model.resolutions:
            raise UsageError(f"{args.model} has no branch pairs: --size does not apply")
        raise UsageError(f"{args.gallery} holds trunk features only: --size does not apply (embed the gallery "
                         "without --trunk to match probes through a branch pair)")
    if not trunk_only and args.size is not None:
        r = embedder.model.nearest_resolution(args.size)
        if hr_head(r) not in gallery.heads:
            raise UsageError(f"probes at {args.size} go through pair {r}, but {args.gallery} holds {gallery.heads}")
    source, _ = _source(embedder, args, allow_small=True, input_path=args.probes, out=args.out)
    device = embedder.device if args.backend == "torch" else "cpu"
    indexes: dict[str, object] = {}

    def index_of(head: str):
        if head not in indexes:
            if head not in gallery.heads:
                raise UsageError(f"a probe routes to {head}, but {args.gallery} holds only {gallery.heads}: "
                                 "embed the gallery for every pair, or give --size")
            if gallery.dims[head] != embedder.head_dim(head):  # an edited file: its model identity agrees
                raise UsageError(f"{args.gallery}: features.{head} are {gallery.dims[head]}-d, but {args.model} gives "
                                 f"{embedder.head_dim(head)}-d features; embed the gallery again")
            index = make_index(args.backend, device)
            try:
                for start in range(0, len(gallery), 65536):
                    index.add(gallery.features(head, start, start + 65536))
            except ValueError as err:  # e.g. NaN rows, which would top every list
                raise UsageError(f"{args.gallery}, {head}: {err}; embed the gallery again") from None
            indexes[head] = index
        return indexes[head]

    from .data._progress import progress_bar

    bar = progress_bar(len(source), 0, "identify", not args.quiet)
    failures, matched = [], 0
    existed = args.out.exists()
    try:  # a run that stops or matches nothing leaves no half-written file, and an earlier one as it was
        with atomic_write(args.out) as tmp:
            # surrogateescape: a file name that is not UTF-8 is written as the bytes it has on disk
            with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
                written = NamedWrites(f, args.out)  # not the gallery's or a probe's read errors
                writer = csv.writer(written)
                writer.writerow(["probe", "probe_identity", "resolution", "rank", "gallery_row", "gallery",
                                 "gallery_identity", "score"])
                head = TRUNK if trunk_only else LR
                # probes are embedded as the gallery was: with the mirror image's feature added or not
                for batch in embedder.stream(source, [head], size=args.size, flip=gallery.meta.get("flip", False)):
                    failures += [(source.names[i], reason) for i, reason in batch.failures]
                    bar.update(batch.size)
                    matched += _write_matches(writer, batch, head, index_of, source, gallery, args.top_k)
                written.flush()
            bar.close()
            _report_failures("identify", failures, len(source))
            if not matched:
                raise _NothingMatched
    except _NothingMatched:
        print(f"pydcr identify: no face could be embedded from {args.probes}; {not_written(args.out, existed)}",
              file=sys.stderr)
        return 1
    print(f"{args.out}: top-{min(args.top_k, len(gallery))} matches of {matched} probes in a gallery of {len(gallery)}")
    return 0


class _NothingMatched(Exception):
    """No probe was embedded: the results file is not published."""


def _write_matches(writer, batch, head: str, index_of, source, gallery, top_k: int) -> int:
    """The results rows of one batch of probes: each probe's top-k in the gallery features of the
    pair it routed to (the trunk's when `head` is the trunk). Returns the number of probes."""
    from .embed.embedder import TRUNK, hr_head

    routes = batch.routes if batch.routes is not None else [0] * len(batch.index)
    for r in sorted({int(r) for r in routes}):
        rows = [j for j, rj in enumerate(routes) if rj == r]
        scores, hits = index_of(TRUNK if head == TRUNK else hr_head(r)).search(batch.features[head][rows], top_k)
        for j, s_row, h_row in zip(rows, scores.tolist(), hits.tolist()):
            item = int(batch.index[j])
            for rank, (s, g) in enumerate(zip(s_row, h_row), 1):
                writer.writerow([source.names[item], _identity(source, item), r or "", rank,
                                 g, gallery.paths[g], gallery.identity(g), f"{s:.6f}"])
    return len(batch.index)


def _identity(source, item: int) -> str:
    if source.labels is None or not 0 <= source.labels[item] < len(source.classes):
        return ""
    return source.classes[source.labels[item]]


# ----------------------------------------------------------------------------------------------
# verify


def run_verify(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from .embed import ItemSource
    from .embed.embedder import TRUNK, hr_head

    check_positive(args, "size")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise UsageError(f"--threshold must be a finite score, got {args.threshold}")
    for p in (args.image_a, args.image_b):
        if not p.is_file():
            raise UsageError(f"no such image file: {p}")
    embedder = _embedder(args)
    if args.size is not None:
        check_probe_sizes("--size", [args.size], embedder.model.trunk.input_size, str(args.model))
    detector = _detector(args, embedder)
    marks_a, marks_b = _pair_landmarks(args.landmarks, [args.image_a, args.image_b])
    model = embedder.model
    if not model.resolutions and args.size is not None:  # the trunk takes no size
        raise UsageError(f"{args.model} has no branch pairs: --size does not apply")

    def one(image: Path, marks, *, probe: bool):
        return ItemSource([image], embedder.crop_size, landmarks=marks, detector=detector, allow_small=probe,
                          advice=ALIGN_ADVICE)

    if model.resolutions:
        b = embedder.embed_lr(one(args.image_b, marks_b, probe=True), args.size)
        if b.failures:
            return _unusable(*b.failures[0])
        resolution = int(b.resolutions[0])
        a = embedder.embed_hr(one(args.image_a, marks_a, probe=False), resolution)
        head = hr_head(resolution)
    else:
        head, resolution = TRUNK, None
        b = embedder.embed_trunk(one(args.image_b, marks_b, probe=True))
        if b.failures:
            return _unusable(*b.failures[0])
        a = embedder.embed_trunk(one(args.image_a, marks_a, probe=True))
    if a.failures:
        return _unusable(*a.failures[0])
    score = float(F.cosine_similarity(a.features[:1], b.features[:1]).item())
    via = f"pair {resolution}" if resolution is not None else "trunk"
    line = f"cosine {score:.4f} ({head} vs probe through {via})"
    if args.threshold is not None:
        line += f": {'same' if score >= args.threshold else 'different'} at threshold {args.threshold:g}"
    print(line)
    return 0


def _unusable(name: str, reason: str) -> int:
    """An image given as an argument that cannot be used (unreadable, no face, not aligned): exit 2,
    as for a missing one."""
    print(f"pydcr verify: cannot use {name}: {reason}", file=sys.stderr)
    return 2


def _pair_landmarks(path: Path | None, images: list[Path]):
    """Per image, [its landmarks] (or [None]: none listed), from a list keyed by dataset-relative paths."""
    if path is None:
        return [None] * len(images)
    if not path.is_file():
        raise UsageError(f"no such landmark list: {path}")
    table = _match_landmarks(path, [str(p) for p in images])
    return [[table.get(str(p))] for p in images]
