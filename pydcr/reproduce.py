"""`pydcr reproduce lfw`: the paper's Table I reproduced offline on LFW, identity-disjoint.

The trunk and the branch pairs train only on LFW people who appear in none of the test folds' pairs
(and have at least `min_images` images: a class needs two faces to teach anything about identity);
the test folds are evaluated with the paper's protocol, each test fold's PCA and threshold fitted on
the other test folds. Default: test on folds 6-10 (0-based 5-9), train on everyone else.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ._machine import describe, machine, use_amp
from .data import LFW, FaceArrays, PackedFaces, pack
from .eval.lfw import LFWDisjointSplit, aligned_faces, check_pack, lfw_disjoint_split
from .eval.report import write_report
from .eval.table import verification_table
from .models import DCR, Trunk, save
from .models.people import people_record
from .train import TrunkConfig, get_preset, train_branches, train_trunk

SIZES = (8, 12, 16, 20)
TEST_FOLDS = (5, 6, 7, 8, 9)  # View 2 folds 6-10


def reproduce_lfw(
    root: str | Path,
    out_dir: str | Path = "pydcr-reproduce-lfw",
    *,
    preset: str = "small",
    test_folds: Sequence[int] = TEST_FOLDS,
    min_images: int = 2,
    sizes: Sequence[int] = SIZES,
    pca_dim: int | None = None,
    epochs: int | None = None,
    pack_path: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
    baselines: bool = False,
    amp: bool | None = None,
    antialias: bool | None = None,
) -> dict:
    """Train on the LFW people outside `test_folds`, evaluate those folds, write the report; returns it.

    The aligned crops come from `pack_path` (a pack of this LFW made by `pydcr pack` at the preset's
    input size), else from out_dir/lfw-HxW.pack, made on the first run. An interrupted run resumes.
    With `baselines`, the table also has the paper's ResNet and ResNet-FT rows (see
    :func:`train_resnet_baselines`). `command` is recorded in the report. amp: the trunks' forward
    passes in bfloat16 autocast (default: on CUDA only; see :func:`pydcr.train.train_trunk`).
    antialias: the bicubic convention of the degraded copies, for training and the probes (default:
    the preset's, antialiased).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    p = get_preset(preset)
    trunk_cfg = p.trunk if epochs is None else replace(p.trunk, epochs=epochs)
    if antialias is not None:
        trunk_cfg = replace(trunk_cfg, antialias=antialias)
    h, w = trunk_cfg.input_size
    lfw = LFW(root, size=trunk_cfg.input_size)
    split = lfw_disjoint_split(lfw, test_folds, min_images)
    if pack_path is not None:  # a pack that will not do is refused before out_dir is made
        check_lfw_pack(pack_path, lfw, split, preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    if pack_path is None:
        pack_path = out_dir / f"lfw-{h}x{w}.pack"
        if not pack_path.exists():
            pack(lfw, pack_path, progress=progress)
    with PackedFaces(pack_path) as faces:
        train = FaceArrays(aligned_faces(lfw, split.train_indices, pack=faces).permute(0, 2, 3, 1).numpy(),
                           split.train_labels)
        test = aligned_faces(lfw, split.test_indices, pack=faces)
    folds_1based = [int(f) + 1 for f in np.unique(split.folds)]
    print(f"reproduce lfw: training on {len(train)} faces of {split.num_classes} people outside test folds "
          f"{folds_1based}; testing {len(split.first)} pairs; crops {h}x{w}, preset {preset}")

    # Which people train: a rerun into out_dir with other test folds must not resume a trunk that
    # trained on its test people (the number of people alone can agree).
    people = "\0".join(sorted(split.people)).encode("utf-8", "surrogateescape")
    data_key = "people:" + hashlib.sha256(people).hexdigest()[:32]
    run = train_trunk(train, split.num_classes, trunk_cfg, out_dir / "trunk", device=device, seed=seed,
                      progress=progress, amp=amp, data_key=data_key)
    if not run.finished:
        print(f"reproduce lfw: stopped; run again with the same arguments to resume from {out_dir / 'trunk'}")
        return {}
    model = DCR(run.trunk, antialias=trunk_cfg.antialias)
    train_branches(model, train, split.num_classes, sizes, p.branch, seed=seed, device=device, progress=progress,
                   amp=amp)
    save(model, out_dir / "model.safetensors", provenance={
        "data": f"LFW ({lfw.root}) people outside View 2 folds {folds_1based} with >= {min_images} images: "
                f"{len(train)} images of {split.num_classes} people",
        "preset": preset, "trunk": trunk_cfg.to_dict(), "branch": p.branch.to_dict(), "seed": seed,
        "test_folds": folds_1based,  # `pydcr eval lfw` evaluates these by default and refuses the others
        "people": people_record(split.people),
    })
    baseline_trunks = {}
    if baselines:
        baseline_trunks = train_resnet_baselines(train, split.num_classes, trunk_cfg, sizes, out_dir, device=device,
                                                 seed=seed, progress=progress, amp=amp, data_key=data_key)
        if baseline_trunks is None:
            print(f"reproduce lfw: stopped; run again with the same arguments to resume from {out_dir}")
            return {}
    table = verification_table(model, test, split.first, split.second, split.same, split.folds, sizes,
                               pca_dim=pca_dim, device=device, baselines=baseline_trunks, progress=progress)
    minutes = (time.perf_counter() - started) / 60
    ran_on = machine(device)
    meta = {
        "command": command,
        "machine": describe(ran_on),
        "torch": ran_on["torch"],
        "minutes": round(minutes, 1),
        "preset": preset,
        "epochs": trunk_cfg.epochs,
        "training_precision": "bfloat16 autocast" if use_amp(amp, device) else "float32",
        "antialias": trunk_cfg.antialias,  # the bicubic convention of the training copies and the probes
        "seed": seed,
        "test_folds": folds_1based,
        "test_pairs": len(split.first),
        "train_images": len(train),
        "train_people": split.num_classes,
        "min_images": min_images,
        "pca_dim": pca_dim if pca_dim is not None else "none (centering only)",
        "baselines": BASELINES if baselines else None,
        "protocol": "LFW-disjoint: no person of a test pair trains; per test fold, PCA and threshold from the "
                    "other test folds; gallery = first image (HR), probe = second image degraded to k x k",
    }
    write_report(out_dir, "pydcr reproduce lfw", table, {k: v for k, v in meta.items() if v is not None})
    print("\nVerification accuracy (%) on LFW folds " + ", ".join(map(str, folds_1based)) + ":\n" + table.markdown())
    print(f"\nreproduce lfw: {minutes:.1f} minutes; model and report in {out_dir}")
    return {"table": table.to_dict(), **meta}


def check_lfw_pack(pack_path: str | Path, lfw: LFW, split: LFWDisjointSplit, preset: str) -> None:
    """A ValueError unless the pack at pack_path holds crops at lfw's size (the preset's) of every
    image `split` trains and tests on."""
    with PackedFaces(pack_path) as faces:
        check_pack(lfw, np.concatenate([split.train_indices, split.test_indices]), faces,
                   f"the {preset} preset trains on")


BASELINES = ("ResNet: the trunk trained as the DCR trunk is, on HR faces only; ResNet-FT: that network "
             "fine-tuned on the same faces at HR and degraded to each probe size, for a third of the epochs "
             "at a tenth of the learning rate")


def train_resnet_baselines(faces, num_classes: int, config: TrunkConfig, sizes: Sequence[int], out_dir: Path,
                           **train_args) -> dict[str, Trunk] | None:
    """The paper's "ResNet" and "ResNet-FT" rows (BASELINES), trained in out_dir/resnet and
    out_dir/resnet-ft: the same network without multi-resolution training, and that network
    fine-tuned on the low-resolution faces. None when stopped by a signal (a rerun resumes)."""
    resnet = train_trunk(faces, num_classes, replace(config, low_sizes=()), out_dir / "resnet", label="ResNet",
                         **train_args)
    if not resnet.finished:
        return None
    fine_tune = replace(config, low_sizes=tuple(sizes), epochs=max(1, config.epochs // 3), lr=config.lr / 10)
    tuned = train_trunk(faces, num_classes, fine_tune, out_dir / "resnet-ft", init=resnet, label="ResNet-FT",
                        **train_args)
    if not tuned.finished:
        return None
    return {"ResNet": resnet.trunk, "ResNet-FT": tuned.trunk}
