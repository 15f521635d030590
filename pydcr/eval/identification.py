"""Rank-k identification: each probe against a gallery, cosine similarity."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class IdentificationResult:
    accuracy: float  # fraction of probes whose identity is among the top k gallery entries
    k: int
    top_ids: torch.Tensor  # probes x k gallery identities, best first
    top_scores: torch.Tensor  # probes x k cosine similarities


def identify(gallery_feats, gallery_ids, probe_feats, probe_ids, k: int = 1, chunk: int = 4096) -> IdentificationResult:
    """Rank-k identification by cosine similarity (exact search, in chunks of probes)."""
    g = torch.as_tensor(gallery_feats).float()
    p = torch.as_tensor(probe_feats, device=g.device).float()
    gid = torch.as_tensor(gallery_ids, device=g.device)
    pid = torch.as_tensor(probe_ids, device=g.device)
    if g.dim() != 2 or p.dim() != 2 or g.shape[1] != p.shape[1]:
        raise ValueError(f"features must be G x D and P x D, got {tuple(g.shape)} and {tuple(p.shape)}")
    if gid.shape != (g.shape[0],) or pid.shape != (p.shape[0],):
        raise ValueError("one identity per gallery and per probe feature is needed")
    if not 1 <= k <= g.shape[0]:
        raise ValueError(f"k must be in [1, {g.shape[0]}], got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if not (torch.isfinite(g).all() and torch.isfinite(p).all()):  # topk ranks NaN first
        raise ValueError("the features hold NaN or infinite values")
    g = torch.nn.functional.normalize(g, dim=1)
    top_ids, top_scores = [], []
    for start in range(0, p.shape[0], chunk):
        scores = torch.nn.functional.normalize(p[start : start + chunk], dim=1) @ g.T
        s, i = scores.topk(k, dim=1)
        top_scores.append(s)
        top_ids.append(gid[i])
    top_ids_t = torch.cat(top_ids) if top_ids else gid.new_empty(0, k)
    top_scores_t = torch.cat(top_scores) if top_scores else g.new_empty(0, k)
    hit = (top_ids_t == pid[:, None]).any(dim=1)
    return IdentificationResult(float(hit.double().mean()) if len(hit) else 0.0, k, top_ids_t, top_scores_t)
