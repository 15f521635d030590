"""`pydcr eval <protocol>`: the paper's evaluation protocols from the command line (`lfw`, `scface`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from ._files import write_text
from .cli_train import UsageError


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model with one of the paper's protocols")
    protocols = p.add_subparsers(dest="protocol", required=True)
    _add_lfw(protocols)
    _add_scface(protocols)


def _add_lfw(protocols) -> None:
    s = protocols.add_parser("lfw", help="LFW: 10-fold verification, HR gallery against probes degraded to k x k",
                             description="Each View 2 pair's first image is the HR gallery face, the second is "
                                         "degraded to k x k (the probe); the trunk alone and DCR at each k, and the "
                                         "trunk on HR pairs. Writes report.md, report.json and plots with --out.")
    s.add_argument("model", type=Path, help="a model file (pydcr train / demo / reproduce)")
    s.add_argument("--root", type=Path, required=True, help="LFW root (lfw/, pairs.txt, lfw_landmark.txt)")
    s.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16, 20],
                   help="probe resolutions k (default: 8 12 16 20)")
    s.add_argument("--folds", type=int, nargs="+", default=None,
                   help="View 2 folds, 1-10 (default: the test folds the model records, for a model of "
                        "`pydcr reproduce lfw`; else all ten); folds outside the test folds it records are "
                        "refused, and a warning names people of the pairs that its recorded data hold")
    s.add_argument("--pca-dim", type=int, default=None, help="PCA components kept (default: all, centring only)")
    s.add_argument("--pack", type=Path, default=None, help="read the aligned faces from this pack of LFW")
    s.add_argument("--device", default=None, help="default: cuda when available")
    s.add_argument("--out", type=Path, default=None, help="folder for the report")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=run_lfw)


def run_lfw(args: argparse.Namespace) -> int:
    from .cli_train import (check_folds_exist, check_lfw_root, check_probe_sizes, device_or_default, load_model,
                            view2_folds)
    from .data import LFW, PackedFaces
    from .eval.lfw import check_pack, evaluate_lfw, pair_images, people_trained_on, trained_outside_folds
    from .eval.report import write_report

    device = device_or_default(args.device)
    if not args.model.is_file():
        raise UsageError(f"no such model file: {args.model}")
    check_lfw_root(args.root)
    if min(args.sizes) < 1 or (args.pca_dim is not None and args.pca_dim < 1):
        raise UsageError(f"--sizes and --pca-dim must be positive, got {args.sizes} and {args.pca_dim}")
    folds = None if args.folds is None else view2_folds("--folds", args.folds)
    if args.pack is not None and not args.pack.is_file():
        raise UsageError(f"no such pack: {args.pack}")
    if args.out is not None:
        _check_report_folder(args.out, args.model, args.pack, args.root / "pairs.txt", args.root / "lfw_landmark.txt")
    model = load_model(args.model)  # a pack or another file given as the model is named as such
    check_probe_sizes("--sizes", args.sizes, model.trunk.input_size, str(args.model))
    tested = trained_outside_folds(model)  # a reproduce lfw model trained on the people of the other folds
    if tested is not None:
        if folds is None:
            folds = tested
        elif set(folds) - set(tested):
            raise UsageError(f"--folds {' '.join(map(str, args.folds))}: {args.model} trained on the LFW people "
                             f"outside View 2 folds {_numbers(tested)}, so possibly on those of folds "
                             f"{_numbers(sorted(set(folds) - set(tested)))}: give folds among "
                             f"{_numbers(tested)} (the default)")
    try:
        lfw = LFW(args.root, size=model.trunk.input_size)
        if args.folds is not None:
            check_folds_exist("--folds", folds, lfw)
        pack = PackedFaces(args.pack) if args.pack is not None else None
        if pack is not None:  # the crop size and every image the folds need, before any face is embedded
            check_pack(lfw, pair_images(lfw, folds), pack)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.pca_dim is not None:  # checked now, not after every face is embedded
        # the trunk rows' features, and the DCR rows' where a probe size has a branch pair
        dims = [model.trunk.feature_dim] + [model.branch(k).dim for k in args.sizes if k in model.resolutions]
        if args.pca_dim > min(dims):
            raise UsageError(f"--pca-dim must be at most {min(dims)} (the feature size of {args.model}), "
                             f"got {args.pca_dim}")
    if args.folds is not None or tested is None:
        folds_used = _numbers(folds) if folds is not None else "1-10"
    else:
        folds_used = (f"{_numbers(tested)}, the test folds {args.model.name} records (it trained on the LFW "
                      "people outside them)")
        print(f"eval lfw: View 2 folds {folds_used}")
    seen = people_trained_on(model, lfw, folds)
    if seen:  # a model trained on LFW people (the demo's, or one trained on an LFW pack)
        print(f"pydcr eval: warning: {args.model} trained on {len(seen)} of the people in these pairs "
              f"(e.g. {seen[0]}): its accuracy here is not that of unseen people", file=sys.stderr)
    # an input found unusable mid-run (a damaged pack record) is an input error, not a usage error
    table = evaluate_lfw(model, lfw, folds, args.sizes, pca_dim=args.pca_dim, pack=pack,
                         device=device, progress=not args.quiet)
    print(table.markdown())
    if args.out is not None:
        meta = {"model": str(args.model), "root": str(args.root), "folds": folds_used, "antialias": model.antialias,
                "pca_dim": args.pca_dim if args.pca_dim is not None else "none (centering only)"}
        if seen:
            meta["people trained on"] = f"{len(seen)} of the people in these pairs"
        for path in write_report(args.out, f"LFW verification of {args.model.name}", table, meta):
            print(f"wrote {path}")
    return 0


def _numbers(folds) -> str:
    """0-based fold indices as the command line numbers them: "6 7 8 9 10"."""
    return " ".join(str(f + 1) for f in folds)


def _check_report_folder(out: Path, *inputs: Path | None, files: tuple[str, ...] | None = None) -> None:
    """A UsageError when the report folder `out` is a file, or a report file in it (`files`, by
    default those of write_report) is a folder or one of the inputs."""
    from .cli_train import check_out, check_out_folder
    from .eval.report import REPORT_FILES

    if out.exists() and not out.is_dir():
        raise UsageError(f"cannot write the report in {out}: it is a file; give a folder for --out")
    check_out_folder(out)
    if out.is_dir():  # a folder still to be made holds no input
        for name in files or REPORT_FILES:
            check_out(out / name, *inputs)


SCFACE_REPORT_FILES = ("scface.json", "scface.md")


def _add_scface(protocols) -> None:
    s = protocols.add_parser("scface", help="SCface: rank-1 identification of surveillance probes per distance",
                             description="Gallery: the test subjects' frontal mugshots; probes: their surveillance "
                                         "images at d1 (4.20 m), d2 (2.60 m), d3 (1.00 m). The branch pairs are "
                                         "fine-tuned and the PCA fitted on the other (training) subjects.")
    s.add_argument("model", type=Path, help="a model file with branch pairs (pydcr train branch)")
    s.add_argument("--root", type=Path, required=True, help="the SCface folder (its published file names)")
    s.add_argument("--landmarks", type=Path, default=None,
                   help="five-point landmark list of its images (make one with "
                        "`pydcr align ROOT LIST --layout scface`)")
    s.add_argument("--sizes", type=int, nargs=3, default=None, metavar=("D1", "D2", "D3"),
                   help="the branch pair of each distance (default: the paper's 20 30 and the full size, the "
                        "input's longer side: 112 for 112x96 crops)")
    s.add_argument("--train-subjects", type=int, default=50,
                   help="subjects for fine-tuning and PCA; the rest are tested (default 50)")
    s.add_argument("--seed", type=int, default=0, help="the subject split and fine-tuning seed (default 0)")
    s.add_argument("--preset", default=None,
                   help="whose branch settings fine-tune the pairs (default: the preset the pairs were trained "
                        "with, as the model records it; else cpu); the pair keeps its size")
    s.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs; 0: none (default 10)")
    s.add_argument("--finetune-lr", type=float, default=None,
                   help="fine-tuning learning rate (default: a tenth of the preset's branch rate)")
    s.add_argument("--pca-dim", type=int, default=None, help="PCA components kept (default: all, centring only)")
    s.add_argument("--batch-size", type=int, default=64, help="images per trunk pass (default 64)")
    s.add_argument("--device", default=None, help="default: cuda when available")
    s.add_argument("--out", type=Path, default=None, help="folder for scface.json and scface.md")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=run_scface)


def run_scface(args: argparse.Namespace) -> int:
    from .cli_train import (check_positive, check_probe_sizes, check_seed, device_or_default, load_model,
                            preset_named, trained_preset)
    from .data import SCface
    from .eval.scface import check_protocol, evaluate_scface, format_table, paper_resolutions

    if args.finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs must be 0 or more, got {args.finetune_epochs}")
    check_positive(args, "batch_size", "pca_dim")
    if args.sizes is not None and min(args.sizes) <= 0:
        raise UsageError(f"--sizes must be positive, got {' '.join(map(str, args.sizes))}")
    if args.finetune_lr is not None and not 0 < args.finetune_lr < math.inf:
        raise UsageError(f"--finetune-lr must be positive and finite, got {args.finetune_lr}")
    check_seed(args, low=0)
    if args.preset is not None:
        preset_named(args.preset)  # an unknown name is refused before any file is read
    device = device_or_default(args.device)
    if not args.model.is_file():
        raise UsageError(f"no such model file: {args.model}")
    if not args.root.is_dir():
        raise UsageError(f"no such SCface folder: {args.root}")
    if args.landmarks is None:
        raise UsageError("SCface has no landmark list of its own: make one with "
                         f"`pydcr align {args.root} LIST --layout scface` and give it with --landmarks")
    if not args.landmarks.is_file():
        raise UsageError(f"no such landmark list: {args.landmarks}")
    if args.out is not None:  # before the evaluation and its fine-tuning, not after
        _check_report_folder(args.out, args.model, args.landmarks, files=SCFACE_REPORT_FILES)
    model = load_model(args.model)  # a pack or another file given as the model is named as such
    try:
        dataset = SCface(args.root, seed=args.seed, train_subjects=args.train_subjects, landmarks=args.landmarks,
                         size=model.trunk.input_size)
        resolutions = paper_resolutions(model) if args.sizes is None else dict(zip((1, 2, 3), args.sizes))
        check_probe_sizes("--sizes", list(resolutions.values()), model.trunk.input_size, str(args.model))
        check_protocol(model, dataset, resolutions, args.pca_dim)
    except ValueError as err:
        raise UsageError(str(err)) from None

    preset = preset_named(args.preset or trained_preset(model, list(resolutions.values())))
    finetune = None
    if args.finetune_epochs:
        lr = args.finetune_lr if args.finetune_lr is not None else preset.branch.lr / 10
        finetune = replace(preset.branch, epochs=args.finetune_epochs, lr=lr)
    result = evaluate_scface(model, dataset, resolutions=resolutions, finetune=finetune, pca_dim=args.pca_dim,
                             seed=args.seed, batch_size=args.batch_size, device=device,
                             progress=not args.quiet)
    table = format_table(result)
    print(f"SCface rank-1 identification (%): {len(result.test_subjects)} test subjects, "
          f"{len(result.train_subjects)} for fine-tuning and PCA\n\n{table}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {**result.to_dict(), "model": str(args.model), "root": str(args.root), "seed": args.seed}
        json_file, md_file = (args.out / name for name in SCFACE_REPORT_FILES)
        write_text(json_file, json.dumps(report, indent=2) + "\n")
        tuned = "not fine-tuned" if finetune is None else f"fine-tuned {finetune.epochs} epochs at lr {finetune.lr:g}"
        write_text(md_file, f"# SCface rank-1 identification (%)\n\nModel {args.model}; {len(result.test_subjects)} "
                            f"test subjects, {len(result.train_subjects)} training subjects (seed {args.seed}); branch "
                            f"pairs {', '.join(f'd{d}: {k}' for d, k in resolutions.items())}, {tuned}.\n\n{table}\n")
        print(f"\npydcr eval scface: {json_file}, {md_file}")
    return 0
