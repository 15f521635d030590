"""Cosine top-k search of probe features in a gallery: exact (torch matmul, chunked) or faiss."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("torch", "faiss")


class ExactIndex:
    """Exact cosine search: normalised gallery chunks on `device`, probes scored chunk by chunk.

    Scores are float32 matmuls; the running top-k is merged across gallery chunks of at most
    `gallery_chunk` rows (however the gallery was added), so memory is one probe chunk x one
    gallery chunk of scores: 256 MiB at the defaults.
    """

    def __init__(self, device: str | torch.device = "cpu", *, probe_chunk: int = 4096,
                 gallery_chunk: int = 16384) -> None:
        self.device = torch.device(device)
        self.probe_chunk = int(probe_chunk)
        self.gallery_chunk = int(gallery_chunk)
        self.chunks: list[torch.Tensor] = []
        self.size = 0
        self.dim: int | None = None

    def add(self, features: torch.Tensor) -> None:
        """Add gallery rows (N x D, finite; a ValueError names what is wrong)."""
        self.dim = _check_features(features, "gallery", self.dim)
        for part in torch.as_tensor(features).split(self.gallery_chunk):
            self.chunks.append(_normalize(part.to(self.device)))
            self.size += len(part)

    @torch.inference_mode()
    def search(self, probes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, gallery rows), each len(probes) x min(k, gallery size), best first."""
        k = min(int(k), self.size)
        scores, rows = [], []
        for q in _normalize(torch.as_tensor(probes).to(self.device)).split(self.probe_chunk):
            best_s = q.new_empty(len(q), 0)
            best_i = torch.empty(len(q), 0, dtype=torch.int64, device=self.device)
            offset = 0
            for g in self.chunks:
                s = q @ g.T
                top = s.topk(min(k, len(g)), dim=1)
                best_s = torch.cat([best_s, top.values], 1)
                best_i = torch.cat([best_i, top.indices + offset], 1)
                keep = best_s.topk(min(k, best_s.shape[1]), dim=1)
                best_s, best_i = keep.values, best_i.gather(1, keep.indices)
                offset += len(g)
            scores.append(best_s.cpu())
            rows.append(best_i.cpu())
        if not scores:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
        return torch.cat(scores), torch.cat(rows)


class FaissIndex:
    """faiss IndexFlatIP on normalised float32 features (exact inner product = cosine)."""

    def __init__(self) -> None:
        self.faiss = import_faiss()
        self.index = None
        self.size = 0
        self.dim: int | None = None

    def add(self, features: torch.Tensor) -> None:
        """Add gallery rows (N x D, finite; a ValueError names what is wrong)."""
        self.dim = _check_features(features, "gallery", self.dim)
        x = _normalize(features).cpu().numpy()
        if self.index is None:
            self.index = self.faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)
        self.size += len(x)

    def search(self, probes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, gallery rows), each len(probes) x min(k, gallery size), best first."""
        q = _normalize(probes).cpu().numpy()
        k = min(int(k), self.size)
        if k == 0:  # nothing added yet: as ExactIndex answers (faiss would assert on k = 0)
            return torch.zeros(len(q), 0), torch.zeros(len(q), 0, dtype=torch.int64)
        scores, rows = self.index.search(q, k)
        return torch.from_numpy(scores), torch.from_numpy(rows).long()


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss backend needs the faiss package (pip install faiss-cpu, or faiss-gpu); "
                          "the default torch backend needs nothing more") from None
    return faiss


def make_index(backend: str = "torch", device: str | torch.device = "cpu"):
    if backend == "torch":
        return ExactIndex(device)
    if backend == "faiss":
        return FaissIndex()
    raise ValueError(f"unknown search backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def topk(gallery: torch.Tensor | Iterable[torch.Tensor], probes: torch.Tensor, k: int = 5, *,
         backend: str = "torch", device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The k gallery rows most cosine-similar to each probe: (scores, rows), best first.

    gallery: an n x D tensor, or an iterable of row chunks (e.g. read from a gallery file).
    """
    if int(k) <= 0:
        raise ValueError(f"k must be positive, got {k}")
    index = make_index(backend, device)
    for chunk in [gallery] if isinstance(gallery, (torch.Tensor, np.ndarray)) else gallery:
        index.add(torch.as_tensor(chunk))
    if index.size == 0:
        raise ValueError("the gallery is empty")
    _check_features(probes, "probe", index.dim)
    return index.search(torch.as_tensor(probes), k)


def _check_features(x, what: str, width: int | None) -> int:
    """Features are N x D rows of finite numbers, D the same as the gallery's; returns D."""
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{what} features must be N x D, got shape {tuple(x.shape)}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{what} features are {x.shape[1]}-d, the gallery's are {width}-d")
    if not torch.isfinite(x).all():  # topk ranks NaN first: one bad row would top every list
        raise ValueError(f"the {what} features hold NaN or infinite values")
    return x.shape[1]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    # detached: features straight from a model outside no_grad require grad, which .numpy() refuses
    return F.normalize(torch.as_tensor(x).detach().float(), dim=1)
