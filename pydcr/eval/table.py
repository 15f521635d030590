"""The paper's Table I: verification of HR gallery faces against probes degraded to k x k.

Each pair's first face is the HR gallery image; the second is degraded to k x k and brought back to
the input size (the probe). Columns are the probe sizes and "HR" (probes left alone); rows are
baseline networks if any (the paper's "ResNet" and "ResNet-FT", say), the trunk alone and DCR (the
branch pair trained for that size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from ..data._progress import progress_bar
from ..models import DCR
from .verification import VerificationResult, verify_10fold


@dataclass
class VerificationTable:
    cells: dict[str, dict[str, VerificationResult]]  # column ("HR", "8x8", ...) -> row ("trunk", "DCR", ...) -> result
    same: np.ndarray  # the pairs' ground truth, for ROC curves of the cells' scores

    @property
    def columns(self) -> list[str]:
        return list(self.cells)

    @property
    def rows(self) -> list[str]:
        """The models, in the order the columns first name them (baselines, trunk, DCR)."""
        return list(dict.fromkeys(row for cells in self.cells.values() for row in cells))

    def to_dict(self) -> dict:
        """Mean, std and per-fold accuracies of every cell (JSON-ready)."""
        return {col: {row: {"mean": r.mean, "std": r.std, "folds": r.accuracies.tolist()} for row, r in cells.items()}
                for col, cells in self.cells.items()}

    def markdown(self) -> str:
        """Mean accuracy in percent, a row per model and a column per probe size."""
        lines = ["| model | " + " | ".join(self.columns) + " |", "|---|" + "---|" * len(self.columns)]
        for row in self.rows:
            cells = [f"{100 * c[row].mean:.1f}" if row in c else "-" for c in self.cells.values()]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _embed(fn, images: torch.Tensor, batch: int, device: torch.device, bar) -> torch.Tensor:
    features = []
    for i in range(0, len(images), batch):
        features.append(fn(images[i : i + batch].to(device)).float().cpu())
        bar.update(len(features[-1]))
    return torch.cat(features)


@torch.no_grad()
def verification_table(
    model: DCR,
    images: torch.Tensor,
    first: np.ndarray,
    second: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    sizes: Sequence[int] = (8, 12, 16, 20),
    *,
    pca_dim: int | None = None,
    batch: int = 256,
    device: str | torch.device | None = None,
    baselines: Mapping[str, torch.nn.Module] | None = None,
    progress: bool = False,
) -> VerificationTable:
    """Table I over pairs (images[first[i]], images[second[i]]) with verify_10fold's protocol.

    images: N x 3 x H x W aligned faces at the model's input size (uint8 or float in [0, 255]).
    A size without a branch pair in `model` gets the trunk row only. The HR column gets a DCR cell
    when the model has a full-size pair (keyed by the input's longer side, 112 for 112x96 crops: the
    paper's Table I DCR at 112x96), the probe at HR through its LR branch. `baselines` maps row names to
    other networks (images -> features, a pydcr.models.Trunk say), evaluated as the trunk is.
    `progress` shows a bar per network while it embeds the faces and every probe size.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.eval().to(device)
    first, second = np.asarray(first), np.asarray(second)
    probe_images, probe_row = np.unique(second, return_inverse=True)  # probe_row: each pair's row in `probes`
    probes = images[torch.from_numpy(probe_images)]

    def verify(a, b):
        return verify_10fold(a, b, same, folds, pca_dim)

    def gallery_and_probes(net, name):
        """Features of each pair's gallery face, and of its probe at HR and at each size."""
        bar = progress_bar(len(images) + len(sizes) * len(probes), 0, f"{name} features", progress)
        v_hr = _embed(net, images, batch, device, bar)
        low = {k: _embed(lambda t: net(ops.degrade(t, k, antialias=model.antialias)), probes, batch, device,
                         bar)[probe_row]
               for k in sizes}
        bar.close()
        return v_hr[first], {"HR": v_hr[second], **{f"{k}x{k}": v for k, v in low.items()}}

    cells = {"HR": {}, **{f"{k}x{k}": {} for k in sizes}}

    def add_row(name, gallery, probe_features):
        for column, p in probe_features.items():
            cells[column][name] = verify(gallery, p)

    for name, net in (baselines or {}).items():
        add_row(name, *gallery_and_probes(net.eval().to(device), name))
    g, trunk_probes = gallery_and_probes(model.embed_trunk, "trunk")
    add_row("trunk", g, trunk_probes)
    # the full-size pair serves the probes left at the input's size
    columns = {**{f"{k}x{k}": k for k in sizes}, "HR": max(model.trunk.input_size)}
    for column, k in columns.items():
        if k in model.resolutions:
            pair = model.branch(k)
            x, z = pair.hr(g.to(device)).float().cpu(), pair.lr(trunk_probes[column].to(device)).float().cpu()
            cells[column]["DCR"] = verify(x, z)
    return VerificationTable(cells, np.asarray(same, dtype=bool))
