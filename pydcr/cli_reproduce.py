"""`pydcr reproduce lfw`: the offline reproduction of the paper's Table I."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._files import write_text
from .cli_train import (UsageError, add_amp_argument, add_antialias_argument, check_lfw_root, check_out,
                        check_folds_exist, check_out_folder, check_positive, check_probe_sizes, check_seed,
                        device_or_default, preset_named, view2_folds)


def add_reproduce_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce the paper's comparison offline")
    data = p.add_subparsers(dest="what", required=True)
    lfw = data.add_parser("lfw", help="Table I on LFW, training only on people outside the test folds")
    lfw.add_argument("--root", type=Path, required=True, help="LFW root (lfw/, pairs.txt, lfw_landmark.txt)")
    lfw.add_argument("--out", type=Path, default=Path("pydcr-reproduce-lfw"),
                     help="run folder; a stopped run resumes (default: pydcr-reproduce-lfw)")
    lfw.add_argument("--preset", default="small", help="paper, cpu, small or demo (default: small)")
    lfw.add_argument("--test-folds", type=int, nargs="+", default=[6, 7, 8, 9, 10],
                     help="View 2 folds to test on, 1-10 (default: 6 7 8 9 10)")
    lfw.add_argument("--min-images", type=int, default=2,
                     help="train on people with at least this many images (default: 2)")
    lfw.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16, 20],
                     help="probe resolutions k, a branch pair each (default: 8 12 16 20)")
    lfw.add_argument("--pca-dim", type=int, default=None, help="PCA components (default: all, centering only)")
    lfw.add_argument("--epochs", type=int, default=None, help="trunk epochs (default: the preset's)")
    lfw.add_argument("--pack", type=Path, default=None, help="a pack of this LFW at the preset's input size")
    lfw.add_argument("--device", default=None, help="default: cuda when available")
    add_amp_argument(lfw, "the trunks' forward passes")
    add_antialias_argument(lfw)
    lfw.add_argument("--seed", type=int, default=0,
                     help="seed of the weights, the batches and the flips; runs that differ only in it go "
                          "to `pydcr reproduce summary` (default: 0)")
    lfw.add_argument("--baselines", action="store_true",
                     help="also train the paper's ResNet and ResNet-FT baselines (about twice the time)")
    lfw.add_argument("--quiet", action="store_true", help="no progress bars")
    lfw.set_defaults(func=run_reproduce_lfw)
    summary = data.add_parser("summary", help="several runs of a reproduction (seeds, say): mean ± sd per cell and "
                                              "paired differences from DCR")
    summary.add_argument("runs", type=Path, nargs="+", help="run folders (or their report.json), two or more")
    summary.add_argument("--out", type=Path, default=None, help="also write the summary to this Markdown file")
    summary.set_defaults(func=run_summary)


def run_reproduce_lfw(args: argparse.Namespace) -> int:
    from .data import LFW
    from .eval.lfw import lfw_disjoint_split
    from .reproduce import check_lfw_pack, reproduce_lfw
    from .train.checkpoint import OtherRunError

    preset = preset_named(args.preset)
    check_lfw_root(args.root)
    test_folds = view2_folds("--test-folds", args.test_folds)
    if min(args.sizes) < 1:
        raise UsageError(f"--sizes must be positive, got {args.sizes}")
    check_probe_sizes("--sizes", args.sizes, preset.trunk.input_size, f"the {args.preset} preset")
    check_out_folder(args.out)
    check_seed(args)
    if args.min_images < 1:
        raise UsageError(f"--min-images must be >= 1, got {args.min_images}")
    check_positive(args, "epochs")
    # the table's PCA runs on trunk and branch features, whose sizes the preset fixes before any training
    dim = min(preset.trunk.feature_dim, preset.branch.dim)
    if args.pca_dim is not None and not 1 <= args.pca_dim <= dim:
        raise UsageError(f"--pca-dim must be in 1-{dim} (the {args.preset} preset's feature size), got {args.pca_dim}")
    if args.pack is not None and not args.pack.is_file():
        raise UsageError(f"no such pack: {args.pack}")
    device = device_or_default(args.device)
    # the split reproduce_lfw will train on, computed here too so that an empty one stops before any work
    lfw = LFW(args.root, size=preset.trunk.input_size)
    check_folds_exist("--test-folds", test_folds, lfw)
    split = lfw_disjoint_split(lfw, test_folds, args.min_images)
    if split.num_classes == 0:
        raise UsageError(f"no one in {args.root} trains: every person is in a pair of test folds "
                         f"{' '.join(map(str, args.test_folds))} or has fewer than {args.min_images} images "
                         "(see --test-folds and --min-images)")
    if args.pack is not None:  # its crop size and every image the split needs, before --out is made
        try:
            check_lfw_pack(args.pack, lfw, split, args.preset)
        except ValueError as err:
            raise UsageError(str(err)) from None
    try:
        reproduce_lfw(args.root, args.out, preset=args.preset, test_folds=test_folds,
                      min_images=args.min_images, sizes=args.sizes, pca_dim=args.pca_dim, epochs=args.epochs,
                      pack_path=args.pack, device=device, seed=args.seed, progress=not args.quiet,
                      command=shlex.join(["pydcr", *sys.argv[1:]]), baselines=args.baselines, amp=args.amp,
                      antialias=args.antialias)
    except OtherRunError as err:  # refused before any step: --out holds another run (other people, settings)
        raise UsageError(str(err)) from None
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from .eval.runs import load_report, summarize_runs

    given = {}
    for path in args.runs:  # a run folder and its report.json, or two spellings of one folder, are one run
        report = (path / "report.json" if path.is_dir() else path).resolve()
        if report in given:
            raise UsageError(f"{path} and {given[report]} are the same run: one run would count twice")
        given[report] = path
    try:
        reports = [load_report(path) for path in args.runs]
        text = summarize_runs(reports, [str(path) for path in args.runs])
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.out is not None:
        _check_summary_out(args.out, [path for run in args.runs for path in _run_files(run)])
    print(text)
    if args.out is not None:  # the folders --out names are made only now: a refused run leaves none behind
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text + "\n")
    return 0


def _check_summary_out(out: Path, inputs: list[Path]) -> None:
    """check_out for a file whose folder may not exist yet (it is made just before the write)."""
    if out.parent.is_dir():
        check_out(out, *inputs)
        return
    target = out.resolve()  # as it will be once the missing folders exist: "new/../run" is run
    ancestor = next(p for p in target.parents if p.exists())
    if not ancestor.is_dir():
        raise UsageError(f"cannot write {out}: {ancestor} is a file, not a folder")
    if target.parent.is_dir():
        check_out(target, *inputs)


def _run_files(run: Path) -> list[Path]:
    """What a summary must not overwrite: every file of a run folder (its report.md, report.json, model,
    checkpoints), or, for a report file given as such, that file and the files beside it."""
    if run.is_dir():
        return [p for p in run.rglob("*") if p.is_file()]
    return [run, *(p for p in run.parent.iterdir() if p.is_file())]
