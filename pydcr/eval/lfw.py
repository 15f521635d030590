"""The paper's LFW protocol for a DCR model, and the identity-disjoint split of the offline reproduction.

Folds are numbered as in pydcr.data.Pairs: 0-9 for View 2's ten folds (the command line says 1-10).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..data import LFW, PackedFaces
from ..data._progress import progress_bar
from ..models import DCR
from ..models.people import trained_on
from .table import VerificationTable, verification_table


@dataclass(frozen=True)
class LFWDisjointSplit:
    """Training images of people in no test pair, and the test folds' pairs.

    train_indices / test_indices index the LFW dataset; first / second index test_indices.
    """

    train_indices: np.ndarray
    train_labels: np.ndarray  # 0 .. num_classes - 1
    num_classes: int
    test_indices: np.ndarray
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    people: list[str]  # the names of the training people, in label order


def _test_pairs(lfw: LFW, folds: Sequence[int] | None) -> tuple[np.ndarray, ...]:
    """(images, first, second, same, fold) of the pairs of `folds` (None: every fold)."""
    if lfw.pairs is None:
        raise ValueError(f"{lfw.root}: no pairs file, so no verification pairs")
    folds = lfw.check_folds(range(lfw.pairs.num_folds) if folds is None else folds)
    if not folds:
        raise ValueError(f"folds must lie in [0, {lfw.pairs.num_folds}), got none")
    chosen = np.isin(lfw.pairs.fold, folds)
    first, second = lfw.pairs.first[chosen], lfw.pairs.second[chosen]
    images, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    n = len(first)
    return images, inverse[:n], inverse[n:], lfw.pairs.same[chosen], lfw.pairs.fold[chosen]


def lfw_disjoint_split(lfw: LFW, test_folds: Sequence[int], min_images: int = 2) -> LFWDisjointSplit:
    """Test on the pairs of `test_folds`; train on the people in none of them with >= min_images images."""
    test_indices, first, second, same, folds = _test_pairs(lfw, test_folds)
    test_people = lfw.fold_identities(np.unique(folds))
    names = np.array(lfw.classes)
    labels = np.asarray(lfw.labels)
    counts = np.bincount(labels, minlength=len(names))
    train_class = ~np.isin(names, list(test_people)) & (counts >= min_images)
    train_indices = np.flatnonzero(train_class[labels])
    kept = np.flatnonzero(train_class)  # dataset classes kept, relabelled 0 .. C - 1 in name order
    train_labels = np.searchsorted(kept, labels[train_indices])
    if set(names[labels[train_indices]]) & test_people:  # by construction; checked because it is the protocol
        raise AssertionError("a test identity reached the training set")
    return LFWDisjointSplit(train_indices, train_labels, len(kept), test_indices, first, second, same, folds,
                            [str(name) for name in names[kept]])


def trained_outside_folds(model) -> list[int] | None:
    """The View 2 folds (0-based) whose people `model` was kept from training on, as its provenance
    records them (`pydcr reproduce lfw`: it trained on the LFW people outside its test folds, so
    possibly on the people of every other fold); None when it records none."""
    provenance = getattr(model, "provenance", None) or {}
    folds = provenance.get("test_folds")  # 1-based, as the command line and the report number them
    if folds is None:  # models saved before the key: the data line names the folds
        found = re.search(r"people outside View 2 folds \[([0-9, ]+)\]", str(provenance.get("data", "")))
        folds = [int(f) for f in found.group(1).split(",")] if found else None
    return sorted({int(f) - 1 for f in folds}) if folds else None


def people_trained_on(model, lfw: LFW, folds: Sequence[int] | None) -> list[str]:
    """The people in the pairs of `folds` (None: every fold) whom `model` trained on, as its
    provenance records them (pydcr.models.people); [] when it records none."""
    in_pairs = lfw.fold_identities(range(lfw.pairs.num_folds) if folds is None else folds)
    return trained_on(getattr(model, "provenance", None), in_pairs)


def check_pack(lfw: LFW, indices: np.ndarray, pack: PackedFaces, wants: str = "the model takes") -> None:
    """A ValueError unless `pack` holds crops at lfw's size (`wants` names what takes that size) of
    all of lfw's images `indices`."""
    if tuple(pack.size) != lfw.size:
        raise ValueError(f"{pack.path} holds {pack.size[0]}x{pack.size[1]} crops, {wants} "
                         f"{lfw.size[0]}x{lfw.size[1]}")
    packed = set(pack.paths)
    missing = [lfw.paths[i] for i in indices if lfw.paths[i] not in packed]
    if missing:
        raise ValueError(f"{pack.path} lacks {len(missing)} of the images needed, e.g. {missing[0]}")


def pair_images(lfw: LFW, folds: Sequence[int] | None = None) -> np.ndarray:
    """lfw's images in the pairs of `folds` (None: every fold): those evaluate_lfw aligns."""
    return _test_pairs(lfw, folds)[0]


def aligned_faces(lfw: LFW, indices: np.ndarray, *, pack: PackedFaces | None = None, workers: int | None = None,
                  progress: bool = True) -> torch.Tensor:
    """The aligned crops of lfw's images `indices` as N x 3 x h x w uint8: read from `pack` (made from
    this LFW by pydcr pack) when given, else aligned from the images with their landmarks."""
    if pack is not None:
        check_pack(lfw, indices, pack)
        where = {p: i for i, p in enumerate(pack.paths)}
        crops = pack.images([where[lfw.paths[i]] for i in indices])
    else:
        crops = np.empty((len(indices), *lfw.size, 3), dtype=np.uint8)
        bar = progress_bar(len(indices), 0, "align", progress)
        with ThreadPoolExecutor(workers) as pool:  # decoding and warping release the GIL
            for k, (crop, _) in enumerate(pool.map(lambda i: lfw[int(i)], indices)):
                crops[k] = crop
                bar.update()
        bar.close()
    return torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()


def evaluate_lfw(model: DCR, lfw: LFW, folds: Sequence[int] | None = None, sizes: Sequence[int] = (8, 12, 16, 20), *,
                 pca_dim: int | None = None, pack: PackedFaces | None = None, device=None,
                 progress: bool = True) -> VerificationTable:
    """Table I on LFW: HR gallery = each pair's first image, probe = its second degraded to each size;
    verify_10fold over `folds` (default: all ten)."""
    images, first, second, same, fold = _test_pairs(lfw, folds)
    faces = aligned_faces(lfw, images, pack=pack, progress=progress)
    return verification_table(model, faces, first, second, same, fold, sizes, pca_dim=pca_dim, device=device,
                              progress=progress)
