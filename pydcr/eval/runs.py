"""Several runs of one verification table (seeds, say) side by side.

One run's table says how a model did on five folds; whether a gap between two rows is the method
or the seed takes several runs. `summarize_runs` gives each cell's mean and standard deviation
over the runs, and each row's difference from a reference row (DCR) per run, paired on the same
folds, with the number of folds where the reference was ahead.
"""

from __future__ import annotations

import json
import math
import reprlib
import statistics
from collections.abc import Sequence
from pathlib import Path

# Report fields that must agree for the runs' tables to be comparable cell by cell (`folds`: the
# folds of a `pydcr eval lfw` report, `test_folds` those of a `pydcr reproduce lfw` one).
_SAME_PROTOCOL = ("test_folds", "folds", "test_pairs", "preset", "epochs", "training_precision", "min_images",
                  "pca_dim", "antialias")
# What a report written before a field was recorded had: the antialiased convention was the only one.
_RECORDED_LATER = {"antialias": True}


def load_report(path: str | Path) -> dict:
    """The report.json of a run folder, or the given report.json; clear errors when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report at {path}: give a run folder or its report.json")
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a report: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("table"), dict):
        raise ValueError(f"{path} is not a report: it has no verification table")
    _check_cells(path, report)
    return report


def _check_cells(path: Path, report: dict) -> None:
    """ValueError naming the file and the first value summarize_runs could not read (a hand-edited
    report), rather than a TypeError from deep in the arithmetic."""
    seed = report.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"{path}: seed must be an int, got {reprlib.repr(seed)}")
    for column, cells in report["table"].items():
        if not isinstance(cells, dict):
            raise ValueError(f"{path}: table[{column!r}] must be an object of rows, got {reprlib.repr(cells)}")
        for row, cell in cells.items():
            where = f"{path}: table[{column!r}][{row!r}]"
            if not isinstance(cell, dict):
                raise ValueError(f"{where} must be an object with mean and folds, got {reprlib.repr(cell)}")
            if not _finite(cell.get("mean")):
                raise ValueError(f"{where}.mean must be a finite number, got {reprlib.repr(cell.get('mean'))}")
            folds = cell.get("folds")
            if not isinstance(folds, list) or not all(map(_finite, folds)):
                raise ValueError(f"{where}.folds must be a list of finite numbers, got {reprlib.repr(folds)}")


def _finite(value) -> bool:
    """A JSON number other than NaN and infinity (which json reads too); not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or isinstance(value, float) and math.isfinite(value)


def _check_comparable(reports: Sequence[dict], names: Sequence[str]) -> None:
    if len(reports) < 2:
        raise ValueError(f"a summary needs at least two runs, got {len(reports)}")
    first = reports[0]
    for name, report in zip(names[1:], reports[1:]):
        if list(report["table"]) != list(first["table"]):
            raise ValueError(f"{name} has columns {list(report['table'])}, {names[0]} {list(first['table'])}")
        for column, cells in report["table"].items():
            if set(cells) != set(first["table"][column]):
                raise ValueError(f"{name} has rows {sorted(cells)} in column {column}, "
                                 f"{names[0]} {sorted(first['table'][column])}")
        for key in _SAME_PROTOCOL:
            ours, theirs = (r.get(key, _RECORDED_LATER.get(key)) for r in (report, first))
            if ours != theirs:
                raise ValueError(f"{name} has {key} = {ours!r}, {names[0]} {theirs!r}: "
                                 "the runs differ in more than their seed")
    seeds = {}  # reports written before the seed was recorded have none
    for name, report in zip(names, reports):
        seed = report.get("seed")
        if seed is not None and seed in seeds:
            raise ValueError(f"{name} and {seeds[seed]} have the same seed, {seed}: one run would count twice")
        seeds.setdefault(seed, name)
    for i, (name, report) in enumerate(zip(names, reports)):  # a copy of a run that records no seed
        twin = next((other for other, earlier in zip(names, reports[:i]) if earlier == report), None)
        if twin is not None:
            raise ValueError(f"{name} and {twin} are the same run (identical reports): one run would count twice")


def _rows(table: dict) -> list[str]:
    return list(dict.fromkeys(row for cells in table.values() for row in cells))


def summarize_runs(reports: Sequence[dict], names: Sequence[str], reference: str = "DCR") -> str:
    """Markdown: each cell's mean ± sd over the runs (percent), then `reference` minus every other
    row per run (points), with the folds of all runs where `reference` is higher.

    reports: report.json contents of runs that differ only in their seed (checked: same columns,
    rows, test folds, preset, epochs, training precision and PCA, no seed twice and no report
    twice); names label them in the list of runs.
    """
    _check_comparable(reports, names)
    tables = [r["table"] for r in reports]
    columns, rows = list(tables[0]), _rows(tables[0])

    def cell(column: str, row: str) -> str:
        if row not in tables[0][column]:
            return "-"
        means = [100 * t[column][row]["mean"] for t in tables]
        return f"{statistics.mean(means):.1f} ± {statistics.stdev(means):.1f}"

    lines = [f"Verification accuracy (%) over {len(reports)} runs: mean ± standard deviation of the runs' "
             "fold means.", "", "| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(cell(c, row) for c in columns) + " |" for row in rows]

    paired = [c for c in columns if reference in tables[0][c]]
    if paired:
        lines += ["", f"{reference} minus each model (points): the mean over runs, each run's difference, and the "
                  f"folds of all runs where {reference} is higher.", "",
                  f"| {reference} minus | " + " | ".join(paired) + " |", "|---|" + "---|" * len(paired)]
        for row in (r for r in rows if r != reference):
            lines.append(f"| {row} | " + " | ".join(_difference(tables, c, reference, row) for c in paired) + " |")
    lines += ["", "Runs:", ""]
    lines += [f"- {name}: `{report.get('command', 'command not recorded')}`" for name, report in zip(names, reports)]
    return "\n".join(lines)


def _difference(tables: Sequence[dict], column: str, a: str, b: str) -> str:
    if b not in tables[0][column]:
        return "-"
    per_run = [100 * (t[column][a]["mean"] - t[column][b]["mean"]) for t in tables]
    higher = sum(x > y for t in tables for x, y in zip(t[column][a]["folds"], t[column][b]["folds"]))
    folds = sum(len(t[column][a]["folds"]) for t in tables)
    runs = " ".join(f"{d:+.1f}" for d in per_run)
    return f"{statistics.mean(per_run):+.1f} ({runs}; {higher}/{folds})"
