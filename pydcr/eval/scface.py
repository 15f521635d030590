"""The DCR paper's SCface protocol (Table II): rank-1 identification of surveillance probes against
HR mugshots, per distance, for DCR and for the trunk alone.

- Gallery: the frontal mugshot of each test subject; probes: the five surveillance cameras' images
  of the test subjects at one distance, d1 (4.20 m), d2 (2.60 m) or d3 (1.00 m).
- The branch pair of each distance is the one trained for its probe resolution: 20 x 20 for d1,
  30 x 30 for d2 and full size (112 x 96, keyed 112) for d3.
- The subjects are split at random into 50 for fine-tuning those pairs and fitting the PCA, and
  80 for testing (the split is the dataset's, :class:`pydcr.data.SCface`); no test subject is seen
  before testing.
- Fine-tuning couples each training subject's mugshot (HR) with each of its surveillance images at
  that distance (LR) and trains the pair with the CM loss, new classifiers for the 50 subjects.
- Features (trunk v, or the pair's x for the gallery and z for the probes) are centred, and
  projected when pca_dim is given, by a PCA of the training subjects' gallery and probe features;
  then each probe takes the identity of the nearest gallery mugshot by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..data import SCface, face_loader
from ..models import DCR, BranchPair
from ..train import BranchConfig, train_branch_pair
from ..train.progress import Progress
from .identification import identify
from .verification import fit_pca

def paper_resolutions(model: DCR) -> dict[int, int]:
    """The paper's branch pair per distance (its probe resolution) for `model`: 20 for d1, 30 for
    d2 and the full size for d3, keyed by the input's longer side (112 for the paper's 112 x 96
    crops, 56 for 56 x 48)."""
    return {1: 20, 2: 30, 3: max(model.trunk.input_size)}


METHODS = ("trunk", "DCR")


@dataclass
class SCfaceResult:
    rank1: dict[str, dict[str, float]]  # "d1" -> "trunk" / "DCR" -> rank-1 accuracy
    resolutions: dict[int, int]  # distance -> the resolution of its branch pair
    gallery: list[int]  # dataset indices of the gallery mugshots
    probes: dict[int, list[int]]  # distance -> dataset indices of its probes
    predictions: dict[str, dict[str, list[int]]]  # "d1" -> method -> the top-1 subject label of each probe
    train_subjects: list[str]
    test_subjects: list[str]
    pairs: dict[int, BranchPair]  # distance -> the branch pair used (fine-tuned unless finetune was None)
    finetune: BranchConfig | None
    pca_dim: int | None

    def to_dict(self) -> dict:
        """A JSON-able summary: the table and what produced it."""
        return {
            "protocol": "scface",
            "rank1": self.rank1,
            "distances_m": {f"d{d}": SCface.DISTANCES_M[d] for d in self.resolutions},
            "resolutions": {f"d{d}": k for d, k in self.resolutions.items()},
            "gallery": len(self.gallery),
            "probes": {f"d{d}": len(p) for d, p in self.probes.items()},
            "train_subjects": self.train_subjects,
            "test_subjects": self.test_subjects,
            "finetune": None if self.finetune is None else self.finetune.to_dict(),
            "pca_dim": self.pca_dim,
        }


def evaluate_scface(
    model: DCR,
    dataset: SCface,
    *,
    resolutions: Mapping[int, int] | None = None,
    finetune: BranchConfig | None = None,
    pca_dim: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SCfaceResult:
    """Rank-1 accuracy of DCR and of its trunk alone at each distance in `resolutions`.

    dataset: crops at the model's input size (``SCface(root, landmarks=..., size=model.trunk.input_size)``).
    resolutions: distance -> the model's branch pair for it (default: :func:`paper_resolutions`).
    finetune: the configuration that fine-tunes each pair on the training subjects (its dim is the
    pair's own), or None to use the model's pairs as they are. pca_dim: None centres only.
    """
    resolutions = dict(paper_resolutions(model) if resolutions is None else resolutions)
    check_protocol(model, dataset, resolutions, pca_dim)
    gallery = {split: dataset.gallery(split) for split in ("train", "test")}
    probes = {(d, split): dataset.probes(d, split) for d in resolutions for split in ("train", "test")}
    for (d, split), rows in probes.items():
        if split == "test" and not len(rows):
            raise ValueError(f"no surveillance images of the test subjects at distance {d}")
    needed = np.unique(np.concatenate([*gallery.values(), *probes.values()]))
    features = protocol_features(model, dataset, needed, batch_size=batch_size, device=device, progress=progress)

    pairs = {d: model.branch(k) for d, k in resolutions.items()}
    if finetune is not None:
        pairs = finetune_pairs(pairs, dataset, features, finetune, seed=seed, device=device, progress=progress)

    rank1, predictions = {}, {}
    with torch.no_grad():
        for d, pair in pairs.items():
            pair.eval()
            on = next(pair.parameters()).device
            embed = {
                "trunk": (lambda rows: features[rows], lambda rows: features[rows]),
                "DCR": (lambda rows: pair.hr(features[rows].to(on)).cpu(),
                        lambda rows: pair.lr(features[rows].to(on)).cpu()),
            }
            rank1[f"d{d}"], predictions[f"d{d}"] = {}, {}
            for method, (embed_gallery, embed_probes) in embed.items():
                fit = torch.cat([embed_gallery(gallery["train"]), embed_probes(probes[d, "train"])])
                project = fit_pca(fit, pca_dim)
                result = identify(project(embed_gallery(gallery["test"])), dataset.labels[gallery["test"]],
                                  project(embed_probes(probes[d, "test"])), dataset.labels[probes[d, "test"]], k=1)
                rank1[f"d{d}"][method] = result.accuracy
                predictions[f"d{d}"][method] = result.top_ids[:, 0].tolist()
    return SCfaceResult(
        rank1=rank1, resolutions=resolutions, gallery=gallery["test"].tolist(),
        probes={d: probes[d, "test"].tolist() for d in resolutions}, predictions=predictions,
        train_subjects=list(dataset.train_subjects), test_subjects=list(dataset.test_subjects),
        pairs=pairs, finetune=finetune, pca_dim=pca_dim,
    )


def check_protocol(model: DCR, dataset: SCface, resolutions: Mapping[int, int], pca_dim: int | None) -> None:
    """Raise ValueError, saying what to change, when the model and dataset cannot run the protocol."""
    if not resolutions:
        raise ValueError("resolutions must name at least one distance")
    for d, k in resolutions.items():
        if d not in SCface.DISTANCES_M:
            raise ValueError(f"distances are 1 (4.20 m), 2 (2.60 m) and 3 (1.00 m), got {d}")
        if str(k) not in model.branches:
            raise ValueError(f"the model has branch pairs for {model.resolutions or 'no resolution'}; distance d{d} "
                             f"needs one for {k} (add it with `pydcr train branch --size {k}`)")
    if tuple(dataset.size) != tuple(model.trunk.input_size):
        raise ValueError(f"the dataset's crops are {dataset.size[0]}x{dataset.size[1]}, the model takes "
                         f"{model.trunk.input_size[0]}x{model.trunk.input_size[1]}")
    if not dataset.train_subjects or not dataset.test_subjects:
        raise ValueError("the protocol needs both training and test subjects")
    dims = {model.trunk.feature_dim, *(model.branch(k).dim for k in resolutions.values())}
    if pca_dim is not None and not 1 <= pca_dim <= min(dims):
        raise ValueError(f"pca_dim must be in [1, {min(dims)}] (the feature size) or None, got {pca_dim}")
    mugshots = np.bincount(dataset.labels[dataset.gallery("all")], minlength=len(dataset.classes))
    if (mugshots != 1).any():
        bad = [dataset.classes[i] for i in np.flatnonzero(mugshots != 1)]
        raise ValueError(f"every subject needs exactly one frontal mugshot; these have none or several: "
                         f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
    missing = missing_landmarks(dataset, resolutions)
    if missing:
        raise ValueError(f"{len(missing)} images of the protocol have no landmarks, e.g. {missing[0]}: give a landmark "
                         "list that covers them (`pydcr align ROOT LIST --layout scface`)")


def missing_landmarks(dataset: SCface, distances) -> list[str]:
    """The paths of the protocol's images (mugshots and probes at `distances`) without landmarks."""
    rows = np.concatenate([dataset.gallery("all"), *(dataset.probes(d, "all") for d in distances)])
    return [dataset.paths[i] for i in rows if dataset.landmarks_of(int(i)) is None]


@torch.no_grad()
def protocol_features(model: DCR, dataset: SCface, rows: np.ndarray, *, batch_size: int = 64,
                   device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """Trunk features v of the given dataset rows, as a len(dataset) x D CPU tensor (other rows zero)."""
    device = torch.device(device)
    trunk = model.trunk.to(device).eval()
    out = torch.zeros(len(dataset), trunk.feature_dim)
    subset = torch.utils.data.Subset(dataset, rows.tolist())
    loader = face_loader(subset, batch_size, shuffle=False, workers=0, pin_memory=device.type == "cuda")
    done = 0
    with Progress(len(loader), "SCface features", enabled=progress) as bar:
        for images, _ in loader:
            out[rows[done : done + len(images)]] = trunk(images.to(device)).float().cpu()
            done += len(images)
            bar.update()
    return out


def finetune_pairs(
    pairs: Mapping[int, BranchPair],
    dataset: SCface,
    features: torch.Tensor,
    config: BranchConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[int, BranchPair]:
    """Fine-tune each distance's pair on the training subjects only: every surveillance image at that
    distance (LR) coupled with its subject's mugshot (HR). Returns deployment copies (no classifiers)."""
    subjects = [dataset.classes.index(name) for name in dataset.train_subjects]
    new_label = {label: i for i, label in enumerate(subjects)}
    mugshot_of = {int(dataset.labels[i]): int(i) for i in dataset.gallery("train")}
    tuned = {}
    for d, pair in pairs.items():
        probes = dataset.probes(d, "train")
        if not len(probes):
            raise ValueError(f"no surveillance images of the training subjects at distance {d} to fine-tune on")
        labels = dataset.labels[probes]
        hr = features[[mugshot_of[int(y)] for y in labels]]
        lr = features[probes]
        targets = torch.tensor([new_label[int(y)] for y in labels])
        trained = train_branch_pair(hr, lr, targets, len(subjects), config, seed=seed, device=device,
                                    progress=progress, desc=f"fine-tune d{d}", init=pair)
        tuned[d] = trained.without_classifiers()
    return tuned


def format_table(result: SCfaceResult) -> str:
    """The rank-1 table in Markdown, as the paper's Table II (percent)."""
    cols = list(result.rank1)
    head = [f"{c} ({SCface.DISTANCES_M[int(c[1:])]:.2f} m)" for c in cols]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(f"{100 * result.rank1[c][method]:.1f}" for c in cols) + " |")
    return "\n".join(lines)
