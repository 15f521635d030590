"""`pydcr eval lfw` and `pydcr reproduce lfw` on a tiny synthetic LFW: the folds a reproduction's model
is evaluated on, and packs that will not do refused before any work."""

import json

import cv2
import numpy as np
import pytest
import torch

from pydcr.cli import main
from pydcr.data import LFW, pack
from pydcr.demo import DEMO_PACK
from pydcr.models import DCR, BranchPair, Trunk, load, save
from pydcr.models.people import people_record, trained_on

MARKS = "\t107\t107\t147\t111\t124\t143\t103\t157\t139\t161\n"  # one landmark line's coordinates (250 x 250)


def make_lfw(root, people):
    """An LFW root: two images of each of `people` (A0..A9 and B0..B9 by default), their landmarks,
    and pairs.txt with fold f's pairs A{f} 1-2 (matched) and A{f} 1 - B{f} 1 (mismatched)."""
    rng = np.random.default_rng(0)
    lines = []
    for name in people:
        (root / "lfw" / name).mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in (1, 2):
            image = np.clip(colour + rng.integers(-30, 30, (250, 250, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "lfw" / name / f"{name}_{i:04d}.jpg"), image)
            lines.append(f"{name}/{name}_{i:04d}.jpg" + MARKS)
    (root / "lfw_landmark.txt").write_text("".join(lines))
    (root / "pairs.txt").write_text("10\t1\n" + "".join(f"A{f}\t1\t2\nA{f}\t1\tB{f}\t1\n" for f in range(10)))
    return root


PEOPLE = [f"{x}{f}" for f in range(10) for x in "AB"]


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    return make_lfw(tmp_path_factory.mktemp("lfw"), PEOPLE)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny model at 40x36 that records what `pydcr reproduce lfw` records: its test folds 6-10."""
    torch.manual_seed(0)
    model = DCR(Trunk(width=0.0625, feature_dim=16, input_size=(40, 36)), {8: BranchPair(0, in_dim=16, dim=8)})
    model.provenance = {"data": "LFW (lfw) people outside View 2 folds [6, 7, 8, 9, 10] with >= 2 images: "
                                "20 images of 10 people", "test_folds": [6, 7, 8, 9, 10]}
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save(model, path)
    return path


@pytest.fixture
def evaluated(monkeypatch):
    """The folds evaluate_lfw is called with (0-based; None: all), the call itself going through."""
    import pydcr.eval.lfw

    calls, evaluate = [], pydcr.eval.lfw.evaluate_lfw

    def spy(model, lfw, folds=None, *args, **kwargs):
        calls.append(None if folds is None else sorted(folds))
        return evaluate(model, lfw, folds, *args, **kwargs)

    monkeypatch.setattr(pydcr.eval.lfw, "evaluate_lfw", spy)
    return calls


def eval_lfw(model, root, *args):
    return main(["eval", "lfw", str(model), "--root", str(root), "--sizes", "8", "--quiet", *map(str, args)])


def test_a_reproduction_is_evaluated_on_its_test_folds(lfw, model_file, evaluated, tmp_path, capsys):
    assert eval_lfw(model_file, lfw, "--out", tmp_path / "report") == 0
    assert evaluated == [[5, 6, 7, 8, 9]]
    out = capsys.readouterr().out
    assert out.startswith("eval lfw: View 2 folds 6 7 8 9 10, the test folds m.safetensors records "
                          "(it trained on the LFW people outside them)\n")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["folds"].startswith("6 7 8 9 10, the test")
    assert eval_lfw(model_file, lfw, "--folds", 7, 9) == 0  # some of its test folds
    assert evaluated[1:] == [[6, 8]]


@pytest.mark.parametrize("provenance, folds", [
    ({}, None),  # a model that records no split: every fold
    # saved before the test folds were a key of their own: the data line names them
    ({"data": "LFW (x) people outside View 2 folds [1, 2, 3] with >= 2 images: 9 images of 3 people"}, [0, 1, 2]),
])
def test_the_folds_of_other_models(provenance, folds, lfw, model_file, evaluated, tmp_path):
    model = load(model_file)
    model.provenance = provenance
    save(model, tmp_path / "other.safetensors")
    assert eval_lfw(tmp_path / "other.safetensors", lfw) == 0
    assert evaluated == [folds]


def test_a_model_trained_on_people_of_the_pairs_is_flagged(lfw, model_file, evaluated, tmp_path, capsys):
    # The demo's model, or one trained on an LFW pack, records the people it trained on.
    model = load(model_file)
    model.provenance = {"people": people_record(["A3", "B3", "Someone Else"])}
    save(model, tmp_path / "seen.safetensors")
    assert eval_lfw(tmp_path / "seen.safetensors", lfw, "--out", tmp_path / "report") == 0
    assert capsys.readouterr().err == (f"pydcr eval: warning: {tmp_path / 'seen.safetensors'} trained on 2 of the "
                                       "people in these pairs (e.g. A3): its accuracy here is not that of unseen "
                                       "people\n")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["people trained on"] == "2 of the people in these pairs"
    assert eval_lfw(tmp_path / "seen.safetensors", lfw, "--folds", 1, 2) == 0  # A3 and B3 are in fold 4 only
    assert capsys.readouterr().err == ""


def test_folds_a_reproduction_trained_on_are_refused(lfw, model_file, evaluated, capsys):
    assert eval_lfw(model_file, lfw, "--folds", 1, 2, 6) == 2
    assert capsys.readouterr().err == (
        f"pydcr eval: --folds 1 2 6: {model_file} trained on the LFW people outside View 2 folds 6 7 8 9 10, so "
        "possibly on those of folds 1 2: give folds among 6 7 8 9 10 (the default)\n")
    assert evaluated == []


@pytest.fixture(scope="module")
def packs(lfw, tmp_path_factory):
    """Packs of the tiny LFW at 56x48 and 40x36, all of it ("56x48") or without B9's images ("56x48-B9")."""
    where = tmp_path_factory.mktemp("packs")
    partial = make_lfw(where / "partial", PEOPLE[:-1])
    return {f"{h}x{w}{less}": pack(LFW(root, pairs=None, size=(h, w)), where / f"{h}x{w}{less}.pack", progress=False)
            for h, w in ((56, 48), (40, 36)) for root, less in ((lfw, ""), (partial, "-B9"))}


@pytest.mark.parametrize("which, message", [
    ("56x48", "56x48.pack holds 56x48 crops, the model takes 40x36"),
    ("40x36-B9", "40x36-B9.pack lacks 1 of the images needed, e.g. B9/B9_0001.jpg"),
])
def test_eval_refuses_a_pack_that_will_not_do_before_any_work(which, message, lfw, model_file, packs, evaluated,
                                                             capsys):
    assert eval_lfw(model_file, lfw, "--pack", packs[which]) == 2
    assert capsys.readouterr().err == f"pydcr eval: {packs[which].parent / message}\n"
    assert evaluated == []
    assert eval_lfw(model_file, lfw, "--pack", packs[which], "--folds", 6, 7) == (2 if which == "56x48" else 0)


def test_a_pack_given_as_the_model(lfw, capsys):
    assert eval_lfw(DEMO_PACK, lfw) == 2
    assert capsys.readouterr().err == f"pydcr eval: {DEMO_PACK} is a pack of faces, not a model file\n"


@pytest.mark.parametrize("which, message", [
    ("40x36", "40x36.pack holds 40x36 crops, the small preset trains on 56x48"),
    ("56x48-B9", "56x48-B9.pack lacks 1 of the images needed, e.g. B9/B9_0001.jpg"),
])
def test_reproduce_refuses_a_pack_that_will_not_do_and_makes_no_folder(which, message, lfw, packs, tmp_path,
                                                                      capsys, monkeypatch):
    import pydcr.reproduce

    out = tmp_path / "run"
    monkeypatch.setattr(pydcr.reproduce, "train_trunk", lambda *a, **k: pytest.fail("training started"))
    assert main(["reproduce", "lfw", "--root", str(lfw), "--pack", str(packs[which]), "--out", str(out),
                 "--quiet"]) == 2
    assert capsys.readouterr().err == f"pydcr reproduce: {packs[which].parent / message}\n"
    assert not out.exists()
    with pytest.raises(ValueError, match=message):  # the function, too, before it makes its folder
        pydcr.reproduce.reproduce_lfw(lfw, out, pack_path=packs[which], progress=False)
    assert not out.exists()


def test_a_reproduction_records_its_test_folds_and_names_the_baselines(lfw, packs, tmp_path, monkeypatch):
    """eval lfw of the reproduction's model, on its own, gives the table of the reproduction's report."""
    from pydcr import reproduce

    labels = []  # what each training's progress bar calls its network
    train_trunk = reproduce.train_trunk
    monkeypatch.setattr(reproduce, "train_trunk", lambda *a, **k: labels.append(k.get("label")) or train_trunk(*a, **k))
    out = tmp_path / "run"
    reproduce.reproduce_lfw(lfw, out, preset="demo", epochs=1, sizes=(8,), pack_path=packs["56x48"], progress=False,
                            baselines=True)
    assert labels == [None, "ResNet", "ResNet-FT"]  # the DCR trunk's bar keeps the default, "trunk"
    provenance = load(out / "model.safetensors").provenance
    assert provenance["test_folds"] == [6, 7, 8, 9, 10]
    assert trained_on(provenance, PEOPLE) == sorted(f"{x}{f}" for x in "AB" for f in range(5))  # folds 1-5's
    assert eval_lfw(out / "model.safetensors", lfw, "--pack", packs["56x48"], "--out", tmp_path / "eval",
                    "--device", "cpu") == 0
    assert json.loads((out / "report.json").read_text())["antialias"] is True  # summaries compare it
    table = json.loads((out / "report.json").read_text())["table"]
    evaluated = json.loads((tmp_path / "eval" / "report.json").read_text())["table"]
    assert evaluated == {column: {row: cell for row, cell in cells.items() if row in ("trunk", "DCR")}
                         for column, cells in table.items()}
    # Other test folds train as many people, but other ones: the trunk trained here is not resumed.
    from pydcr.train.checkpoint import OtherRunError

    with pytest.raises(OtherRunError, match=r"holds a run with other settings \(data people:"):
        reproduce.reproduce_lfw(lfw, out, preset="demo", epochs=1, sizes=(8,), test_folds=(0, 2, 4, 6, 8),
                                pack_path=packs["56x48"], progress=False)
    assert main(["reproduce", "lfw", "--root", str(lfw), "--preset", "demo", "--epochs", "1", "--sizes", "8",
                 "--test-folds", "1", "3", "5", "7", "9", "--pack", str(packs["56x48"]), "--out", str(out),
                 "--quiet"]) == 2
    # Nor is it resumed to train on the other bicubic convention's copies.
    with pytest.raises(OtherRunError, match=r"other settings \(antialias True vs False\)"):
        reproduce.reproduce_lfw(lfw, out, preset="demo", epochs=1, sizes=(8,), pack_path=packs["56x48"],
                                progress=False, antialias=False)


@pytest.mark.parametrize("argv, defaults", [
    (["reproduce", "lfw"], ["(default: pydcr-reproduce-lfw)", "(default: 2)", "(default: 8 12 16 20)",
                            "--seed SEED           seed of"]),
    (["eval", "lfw"], ["(default: 8 12 16 20)", "(default: the test folds the model records"]),
])
def test_help_states_the_defaults(argv, defaults, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = capsys.readouterr().out
    for default in defaults:
        assert default in text
