"""Summaries of several runs of a verification table (`pydcr reproduce summary`)."""

import json
import re
import statistics

import numpy as np
import pytest

from pydcr.cli import main
from pydcr.eval.report import write_report
from pydcr.eval.runs import load_report, summarize_runs
from pydcr.eval.table import VerificationTable
from pydcr.eval.verification import VerificationResult


def result(folds) -> VerificationResult:
    acc = np.asarray(folds, dtype=float)
    return VerificationResult(acc.mean(), acc.std(), acc, np.zeros_like(acc), np.linspace(-1, 1, 10))


def table(trunk_8, dcr_8, trunk_hr=(0.9, 0.9)) -> VerificationTable:
    same = np.arange(10) % 2 == 0
    return VerificationTable({"HR": {"trunk": result(trunk_hr)}, "8x8": {"trunk": result(trunk_8), "DCR": result(dcr_8)}},
                             same)


def report(t: VerificationTable, **meta) -> dict:
    return {"command": "pydcr reproduce lfw", "test_folds": [6, 7], "preset": "small", **meta, "table": t.to_dict()}


def row_of(text: str, name: str) -> list[str]:
    """The cells of the first table row named `name`."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")[1:]]


def test_cells_are_mean_and_sd_of_the_runs_fold_means():
    runs = [table((0.80, 0.84), (0.86, 0.82)), table((0.70, 0.72), (0.75, 0.73)), table((0.78, 0.76), (0.77, 0.79))]
    text = summarize_runs([report(t) for t in runs], ["a", "b", "c"])
    trunk_means = [100 * np.mean(t.cells["8x8"]["trunk"].accuracies) for t in runs]
    dcr_means = [100 * np.mean(t.cells["8x8"]["DCR"].accuracies) for t in runs]
    assert row_of(text, "trunk") == ["90.0 ± 0.0", f"{statistics.mean(trunk_means):.1f} ± {statistics.stdev(trunk_means):.1f}"]
    assert row_of(text, "DCR") == ["-", f"{statistics.mean(dcr_means):.1f} ± {statistics.stdev(dcr_means):.1f}"]


def test_paired_differences_and_folds_where_dcr_is_higher():
    # DCR is higher in folds: run 1 one of two (0.86 > 0.80, 0.82 < 0.84), run 2 both; a tie is not higher.
    runs = [table((0.80, 0.84), (0.86, 0.82)), table((0.70, 0.72), (0.75, 0.73)), table((0.5, 0.5), (0.5, 0.5))]
    text = summarize_runs([report(t) for t in runs], ["a", "b", "c"])
    diffs = [100 * (t.cells["8x8"]["DCR"].mean - t.cells["8x8"]["trunk"].mean) for t in runs]
    per_run = " ".join(f"{d:+.1f}" for d in diffs)
    paired = text.split("| DCR minus |")[1]
    assert row_of(paired, "trunk") == [f"{statistics.mean(diffs):+.1f} ({per_run}; 3/6)"]


def test_runs_are_listed_with_their_commands():
    runs = [report(table((0.8, 0.8), (0.8, 0.8)), command=f"pydcr reproduce lfw --seed {s}") for s in (0, 1)]
    text = summarize_runs(runs, ["first", "second"])
    assert "- first: `pydcr reproduce lfw --seed 0`" in text
    assert "- second: `pydcr reproduce lfw --seed 1`" in text


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(test_folds=[1, 2]), "test_folds"),
    (lambda r: r.update(folds=[3, 4, 5]), "folds"),  # as `pydcr eval lfw --folds` records them
    (lambda r: r.update(preset="paper"), "preset"),
    (lambda r: r.update(training_precision="bfloat16 autocast"), "training_precision"),
    (lambda r: r.update(antialias=False), "antialias = False"),  # against a report that predates the field

    (lambda r: r["table"].pop("HR"), "columns"),
    (lambda r: r["table"]["8x8"].pop("DCR"), "rows"),
])
def test_runs_that_differ_in_more_than_the_seed_are_refused(change, message):
    a, b = report(table((0.8, 0.8), (0.8, 0.8))), report(table((0.8, 0.8), (0.8, 0.8)))
    change(b)
    with pytest.raises(ValueError, match=message):
        summarize_runs([a, b], ["a", "b"])


def test_a_report_that_predates_the_antialias_field_is_antialiased():
    a, b = report(table((0.8, 0.8), (0.8, 0.8)), seed=0), report(table((0.8, 0.8), (0.8, 0.8)), seed=1)
    b["antialias"] = True
    summarize_runs([a, b], ["a", "b"])  # no refusal


def test_a_seed_may_not_count_twice():
    runs = [report(table((0.8, 0.8), (0.8, 0.8)), seed=s) for s in (0, 1, 0)]
    with pytest.raises(ValueError, match="c and a have the same seed, 0"):
        summarize_runs(runs, ["a", "b", "c"])
    summarize_runs(runs[:2], ["a", "b"])


def test_a_run_may_not_count_twice_without_a_seed(tmp_path, capsys):
    """Reports that record no seed (written before it was recorded): the same run given twice, by
    two paths to it or as a copy, is refused."""
    runs = [report(table((0.8, 0.8), (0.8, 0.8)), command=f"pydcr reproduce lfw --seed {s}") for s in (0, 1)]
    with pytest.raises(ValueError, match="c and a are the same run"):
        summarize_runs([*runs, dict(runs[0])], ["a", "b", "c"])
    for name, run in zip(("seed0", "seed1", "copy"), [*runs, runs[0]]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(run))
    for twice, message in [
        ((tmp_path / "seed0", tmp_path / "seed0" / "report.json"), "are the same run: one run would count twice"),
        ((tmp_path / "seed0", tmp_path / "seed1" / ".." / "seed0"), "are the same run: one run would count twice"),
        ((tmp_path / "seed0", tmp_path / "copy"), "are the same run (identical reports)"),
    ]:
        assert main(["reproduce", "summary", str(tmp_path / "seed1"), *map(str, twice)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pydcr reproduce: {twice[1]} and {twice[0]} ") and message in err
        assert len(err.splitlines()) == 1


def test_one_run_is_not_a_summary():
    with pytest.raises(ValueError, match="at least two runs"):
        summarize_runs([report(table((0.8, 0.8), (0.8, 0.8)))], ["a"])


def test_load_report_reads_what_write_report_writes(tmp_path):
    t = table((0.80, 0.84), (0.86, 0.82))
    write_report(tmp_path / "run", "tiny", t, {"preset": "small"})
    for path in (tmp_path / "run", tmp_path / "run" / "report.json"):
        assert load_report(path)["table"] == json.loads(json.dumps(t.to_dict()))


def test_load_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report"):
        load_report(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a report"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="no verification table"):
        load_report(tmp_path / "other.json")



def cell(r: dict, column: str = "8x8", row: str = "DCR") -> dict:
    return r["table"][column][row]


@pytest.mark.parametrize("edit, message", [
    (lambda r: cell(r).update(mean="0.8"), r"table\['8x8'\]\['DCR'\].mean must be a finite number, got '0.8'"),
    (lambda r: r["table"]["8x8"].update(DCR=5), r"table\['8x8'\]\['DCR'\] must be an object with mean and folds, got 5"),
    (lambda r: cell(r).update(mean=float("nan")), r"table\['8x8'\]\['DCR'\].mean must be a finite number, got nan"),
    (lambda r: cell(r, "HR", "trunk").update(mean=float("inf")),
     r"table\['HR'\]\['trunk'\].mean must be a finite number, got inf"),
    (lambda r: cell(r).update(mean=True), r"table\['8x8'\]\['DCR'\].mean must be a finite number, got True"),
    (lambda r: cell(r).pop("folds"), r"table\['8x8'\]\['DCR'\].folds must be a list of finite numbers, got None"),
    (lambda r: cell(r, row="trunk")["folds"].append("0.8"),
     r"table\['8x8'\]\['trunk'\].folds must be a list of finite numbers, got \[0.8, 0.84, '0.8'\]"),
    (lambda r: r["table"].update(HR=[0.9]), r"table\['HR'\] must be an object of rows, got \[0.9\]"),
    (lambda r: r.update(seed=[1]), r"seed must be an int, got \[1\]"),
])
def test_malformed_cells_name_the_file_and_the_cell(tmp_path, capsys, edit, message):
    """A hand-edited report.json: one line naming it and the value summarize_runs cannot read, exit 2."""
    good, bad = report(table((0.8, 0.84), (0.86, 0.82)), seed=0), report(table((0.8, 0.84), (0.75, 0.73)), seed=1)
    edit(bad)
    for name, run in (("good", good), ("bad", bad)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path / 'bad' / 'report.json'}: ") + message + "$"):
        load_report(tmp_path / "bad")
    assert main(["reproduce", "summary", str(tmp_path / "good"), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pydcr reproduce: {tmp_path / 'bad' / 'report.json'}: ") and len(err.splitlines()) == 1


def test_summary_command_prints_and_writes(tmp_path, capsys):
    for seed, dcr in enumerate([(0.86, 0.82), (0.75, 0.73)]):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "report.json").write_text(json.dumps(report(table((0.8, 0.84), dcr))))
    out = tmp_path / "summary" / "runs.md"
    assert main(["reproduce", "summary", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert main(["reproduce", "summary", str(tmp_path / "seed0")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    before = (tmp_path / "seed1" / "report.json").read_text()
    argv = ["reproduce", "summary", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out"]
    assert main([*argv, str(tmp_path / "seed1" / "report.json")]) == 2  # not over one of its own inputs
    assert "is the input" in capsys.readouterr().err
    assert (tmp_path / "seed1" / "report.json").read_text() == before
    # nor over any other file the runs hold: their report.md, model, a checkpoint in a subfolder
    (tmp_path / "seed0" / "trunk").mkdir()
    held = [tmp_path / "seed0" / name for name in ("report.md", "model.safetensors", "trunk/last.pt")]
    for path in held:
        path.write_text("the run's own")
        assert main([*argv, str(path)]) == 2
        assert f"cannot write {path}: it is the input" in capsys.readouterr().err
        assert path.read_text() == "the run's own"
    runs_as_files = ["reproduce", "summary", str(tmp_path / "seed0" / "report.json"), str(tmp_path / "seed1"), "--out"]
    assert main([*runs_as_files, str(held[0])]) == 2  # a report.json given: the files beside it too
    assert held[0].read_text() == "the run's own"
    assert main(["reproduce", "summary", str(tmp_path / "seed0"), str(tmp_path / "missing")]) == 2
    assert "no report" in capsys.readouterr().err


def test_a_refused_summary_makes_no_folder(tmp_path, capsys):
    """--out's missing folders are made only for the write: a refused run leaves the tree as it was."""
    for seed, dcr in enumerate([(0.86, 0.82), (0.75, 0.73)]):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "report.json").write_text(json.dumps(report(table((0.8, 0.84), dcr))))
    before = sorted(tmp_path.rglob("*"))
    argv = ["reproduce", "summary", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out"]
    for out, message in [
        ("new/../seed1/report.json", "it is the input"),  # an input, named through a folder still to be made
        ("new/../seed0", "it is a folder"),
        ("seed0/report.json/new/runs.md", "is a file, not a folder"),
    ]:
        assert main([*argv, str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["reproduce", "summary", str(tmp_path / "seed0"), str(tmp_path / "missing"),
                 "--out", str(tmp_path / "new" / "runs.md")]) == 2
    assert sorted(tmp_path.rglob("*")) == before
    assert main([*argv, str(tmp_path / "new" / "deeper" / "runs.md")]) == 0
    assert (tmp_path / "new" / "deeper" / "runs.md").read_text() == capsys.readouterr().out
