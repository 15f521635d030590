"""Verification and identification protocols against brute-force computations."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pydcr.eval import best_threshold, identify, verify_10fold


def brute_force_threshold(scores, same):
    s = np.unique(scores)
    candidates = np.r_[s[0] - 1.0, (s[:-1] + s[1:]) / 2, s[-1] + 0.5]
    acc = [((scores > t) == same).mean() for t in candidates]
    return candidates[int(np.argmax(acc))], max(acc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=1, max_size=40))
def test_best_threshold_matches_brute_force(pairs):
    scores = np.array([p[0] for p in pairs], dtype=np.float64) / 5
    same = np.array([p[1] for p in pairs])
    t = best_threshold(scores, same)
    t_ref, acc_ref = brute_force_threshold(scores, same)
    assert ((scores > t) == same).mean() == acc_ref
    assert t == pytest.approx(t_ref)


def synthetic_pairs(n_pairs=600, dim=32, folds=10, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    ids = rng.normal(size=(n_pairs, dim))
    same = np.arange(n_pairs) % 2 == 0
    g = ids + noise * rng.normal(size=ids.shape)
    other = rng.normal(size=ids.shape)
    p = np.where(same[:, None], ids, other) + noise * rng.normal(size=ids.shape)
    return g, p, same, np.arange(n_pairs) % folds


def reference_protocol(g, p, same, folds, pca_dim):
    """The protocol spelled out with torch: per fold SVD-PCA on the other folds, cosine, brute-force threshold."""
    g, p = torch.tensor(g), torch.tensor(p)
    accs = []
    for f in np.unique(folds):
        tr, te = torch.tensor(folds != f), torch.tensor(folds == f)
        fit = torch.cat([g[tr], p[tr]])
        mu = fit.mean(0)
        basis = torch.linalg.svd(fit - mu, full_matrices=False).Vh[:pca_dim].T if pca_dim else torch.eye(g.shape[1], dtype=g.dtype)
        cos = lambda a, b: torch.nn.functional.cosine_similarity((a - mu) @ basis, (b - mu) @ basis).numpy()  # noqa: E731
        t, _ = brute_force_threshold(cos(g[tr], p[tr]), same[folds != f])
        accs.append(((cos(g[te], p[te]) > t) == same[folds == f]).mean())
    return np.array(accs)


@pytest.mark.parametrize("pca_dim", [None, 8, 32])
def test_verify_10fold_matches_reference(pca_dim):
    g, p, same, folds = synthetic_pairs()
    result = verify_10fold(g, p, same, folds, pca_dim=pca_dim)
    np.testing.assert_allclose(result.accuracies, reference_protocol(g, p, same, folds, pca_dim))
    assert result.mean == pytest.approx(result.accuracies.mean()) and len(result.thresholds) == 10
    assert 0.7 < result.mean <= 1.0  # the synthetic pairs are separable well above chance


def test_no_test_fold_leaks_into_its_own_fit():
    g, p, same, folds = synthetic_pairs(seed=1)
    base = verify_10fold(g, p, same, folds, pca_dim=8)
    g2, p2 = g.copy(), p.copy()
    g2[folds == 3] = np.random.default_rng(9).normal(size=g2[folds == 3].shape) * 100
    p2[folds == 3] = 0.5
    changed = verify_10fold(g2, p2, same, folds, pca_dim=8)
    assert changed.thresholds[3] == base.thresholds[3]  # fold 3's threshold never saw fold 3


def test_verify_errors():
    g, p, same, folds = synthetic_pairs(n_pairs=20, dim=4)
    with pytest.raises(ValueError, match="P x D"):
        verify_10fold(g, p[:, :3], same, folds)
    with pytest.raises(ValueError, match="one entry per pair"):
        verify_10fold(g, p, same[:5], folds)
    with pytest.raises(ValueError, match="pca_dim"):
        verify_10fold(g, p, same, folds, pca_dim=5)
    with pytest.raises(ValueError, match="booleans or 0/1"):  # -1/1 labels, which astype(bool) reads as all same
        verify_10fold(g, p, np.where(same, 1, -1), folds)
    bad = g.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        verify_10fold(bad, p, same, folds)
    assert verify_10fold(g, p, same.astype(int), folds).mean == verify_10fold(g, p, same, folds).mean
    with pytest.raises(ValueError, match="at least one score"):
        best_threshold(np.zeros(0), np.zeros(0, bool))
    scores, labels = [0.1, 0.5, 0.9, 0.3], [0, 1, 1, 0]  # lists and tensors, as verify_10fold takes them
    want = best_threshold(np.array(scores), np.array(labels, bool))
    assert best_threshold(scores, labels) == want == best_threshold(torch.tensor(scores, dtype=torch.float64),
                                                                    torch.tensor(labels))


def test_identify_matches_brute_force():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 16))
    gallery_ids = np.arange(50) * 3
    probe_ids = rng.integers(0, 50, size=200) * 3
    probes = gallery[probe_ids // 3] + 1.5 * rng.normal(size=(200, 16))
    for k in (1, 5):
        result = identify(gallery, gallery_ids, probes, probe_ids, k=k, chunk=64)
        gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        pn = probes / np.linalg.norm(probes, axis=1, keepdims=True)
        top = np.argsort(-(pn @ gn.T), axis=1, kind="stable")[:, :k]
        expected = np.mean([pid in gallery_ids[t] for pid, t in zip(probe_ids, top)])
        assert result.accuracy == pytest.approx(expected)
        assert result.top_ids.shape == (200, k)
    with pytest.raises(ValueError, match="k must be"):
        identify(gallery, gallery_ids, probes, probe_ids, k=51)
    with pytest.raises(ValueError, match="chunk must be positive"):
        identify(gallery, gallery_ids, probes, probe_ids, chunk=0)
    gallery[7, 2] = np.nan  # topk would rank this row first for every probe
    with pytest.raises(ValueError, match="NaN or infinite"):
        identify(gallery, gallery_ids, probes, probe_ids)


def test_scores_are_the_test_fold_scores_behind_the_accuracies():
    g, p, same, folds = synthetic_pairs(seed=2)
    result = verify_10fold(g, p, same, folds, pca_dim=8)
    for f, (acc, t) in enumerate(zip(result.accuracies, result.thresholds)):
        assert acc == ((result.scores[folds == f] > t) == same[folds == f]).mean()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.booleans()), min_size=2, max_size=30))
def test_roc_curve_matches_brute_force(pairs):
    from pydcr.eval.report import roc_curve

    scores = np.array([s for s, _ in pairs], dtype=np.float64)
    same = np.array([y for _, y in pairs])
    fpr, tpr = roc_curve(scores, same)
    points = {(0.0, 0.0)} | {(((scores >= t) & ~same).sum() / max((~same).sum(), 1),
                              ((scores >= t) & same).sum() / max(same.sum(), 1)) for t in np.unique(scores)}
    assert set(zip(fpr.tolist(), tpr.tolist())) == {(float(a), float(b)) for a, b in points}
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
