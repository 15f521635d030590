"""LFW View 2 verification: per-fold PCA, cosine similarity and a threshold chosen on the other folds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class VerificationResult:
    mean: float  # mean test-fold accuracy
    std: float  # standard deviation over the folds (numpy's default, ddof = 0)
    accuracies: np.ndarray  # per test fold
    thresholds: np.ndarray  # cosine threshold chosen on each fold's training folds
    scores: np.ndarray  # each pair's cosine score, computed while its fold was the test fold (for ROC curves)

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.std:.2f} % over {len(self.accuracies)} folds"


def _as_numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising accuracy of "same when score > threshold" on (scores, same).

    Candidates are the midpoints between consecutive distinct sorted scores, plus one below the
    lowest and one above the highest; ties go to the lowest threshold.
    """
    scores, same = _as_numpy(scores), _as_numpy(same)  # lists and tensors too
    if len(scores) == 0:
        raise ValueError("best_threshold needs at least one score")
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order].astype(np.int64)
    distinct = np.r_[s[1:] != s[:-1], True]  # the last of each run of equal scores
    # Threshold just above s[i] (for i the last of its run): pairs 0..i say "different".
    correct_below = np.cumsum(1 - y)  # different pairs at or below
    correct_above = y.sum() - np.cumsum(y)  # same pairs above
    acc_at = (correct_below + correct_above)[distinct]
    ends = s[distinct]
    nexts = np.r_[ends[1:], ends[-1] + 1.0]
    candidates = np.r_[ends[0] - 1.0, (ends + nexts) / 2]
    accuracies = np.r_[y.sum(), acc_at]
    return float(candidates[int(np.argmax(accuracies))])  # argmax takes the first (lowest) of ties


def fit_pca(fit, dim: int | None):
    """The projection of a PCA fitted on the rows of `fit`, in float64: centring, then the first `dim`
    principal components (None keeps every direction, i.e. centring only; no whitening). The
    returned function takes arrays or tensors and returns arrays."""
    fit = _as_numpy(fit, np.float64)
    mean = fit.mean(axis=0)
    if dim is None:
        return lambda x: _as_numpy(x, np.float64) - mean
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    components = vt[:dim].T
    return lambda x: (_as_numpy(x, np.float64) - mean) @ components


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def verify_10fold(gallery_feats, probe_feats, same, folds, pca_dim: int | None = None) -> VerificationResult:
    """The paper's verification protocol over the folds in `folds` (10 for LFW View 2).

    gallery_feats, probe_feats: P x D features of each pair's first (HR) and second (probe) image.
    same: P booleans. folds: P fold indices. For every test fold, PCA (mean and components) is fitted
    on the gallery and probe features of the other folds only, features are projected on the first
    `pca_dim` components (None keeps them all, i.e. centering only), no whitening; the score is the
    cosine similarity; the threshold is the best one on the other folds (best_threshold).
    """
    g = _as_numpy(gallery_feats, np.float64)
    p = _as_numpy(probe_feats, np.float64)
    same = _as_numpy(same)
    if same.dtype != bool and not np.isin(same, (0, 1)).all():  # e.g. -1/1 labels would all read as True
        raise ValueError(f"same must be booleans or 0/1, got the values {np.unique(same)[:5].tolist()}")
    same = same.astype(bool)
    folds = _as_numpy(folds).astype(np.int64)
    if g.ndim != 2 or g.shape != p.shape:
        raise ValueError(f"gallery and probe features must both be P x D, got {g.shape} and {p.shape}")
    if not (np.isfinite(g).all() and np.isfinite(p).all()):  # one NaN row would spoil every fold's PCA
        raise ValueError("the features hold NaN or infinite values")
    if same.shape != (len(g),) or folds.shape != (len(g),):
        raise ValueError(f"same and folds must hold one entry per pair ({len(g)}), got {same.shape} and {folds.shape}")
    if pca_dim is not None and not 1 <= pca_dim <= g.shape[1]:
        raise ValueError(f"pca_dim must be in [1, {g.shape[1]}] or None, got {pca_dim}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("need at least two folds")

    accuracies, thresholds = [], []
    scores = np.empty(len(g))
    for f in fold_ids:
        test, train = folds == f, folds != f
        project = fit_pca(np.concatenate([g[train], p[train]]), pca_dim)
        threshold = best_threshold(_cosine(project(g[train]), project(p[train])), same[train])
        scores[test] = _cosine(project(g[test]), project(p[test]))
        accuracies.append(float(((scores[test] > threshold) == same[test]).mean()))
        thresholds.append(threshold)
    acc = np.array(accuracies)
    return VerificationResult(float(acc.mean()), float(acc.std()), acc, np.array(thresholds), scores)
