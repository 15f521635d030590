"""Table I (trunk vs DCR by probe size), its report, and the LFW protocol's identity-disjoint split."""

import json

import numpy as np
import pytest
import torch

from pydcr import ops
from pydcr.eval import verify_10fold
from pydcr.eval.report import write_report
from pydcr.eval.table import verification_table
from pydcr.models import DCR, BranchPair, Trunk


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return DCR(Trunk(width=0.0625, feature_dim=16, input_size=(40, 36)), {8: BranchPair(5, in_dim=16, dim=8)}).eval()


def pairs(n_images=40, n_pairs=60, seed=0):
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, n_images, n_pairs), rng.integers(0, n_images, n_pairs)
    return first, second, rng.random(n_pairs) < 0.5, np.arange(n_pairs) % 5


@torch.no_grad()
def test_table_cells_equal_the_protocol_on_directly_computed_features(tiny_model):
    images = torch.randint(0, 256, (40, 3, 40, 36), dtype=torch.uint8)
    first, second, same, folds = pairs()
    table = verification_table(tiny_model, images, first, second, same, folds, sizes=(8, 12), batch=7)
    assert table.columns == ["HR", "8x8", "12x12"] and table.rows == ["trunk", "DCR"]
    assert "DCR" not in table.cells["12x12"]  # no branch pair for 12: the trunk row only
    v = tiny_model.embed_trunk(images)
    low = tiny_model.embed_trunk(ops.degrade(images, 8, antialias=tiny_model.antialias))
    pair = tiny_model.branch(8)
    expected = {
        ("HR", "trunk"): verify_10fold(v[first], v[second], same, folds),
        ("8x8", "trunk"): verify_10fold(v[first], low[second], same, folds),
        ("8x8", "DCR"): verify_10fold(pair.hr(v[first]), pair.lr(low[second]), same, folds),
    }
    for (col, row), ref in expected.items():
        np.testing.assert_allclose(table.cells[col][row].accuracies, ref.accuracies)
        np.testing.assert_allclose(table.cells[col][row].scores, ref.scores, atol=1e-5)


@torch.no_grad()
def test_baseline_rows_are_evaluated_as_the_trunk(tiny_model):
    images = torch.randint(0, 256, (40, 3, 40, 36), dtype=torch.uint8)
    first, second, same, folds = pairs(seed=1)
    torch.manual_seed(1)
    other = Trunk(width=0.0625, feature_dim=16, input_size=(40, 36)).eval()
    table = verification_table(tiny_model, images, first, second, same, folds, sizes=(8,),
                               baselines={"ResNet": other, "same trunk": tiny_model.trunk})
    assert table.rows == ["ResNet", "same trunk", "trunk", "DCR"]
    low = other(ops.degrade(images, 8, antialias=tiny_model.antialias))
    ref = verify_10fold(other(images)[first], low[second], same, folds)
    np.testing.assert_allclose(table.cells["8x8"]["ResNet"].accuracies, ref.accuracies)
    for column in ("HR", "8x8"):  # the model's own trunk as a baseline gives the trunk row
        np.testing.assert_array_equal(table.cells[column]["same trunk"].accuracies,
                                      table.cells[column]["trunk"].accuracies)
    assert "| ResNet |" in table.markdown()


def test_embedding_shows_a_bar_per_network_unless_quiet(tiny_model, capsys):
    """Every image at HR and every probe at each size: a silent wait of minutes on a CPU without a bar."""
    images = torch.randint(0, 256, (40, 3, 40, 36), dtype=torch.uint8)
    first, second, same, folds = pairs()
    other = Trunk(width=0.0625, feature_dim=16, input_size=(40, 36)).eval()
    verification_table(tiny_model, images, first, second, same, folds, sizes=(8, 12), batch=7,
                       baselines={"ResNet": other}, progress=True)
    err = capsys.readouterr().err
    total = 40 + 2 * len(np.unique(second))  # the HR pass over every image, then the probes at 8 and 12
    for name in ("ResNet", "trunk"):
        assert f"{name} features: 100%" in err and f"{total}/{total}" in err, err
    verification_table(tiny_model, images, first, second, same, folds, sizes=(8,), progress=False)
    assert capsys.readouterr().err == ""


def test_report_files(tiny_model, tmp_path):
    images = torch.randint(0, 256, (40, 3, 40, 36), dtype=torch.uint8)
    table = verification_table(tiny_model, images, *pairs(), sizes=(8,))
    written = write_report(tmp_path, "tiny", table, {"preset": "x", "minutes": 0.1})
    assert {p.name for p in written} == {"report.md", "report.json", "accuracy.png", "roc.png"}
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["table"]["8x8"]["DCR"]["mean"] == pytest.approx(table.cells["8x8"]["DCR"].mean)
    assert table.markdown() in (tmp_path / "report.md").read_text()
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in ("accuracy.png", "roc.png"))


@pytest.mark.data
def test_lfw_disjoint_split_keeps_test_people_out(lfw_root):
    from pydcr.data import LFW
    from pydcr.eval.lfw import lfw_disjoint_split

    lfw = LFW(lfw_root)
    split = lfw_disjoint_split(lfw, [5, 6, 7, 8, 9], min_images=2)
    names = np.array(lfw.classes)[np.asarray(lfw.labels)]
    test_people = set(names[split.test_indices])
    train_people = set(names[split.train_indices])
    assert not test_people & train_people
    assert set(np.unique(split.folds)) == {5, 6, 7, 8, 9} and len(split.first) == 3000
    # every pair of the test folds, in order, with its images
    chosen = np.isin(lfw.pairs.fold, [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(split.test_indices[split.first], lfw.pairs.first[chosen])
    np.testing.assert_array_equal(split.test_indices[split.second], lfw.pairs.second[chosen])
    # labels are 0..C-1, one per kept person, each with at least two images
    counts = np.bincount(split.train_labels)
    assert len(counts) == split.num_classes and counts.min() >= 2
    assert len(train_people) == split.num_classes


@pytest.mark.data
def test_eval_lfw_command_reports_the_library_table(lfw_root, tiny_model, tmp_path, capsys):
    from pydcr.cli import main
    from pydcr.data import LFW
    from pydcr.eval.lfw import evaluate_lfw
    from pydcr.models import save

    save(tiny_model, tmp_path / "m.safetensors")
    argv = ["eval", "lfw", str(tmp_path / "m.safetensors"), "--root", str(lfw_root), "--folds", "1", "2",
            "--sizes", "8", "--out", str(tmp_path / "report"), "--quiet"]
    assert main(argv) == 0
    expected = evaluate_lfw(tiny_model, LFW(lfw_root, size=(40, 36)), [0, 1], [8], progress=False)
    captured = capsys.readouterr()
    assert expected.markdown() in captured.out and "features" not in captured.err  # --quiet: no bar
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["table"]["8x8"]["DCR"]["folds"] == pytest.approx(expected.cells["8x8"]["DCR"].accuracies.tolist())
    assert main(["eval", "lfw", str(tmp_path / "m.safetensors"), "--root", str(tmp_path)]) == 2
