"""Table I (trunk vs DCR by probe size), its report, and the LFW protocol's identity-disjoint split."""

import json

import numpy as np
import pytest
import torch

from pydcr import ops
from pydcr.eval import verify_10fold
from pydcr.eval.report import plot_accuracy, plot_roc, roc_curve, write_report
from pydcr.eval.table import VerificationTable, verification_table
from pydcr.eval.verification import VerificationResult
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
def test_a_full_size_pair_gives_the_hr_column_a_dcr_cell():
    """The paper's Table I has DCR at 112x96: the pair keyed by the input's longer side, the probe
    left at the input's size."""
    torch.manual_seed(0)
    model = DCR(Trunk(width=0.0625, feature_dim=16, input_size=(40, 36)),
                {8: BranchPair(5, in_dim=16, dim=8), 40: BranchPair(5, in_dim=16, dim=8)}).eval()
    images = torch.randint(0, 256, (40, 3, 40, 36), dtype=torch.uint8)
    first, second, same, folds = pairs(seed=2)
    table = verification_table(model, images, first, second, same, folds, sizes=(8,))
    assert table.rows == ["trunk", "DCR"] and set(table.cells["HR"]) == {"trunk", "DCR"}
    v, pair = model.embed_trunk(images), model.branch(40)
    ref = verify_10fold(pair.hr(v[first]), pair.lr(v[second]), same, folds)
    np.testing.assert_allclose(table.cells["HR"]["DCR"].accuracies, ref.accuracies)
    np.testing.assert_allclose(table.cells["HR"]["DCR"].scores, ref.scores, atol=1e-5)


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


def small_table() -> VerificationTable:
    """Cells made up directly: the trunk in every column, DCR at 8x8 only (as for a size without a pair)."""
    rng = np.random.default_rng(0)
    same = np.arange(40) % 2 == 0

    def cell(folds):
        acc = np.asarray(folds, dtype=float)
        return VerificationResult(acc.mean(), acc.std(), acc, np.zeros_like(acc), same + rng.normal(0, 0.7, len(same)))

    return VerificationTable({"HR": {"trunk": cell([0.95, 0.97])},
                              "8x8": {"trunk": cell([0.70, 0.74]), "DCR": cell([0.80, 0.86])},
                              "12x12": {"trunk": cell([0.78, 0.80])}}, same)


@pytest.fixture
def saved(monkeypatch):
    """(figure, dpi) of every figure saved, still saved as usual."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: figures.append((fig, kw.get("dpi", fig.dpi)))
                        or save(fig, path, **kw))
    return figures


@pytest.mark.parametrize("plot", [plot_accuracy, plot_roc])
def test_plots_write_a_png_of_their_figure_and_leave_none_open(plot, saved, tmp_path):
    import matplotlib.image
    import matplotlib.pyplot as plt
    from PIL import Image

    open_before = plt.get_fignums()
    assert plot(small_table(), tmp_path / "plot.png") == tmp_path / "plot.png"
    assert plt.get_fignums() == open_before  # a figure left to pyplot would pile up, one per report
    (fig, dpi), = saved
    with Image.open(tmp_path / "plot.png") as image:
        assert image.format == "PNG" and image.size == tuple(np.round(fig.get_size_inches() * dpi).astype(int))
    pixels = matplotlib.image.imread(tmp_path / "plot.png")
    assert pixels.shape[:2] == image.size[::-1] and pixels.std() > 0  # decodes, and is not one flat colour


@pytest.mark.parametrize("plot", [plot_accuracy, plot_roc])
@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<svg")])
def test_plots_take_the_format_from_the_suffix(plot, suffix, magic, tmp_path):
    data = plot(small_table(), tmp_path / f"plot{suffix}").read_bytes()
    assert magic in data[:1000]


def test_accuracy_plot_draws_each_row_mean_per_probe_size(saved, tmp_path):
    t = small_table()
    plot_accuracy(t, tmp_path / "a.png")
    (fig, _), = saved
    (ax,) = fig.axes
    sized = ["8x8", "12x12"]  # HR is the dotted line
    assert [label.get_text() for label in ax.get_xticklabels()] == sized
    lines = {bars.get_label(): bars.lines[0] for bars in ax.containers}
    assert list(lines) == t.rows
    for row, line in lines.items():
        at = [i for i, c in enumerate(sized) if row in t.cells[c]]  # DCR has no 12x12 point
        np.testing.assert_array_equal(line.get_xdata(), at)
        np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float),
                                   [100 * t.cells[sized[i]][row].mean for i in at])
    hr = next(line for line in ax.lines if line.get_label() == "trunk, HR probes")
    np.testing.assert_allclose(hr.get_ydata(), 100 * t.cells["HR"]["trunk"].mean)


def test_roc_plot_has_a_panel_per_column_with_each_row_curve(saved, tmp_path):
    t = small_table()
    plot_roc(t, tmp_path / "roc.png")
    (fig, _), = saved
    assert [ax.get_title() for ax in fig.axes] == [f"probe {c}" for c in t.columns]
    for ax, column in zip(fig.axes, t.columns):
        curves = [line for line in ax.lines if not line.get_label().startswith("_")]  # less the diagonal
        assert [line.get_label().split(" (")[0] for line in curves] == list(t.cells[column])
        for line, cell in zip(curves, t.cells[column].values()):
            fpr, tpr = roc_curve(cell.scores, t.same)
            np.testing.assert_array_equal(line.get_xdata(), fpr)
            np.testing.assert_array_equal(line.get_ydata(), tpr)


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
