"""`pydcr demo`: train a small DCR on the bundled faces and compare it with its trunk alone.

The bundled faces (pydcr/demo_data) are split by identity: four fifths of the people train the
trunk and the branch pairs, the other fifth form ten folds of verification pairs (each person in
one fold). Each pair's first face is the HR gallery image; the second is degraded to k x k and
brought back (the probe). The table gives 10-fold verification accuracy, as in the paper's Table I,
for the trunk alone and for DCR at each k, and for the trunk on HR pairs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import ops
from .data import FaceArrays, PackedFaces
from .eval.report import write_report
from .eval.table import verification_table
from .models import DCR, save
from .models.people import people_record
from .train import get_preset, train_branches, train_trunk

DEMO_PACK = Path(__file__).parent / "demo_data" / "lfw-demo.pack"
SIZES = (8, 12, 16, 20)


@dataclass
class Split:
    train: FaceArrays
    num_classes: int
    test_images: np.ndarray  # N x h x w x 3
    pairs: np.ndarray  # P x 2 indices into test_images
    same: np.ndarray  # P
    folds: np.ndarray  # P
    train_people: np.ndarray  # the labels (of the input) of the people trained on


def load_faces(pack: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The pack's crops at `size` (N x h x w x 3 uint8), their labels and the identities' names."""
    with PackedFaces(pack) as faces:
        images = faces.images(range(len(faces)))
        labels = np.asarray(faces.labels, dtype=np.int64)
        names = list(faces.classes)
    if tuple(images.shape[1:3]) != tuple(size):
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        x = ops.resize(x, size).round().clamp(0, 255).to(torch.uint8)
        images = x.permute(0, 2, 3, 1).contiguous().numpy()
    return images, labels, names


def split(images: np.ndarray, labels: np.ndarray, *, folds: int = 10, seed: int = 0) -> Split:
    """Every fifth person to test, the rest to train; test pairs in identity-disjoint folds."""
    people = np.unique(labels)
    test_people = people[::5]
    is_test = np.isin(labels, test_people)
    train_labels = np.searchsorted(np.setdiff1d(people, test_people), labels[~is_test])
    rng = np.random.default_rng(seed)
    test_labels = labels[is_test]
    if len(test_people) < 2 * folds:
        raise ValueError(f"{len(people)} people give {len(test_people)} test people: need two per fold, {2 * folds}")
    fold_of = {p: i % folds for i, p in enumerate(test_people)}
    pairs, same, fold = [], [], []
    for f in range(folds):
        members = [p for p in test_people if fold_of[p] == f]
        idx = {p: np.flatnonzero(test_labels == p) for p in members}
        matched = [(a, b) for p in members for a, b in zip(idx[p][:-1:2], idx[p][1::2])]
        for a, b in matched:
            pairs.append((a, b)), same.append(True), fold.append(f)
        for _ in range(len(matched)):  # as many mismatched pairs, between people of this fold
            p, q = rng.choice(members, 2, replace=False)
            pairs.append((rng.choice(idx[p]), rng.choice(idx[q]))), same.append(False), fold.append(f)
    return Split(FaceArrays(images[~is_test], train_labels), len(people) - len(test_people), images[is_test],
                 np.array(pairs), np.array(same), np.array(fold), np.setdiff1d(people, test_people))


def run_demo(out_dir: str | Path = "pydcr-demo", *, preset: str = "demo", epochs: int | None = None,
             pack: Path = DEMO_PACK, device: str = "cpu", seed: int = 0, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = get_preset(preset)
    trunk_cfg = p.trunk if epochs is None else replace(p.trunk, epochs=epochs)
    started = time.perf_counter()
    images, labels, names = load_faces(pack, trunk_cfg.input_size)
    s = split(images, labels, seed=seed)
    print(f"demo: {len(s.train)} training faces of {s.num_classes} people; {len(s.pairs)} test pairs of "
          f"{len(np.unique(s.folds))} identity-disjoint folds; crops {trunk_cfg.input_size[0]}x{trunk_cfg.input_size[1]}")
    run = train_trunk(s.train, s.num_classes, trunk_cfg, out_dir / "trunk", device=device, seed=seed, progress=progress)
    if not run.finished:
        print(f"demo: stopped; run again with the same arguments to resume from {out_dir / 'trunk'}", file=sys.stderr)
        return {}
    model = DCR(run.trunk, antialias=trunk_cfg.antialias)
    train_branches(model, s.train, s.num_classes, SIZES, p.branch, seed=seed, device=device, progress=progress)
    x = torch.from_numpy(s.test_images).permute(0, 3, 1, 2).contiguous()
    table = verification_table(model, x, s.pairs[:, 0], s.pairs[:, 1], s.same, s.folds, SIZES, device=device)
    minutes = (time.perf_counter() - started) / 60
    save(model, out_dir / "model.safetensors", provenance={
        "data": f"pydcr demo faces ({pack.name}), {len(s.train)} images of {s.num_classes} people",
        "preset": preset, "trunk": trunk_cfg.to_dict(), "branch": p.branch.to_dict(), "seed": seed,
        "people": people_record(names[p] for p in s.train_people),  # LFW people: `pydcr eval lfw` warns of them
    })
    meta = {"minutes": round(minutes, 1), "preset": preset, "trunk_epochs": trunk_cfg.epochs, "device": device,
            "train_images": len(s.train),
            "train_people": s.num_classes, "test_pairs": len(s.pairs), "folds": len(np.unique(s.folds))}
    write_report(out_dir, "pydcr demo", table, meta)
    print("\n10-fold verification accuracy (%), probe degraded to k x k:\n" + table.markdown())
    print(f"\ndemo: {minutes:.1f} minutes; model and report in {out_dir}")
    return {"table": table.to_dict(), **meta}
