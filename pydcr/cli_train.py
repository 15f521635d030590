"""`pydcr train trunk` and `pydcr train branch`: the two training steps from the command line.

`pydcr train trunk` also runs data parallel under torchrun
(``torchrun --nproc_per_node=N -m pydcr train trunk ...``): one process per GPU (or N CPU processes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path


class UsageError(Exception):
    """A bad argument: reported on stderr, exit status 2."""


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a DCR model: the trunk (step 1), then branch pairs (step 2)")
    steps = p.add_subparsers(dest="step", required=True)
    t = steps.add_parser("trunk", help="step 1: the trunk on multi-resolution faces")
    t.add_argument("--data", type=Path, required=True, help="a pack file (pydcr pack) or a dataset folder")
    t.add_argument("--out", type=Path, required=True, help="run folder; a run stopped there resumes")
    t.add_argument("--width", type=float, default=None, help="trunk width (default: the preset's)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="images per batch, over all processes under torchrun (default: the preset's)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write the per-epoch figures as TensorBoard scalars in OUT/tensorboard")
    add_antialias_argument(t)
    _common(t, "paper, cpu, small or demo (default: cpu)")
    t.set_defaults(func=run_trunk)
    b = steps.add_parser("branch", help="step 2: branch pairs on the frozen trunk, added to its model file")
    b.add_argument("--trunk", type=Path, required=True, help="the run folder of step 1, or a model file")
    b.add_argument("--data", type=Path, required=True, help="the faces to train on (as for step 1)")
    b.add_argument("--size", type=int, nargs="+", required=True, help="low resolutions k (one pair per k)")
    _common(b, "paper, cpu, small or demo (default: the preset the trunk was trained with, as its model "
               "records it; else cpu)")
    b.set_defaults(func=run_branch)


def _common(p: argparse.ArgumentParser, preset_help: str) -> None:
    p.add_argument("--preset", default=None, help=preset_help)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    add_amp_argument(p, "the trunk's forward passes")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_amp_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what} in bfloat16 autocast (default: on CUDA only; on a CPU it pays where the "
                        "processor has bfloat16 arithmetic, AMX or AVX512-BF16)")


def add_antialias_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=None,
                   help="the bicubic convention of the degraded training copies, recorded in the model: "
                        "antialiased a = -0.5 (PIL, MATLAB imresize; the default) or, with --no-antialias, "
                        "a = -0.75 without widening (torch's default bicubic, OpenCV INTER_CUBIC)")


def preset_named(name: str):
    """The preset called `name`, or a UsageError naming the choices."""
    from .train import get_preset

    try:
        return get_preset(name)
    except KeyError as err:
        raise UsageError(err.args[0]) from None


def trained_preset(model, sizes=()) -> str:
    """The preset `model`'s pairs for `sizes` were trained with where they agree, else its trunk's,
    as its provenance records them; cpu where it records none this version knows."""
    from .train import PRESETS

    provenance = model.provenance
    pairs = {(provenance.get("branches") or {}).get(str(k), {}).get("preset") for k in sizes}
    recorded = [*(pairs if len(pairs) == 1 else ()), provenance.get("preset")]
    return next((name for name in recorded if name in PRESETS), "cpu")


def check_lfw_root(root: Path) -> None:
    """A UsageError unless root holds LFW's images and View 2 pairs."""
    if not (root / "pairs.txt").is_file() or not (root / "lfw").is_dir():
        raise UsageError(f"{root} is not an LFW root: it needs lfw/ and pairs.txt")


def view2_folds(option: str, folds: list[int]) -> list[int]:
    """The 1-10 fold numbers of an option as 0-based indices, or a UsageError (at least two folds)."""
    if len(set(folds)) < 2 or not all(1 <= f <= 10 for f in folds):
        raise UsageError(f"{option} must name at least two folds in 1-10, got {folds}")
    return [f - 1 for f in folds]


def check_folds_exist(option: str, folds: list[int], lfw) -> None:
    """A UsageError when 0-based `folds` name a fold lfw's pairs file does not have (a short
    pairs file of one's own), numbered as the command line numbers them."""
    count = lfw.pairs.num_folds if lfw.pairs is not None else 0
    if folds and max(folds) >= count:
        raise UsageError(f"{option} {' '.join(str(f + 1) for f in folds)}: {lfw.root / 'pairs.txt'} has "
                         f"{count} folds (1-{count})")


def device_or_default(name: str | None) -> str:
    """The --device to run on (default: cuda when available), or a UsageError for one torch cannot use."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device: give cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # torch knows more device types; pydcr's kernels run on these
        raise UsageError(f"--device {name}: pydcr runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return name


def landmark_list(given: Path | None, root: Path) -> Path | None:
    """The --landmarks file to read: as given from the current folder, else under the dataset root
    (LFW keeps its list there); a UsageError when neither holds it."""
    if given is None:
        return None
    if given.is_file():  # absolute only where the dataset would find another of its name under its root first
        shadow = root / given
        return given.absolute() if shadow.is_file() and not shadow.samefile(given) else given
    if not given.is_absolute() and (root / given).is_file():
        return root / given
    raise UsageError(f"no such landmark list: {given}")


def check_seed(args: argparse.Namespace, low: int = -(2**31) + 1) -> None:
    """A UsageError for a --seed outside what the shuffling and flip generators take (numpy's, as
    for the SCface split, take no negative one: low=0)."""
    if not low <= args.seed < 2**31:
        raise UsageError(f"--seed must be within {'0 to 2**31 - 1' if low == 0 else '+-2**31'}, got {args.seed}")


# Counts (batch sizes, epochs, workers) above this are typos: loaders and index ranges refuse them
# with messages that name no option.
MAX_COUNT = 2**31


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """A UsageError for any of the named options that is given and not positive (or, a count,
    not below MAX_COUNT)."""
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if isinstance(value, int) and value >= MAX_COUNT:
            raise UsageError(f"--{name.replace('_', '-')} must be below 2**31, got {value}")


# Files written beside OUT before it is published: OUT.tmp (pydcr._files.atomic_write, every output)
# and OUT.partial (a resumable pack or landmark list).
WORK_SUFFIXES = (".tmp", ".partial")


def check_out(out: Path, *inputs: Path | None) -> None:
    """A UsageError when the output file cannot be written, or it, or a working file written
    beside it (WORK_SUFFIXES), is an input file (writing would destroy it)."""
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"cannot write {out}: it is a folder; give a file name")
    written = [out, *(out.with_name(out.name + suffix) for suffix in WORK_SUFFIXES)]
    targets = {p: p.stat() for p in written if p.exists()}  # once: the inputs may be every image of a dataset
    if not targets:
        return
    for path in inputs:
        if path is None:
            continue
        try:
            stat = os.stat(path)
        except OSError:  # not there: nothing to destroy
            continue
        for target, target_stat in targets.items():
            if os.path.samestat(target_stat, stat):
                what = "it" if target == out else f"{target.name}, which it writes first,"
                raise UsageError(f"cannot write {out}: {what} is the input {path}, which writing would destroy")


def not_written(out: Path, earlier: bool) -> str:
    """How a run that produced nothing ends its message: OUT not written, and any `earlier` file there kept."""
    return f"{out} not written" + (" (the file already there is left as it was)" if earlier else "")


def check_out_folder(out: Path) -> None:
    """A UsageError when the output folder `out` is a file, or cannot be made: a file where one of
    its parents should be (found now, not after the work)."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} is a file: give a folder")
        return
    ancestor = next(p for p in out.resolve().parents if p.exists())
    if not ancestor.is_dir():
        raise UsageError(f"cannot make the folder {out}: {ancestor} is a file, not a folder")


def check_out_of_images(out: Path, dataset) -> None:
    """check_out against every image a folder or list dataset reads (a pack's crops are in the pack)."""
    from .data import FaceDataset

    if isinstance(dataset, FaceDataset):
        check_out(out, *(dataset.path(i) for i in range(len(dataset))))


@contextmanager
def usage_errors(*kinds: type[Exception]):
    """Errors of these kinds, raised inside, as usage errors (exit 2): the arguments can mend them."""
    try:
        yield
    except kinds as err:
        raise UsageError(str(err)) from None


def check_probe_sizes(flag: str, sizes, input_size: tuple[int, int], whose: str) -> None:
    """A UsageError for a probe resolution above the input's longer side: that would be an upscaled
    face, not a low-resolution one. The longer side itself is SCface's full-size pair (112 for
    112x96, docs/training.md)."""
    h, w = input_size
    if max(sizes) > max(h, w):
        raise UsageError(f"{flag} {max(sizes)} is larger than {whose}'s {h}x{w} input: give resolutions up "
                         f"to {max(h, w)}")


@contextmanager
def one_layout_only():
    """For commands that read folders in the auto layout only (no --layout): a folder of loose
    images beside identity folders is refused with the ways out they have."""
    from .data.datasets import MixedLayoutError

    try:
        yield
    except MixedLayoutError as err:
        raise UsageError(f"{err.root} holds images and folders of images, and this command reads one kind only: "
                         "move the loose images into a folder of their own, or give a pack of the ones wanted "
                         f"(`pydcr pack {err.root} OUT --layout folder`, or `--layout flat` for the loose "
                         "images)") from None


@contextmanager
def reading(path: Path | str):
    """Names `path` in a decoding error raised while reading it: the codec's message names no file."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason})") from None


def load_model(path: Path):
    """The model file at path, or a UsageError naming what it is instead."""
    from .data.packed import MAGIC
    from .models import load

    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            raise UsageError(f"{path} is a pack of faces, not a model file")
    try:
        return load(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _faces(path: Path, size: tuple[int, int], takes: str = "the preset trains on",
           advice: str = "pack the faces at that size or choose another preset"):
    """The training faces: a pack, or a dataset folder aligned on the fly; crops must be `size`
    (else a refusal naming what `takes` them, with `advice`)."""
    from .data import CorruptPackError, PackedFaces, open_dataset

    if path.is_file():
        try:
            faces = PackedFaces(path)
        except CorruptPackError as err:
            raise UsageError(str(err)) from None
    elif path.is_dir():
        with one_layout_only():
            faces = open_dataset(path, size=size)
        unaligned = [p for i, p in enumerate(faces.paths) if faces.landmarks_of(i) is None]
        if unaligned:  # found now, not at the first such crop of a run already started
            raise UsageError(f"{len(unaligned)} of {len(faces)} images under {path} have no landmarks "
                             f"(first: {unaligned[0]}): pack the faces with `pydcr pack --landmarks` or "
                             "`--detect` and train on the pack")
    else:
        raise UsageError(f"no such pack file or dataset folder: {path}")
    if tuple(faces.size) != tuple(size):
        raise UsageError(f"{path} holds {faces.size[0]}x{faces.size[1]} crops; {takes} {size[0]}x{size[1]}: {advice}")
    if len(faces) == 0:
        raise UsageError(f"{path} holds no faces")
    if not faces.classes:
        raise UsageError(f"{path} holds no identities: training needs one folder per person (ROOT/<identity>/<image>)")
    return faces, len(faces.classes)


def _torchrun_world():
    from .train import distributed

    try:
        return distributed.from_environment()
    except ValueError as err:
        raise UsageError(str(err)) from None


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 (load in this process) or more, got {args.workers}")


def run_trunk(args: argparse.Namespace) -> int:
    from .train import distributed

    world = _torchrun_world()
    args.preset = args.preset or "cpu"
    preset = preset_named(args.preset)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("width", args.width), ("batch_size", args.batch_size))
                 if v is not None}
    for key, value in overrides.items():
        count = isinstance(value, int)
        if not 0 < value < (MAX_COUNT if count else math.inf):
            raise UsageError(f"--{key.replace('_', '-')} must be positive and {'below 2**31' if count else 'finite'}, "
                             f"got {value}")
    if args.antialias is not None:
        overrides["antialias"] = args.antialias
    _check_workers(args)
    check_seed(args)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file: give the run folder (step 1 writes its checkpoint and "
                         "model.safetensors there)")
    check_out_folder(args.out)
    if (args.out / "model.safetensors").exists() and not (args.out / "checkpoint.pt").exists():
        # no run here to resume or keep: the new trunk would replace a model (and its pairs) it did not make
        raise UsageError(f"{args.out / 'model.safetensors'} exists, but no run to resume ({args.out / 'checkpoint.pt'} "
                         "is gone): use another --out, or move the model away")
    device = device_or_default(args.device)
    config = replace(preset.trunk, **overrides)
    if args.tensorboard:
        from .train.metrics_log import summary_writer_class

        try:
            summary_writer_class()
        except ImportError as err:
            raise UsageError(str(err)) from None
    faces, classes = _faces(args.data, config.input_size)
    if world is None:
        return _train_and_save(args, config, faces, classes, device)
    if config.batch_size % world.size:
        raise UsageError(f"a batch of {config.batch_size} images does not split over {world.size} processes: "
                         "give a --batch-size that is a multiple of --nproc_per_node")
    try:
        device = distributed.local_device(world, device)
    except ValueError as err:
        raise UsageError(str(err)) from None
    with distributed.process_group(world, device):
        return _train_and_save(args, config, faces, classes, device, world)


def _train_and_save(args, config, faces, classes, device, world=None) -> int:
    """Train, and on rank 0 write the model file; every rank returns the same status."""
    from .models import DCR, save
    from .models.people import people_record
    from .train import train_trunk
    from .train.checkpoint import OtherRunError

    main = world is None or world.is_main
    try:
        run = train_trunk(faces, classes, config, args.out, device=device, seed=args.seed, num_workers=args.workers,
                          progress=not args.quiet, tensorboard=args.tensorboard, amp=args.amp)
    except OtherRunError as err:  # refused before any step: the --out is the mistake
        raise UsageError(str(err)) from None
    if not run.finished:
        if main:
            print(f"pydcr train trunk: stopped; the same command resumes from {args.out}", file=sys.stderr)
        return 130
    if main:
        path = args.out / "model.safetensors"
        if _holds_trunk(path, run.trunk):
            # A rerun of a finished run: the file may hold step 2's pairs by now, trained on this trunk.
            print(f"pydcr train trunk: {path} (the run was already complete; the file is kept as it is)")
            return 0
        path = save(DCR(run.trunk, antialias=config.antialias), path, provenance={
            "data": str(args.data), "preset": args.preset, "trunk": config.to_dict(), "seed": args.seed,
            "processes": 1 if world is None else world.size, "command": " ".join(sys.argv),
            "people": people_record(faces.classes)})
        print(f"pydcr train trunk: {path}")
    return 0


def _holds_trunk(path: Path, trunk) -> bool:
    """Whether the model file at path holds exactly this trunk's weights."""
    import torch

    from .models import load

    try:
        saved = load(path).trunk.state_dict()
    except (OSError, ValueError):  # absent or unreadable: written afresh
        return False
    mine = trunk.state_dict()
    return saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k].cpu()) for k in mine)


def run_branch(args: argparse.Namespace) -> int:
    import torch

    from ._machine import use_amp
    from .models import save
    from .models.people import people_record
    from .train import train_branches

    world = _torchrun_world()
    if world is not None and world.size > 1:
        raise UsageError("branch training runs in one process (seconds on cached trunk features): "
                         "run it without torchrun")
    if args.preset is not None:
        preset_named(args.preset)  # an unknown name is refused before the model is read
    if any(k <= 0 for k in args.size):
        raise UsageError(f"--size must be positive resolutions, got {args.size}")
    sizes = list(dict.fromkeys(args.size))  # one pair per resolution, however often it is named
    check_positive(args, "epochs")
    _check_workers(args)
    check_seed(args)
    device = device_or_default(args.device)
    path = args.trunk / "model.safetensors" if args.trunk.is_dir() else args.trunk
    if not path.is_file():
        if args.trunk.is_dir() and (args.trunk / "checkpoint.pt").is_file():
            raise UsageError(f"the trunk run in {args.trunk} has not finished: run its `pydcr train trunk` command "
                             "again to resume it, then train the pairs")
        raise UsageError(f"no trained model at {path}: run `pydcr train trunk` first")
    model = load_model(path)
    # Pairs sized for the trunk they sit on: a paper trunk gets the paper's 512-d pairs, not cpu's 256-d.
    args.preset = args.preset or trained_preset(model)
    preset = preset_named(args.preset)
    config = preset.branch if args.epochs is None else replace(preset.branch, epochs=args.epochs)
    check_probe_sizes("--size", sizes, model.trunk.input_size, str(path))
    _check_pair_dim(model, sizes, config.dim, args.preset, path)
    faces, classes = _faces(args.data, model.trunk.input_size, takes=f"the trunk in {path} takes",
                            advice="pack the faces at that size")
    train_branches(model.to(device), faces, classes, sizes, config, seed=args.seed, device=device,
                   progress=not args.quiet, amp=args.amp, num_workers=args.workers)
    record = {"data": str(args.data), "preset": args.preset, "branch": config.to_dict(), "seed": args.seed,
              "amp": use_amp(args.amp, torch.device(device))}
    model.provenance.setdefault("branches", {}).update({str(k): record for k in sizes})
    model.provenance["people"] = people_record(faces.classes, model.provenance.get("people"))
    save(model.cpu(), path)
    print(f"pydcr train branch: pairs for {', '.join(map(str, sizes))} added to {path}")
    return 0


def _check_pair_dim(model, sizes: list[int], dim: int, preset: str, path: Path) -> None:
    """A UsageError when the preset's pairs would differ in dimension from the pairs the model keeps:
    a model's pairs must agree, or their features do not stack (identify fails on them)."""
    from .train import PRESETS

    kept = {k: model.branch(k).dim for k in model.resolutions if k not in sizes}
    other = {k: d for k, d in kept.items() if d != dim}
    if other:
        have = next(iter(other.values()))
        fits = [name for name, p in PRESETS.items() if p.branch.dim == have]
        hint = f"give --preset {' or '.join(fits)}" if fits else f"give a preset of {have}-d pairs"
        raise UsageError(f"{path} has {have}-d branch pairs (for {', '.join(map(str, other))}) and preset {preset} "
                         f"trains {dim}-d ones: {hint}, or retrain every pair (all of them in --size)")
