"""A verification table as a report: Markdown, JSON and two plots (accuracy by probe size, ROC curves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._files import atomic_write, naming_write_errors, write_text
from .table import VerificationTable

REPORT_FILES = ("report.md", "report.json", "accuracy.png", "roc.png")  # what write_report writes


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of "same when score >= t" over every threshold t."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(bool)
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(int((~y).sum()), 1)], np.r_[0.0, tp / max(int(y.sum()), 1)]


def _style(row: str, index: int) -> str:
    """A row's marker and line: DCR solid, the trunk dashed, baselines dash-dotted."""
    return {"trunk": "o--", "DCR": "s-"}.get(row, ("^-.", "v-.", "D-.", "x-.")[index % 4])


def plot_accuracy(table: VerificationTable, path: Path) -> Path:
    """Mean accuracy (bars: std over folds) against probe size, a line per model, HR dotted."""
    from matplotlib.figure import Figure

    sized = [c for c in table.columns if c != "HR"]
    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(sized))
    for index, row in enumerate(table.rows):
        cells = [table.cells[c].get(row) for c in sized]
        keep = [i for i, c in enumerate(cells) if c is not None]
        ax.errorbar(x[keep], [100 * cells[i].mean for i in keep], [100 * cells[i].std for i in keep],
                    fmt=_style(row, index), capsize=3, label=row)
    if "HR" in table.cells:
        ax.axhline(100 * table.cells["HR"]["trunk"].mean, color="grey", linestyle=":", label="trunk, HR probes")
    ax.set_xticks(x, sized)
    ax.set_xlabel("probe resolution")
    ax.set_ylabel("verification accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, path, dpi=120)
    return path


def plot_roc(table: VerificationTable, path: Path) -> Path:
    """ROC curves of every column, a line per model (styled as in plot_accuracy)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(table.columns), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(table.columns), sharey=True))
    for ax, col in zip(axes, table.columns):
        for index, row in enumerate(table.rows):
            if row in table.cells[col]:
                fpr, tpr = roc_curve(table.cells[col][row].scores, table.same)
                ax.plot(fpr, tpr, _style(row, index)[1:], label=f"{row} ({100 * table.cells[col][row].mean:.1f}%)")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set_title(f"probe {col}")
        ax.set_xlabel("false positive rate")
        ax.legend(loc="lower right", fontsize="small")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("true positive rate")
    _save_figure(fig, path, dpi=110)
    return path


def _save_figure(fig, path: Path, dpi: int) -> None:
    """In the format `path`'s suffix names (PNG without one), as ``fig.savefig(path)`` would."""
    path = Path(path)
    with atomic_write(path) as tmp, naming_write_errors(path):
        fig.savefig(tmp, format=path.suffix[1:].lower() or "png", dpi=dpi)


def write_report(out_dir: str | Path, title: str, table: VerificationTable, meta: dict) -> list[Path]:
    """report.md (table + meta), report.json, accuracy.png and roc.png in out_dir; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_accuracy(table, out_dir / "accuracy.png"), plot_roc(table, out_dir / "roc.png")]
    write_text(out_dir / "report.json", json.dumps({"title": title, **meta, "table": table.to_dict()}, indent=2))
    lines = [f"# {title}", "", "Verification accuracy (%), mean over the test folds:", "", table.markdown(), ""]
    lines += [f"- {key}: {value}" for key, value in meta.items() if not isinstance(value, (dict, list))]
    lines += ["", "![accuracy by probe resolution](accuracy.png)", "", "![ROC curves](roc.png)", ""]
    write_text(out_dir / "report.md", "\n".join(lines))
    return [out_dir / "report.md", out_dir / "report.json", *written]
