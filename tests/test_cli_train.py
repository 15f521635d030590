"""`pydcr train trunk` / `pydcr train branch`: a tiny run end to end, and argument errors."""

import json

import pytest

from pydcr.cli import main
from pydcr.data import PackedFaces
from pydcr.models.people import trained_on
from pydcr.models import load, save


@pytest.fixture(scope="module")
def tiny_pack(synthetic_pack):
    """16 synthetic 112 x 96 'faces' of 4 people."""
    return synthetic_pack((112, 96))


@pytest.mark.parametrize("amp", [[], ["--amp"]])
def test_trunk_then_branches(amp, tiny_pack, tmp_path):
    run = tmp_path / "run"
    common = ["--data", str(tiny_pack), "--preset", "cpu", "--epochs", "1", "--quiet", *amp]
    assert main(["train", "trunk", "--out", str(run), "--width", "0.125", "--batch-size", "8", *common]) == 0
    model = load(run / "model.safetensors")
    assert model.resolutions == [] and model.provenance["preset"] == "cpu"
    with PackedFaces(tiny_pack) as faces:  # recorded for eval lfw's warning, without the names
        assert trained_on(model.provenance, [*faces.classes, "someone else"]) == sorted(faces.classes)
        assert not any(f'"{name}"' in json.dumps(model.provenance) for name in faces.classes)
    assert main(["train", "branch", "--trunk", str(run), "--size", "8", "12", *common]) == 0
    model = load(run / "model.safetensors")
    assert model.resolutions == [8, 12] and set(model.provenance["branches"]) == {"8", "12"}


def test_rerunning_a_finished_trunk_keeps_the_pairs(tiny_pack, tmp_path, capsys):
    # Step 1's "rerun to resume" after step 2 must not write the trunk alone over the pairs.
    run = tmp_path / "run"
    common = ["--data", str(tiny_pack), "--epochs", "1", "--quiet"]
    trunk = ["train", "trunk", "--out", str(run), "--width", "0.0625", "--batch-size", "8", *common]
    assert main(trunk) == 0
    assert main(["train", "branch", "--trunk", str(run), "--size", "8", *common]) == 0
    model = (run / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(trunk) == 0
    assert "already complete" in capsys.readouterr().out
    assert (run / "model.safetensors").read_bytes() == model
    assert main(["train", "trunk", "--out", str(run / "model.safetensors"), *common]) == 2  # a file, not a run folder
    assert "is a file" in capsys.readouterr().err


def test_branch_pairs_default_to_the_trunks_preset(tiny_pack, tmp_path):
    # A paper trunk gets the paper's 512-d pairs, not the cpu preset's 256-d ones.
    run = tmp_path / "run"
    common = ["--data", str(tiny_pack), "--epochs", "1", "--quiet"]
    assert main(["train", "trunk", "--out", str(run), "--preset", "paper", "--width", "0.0625", "--batch-size", "8",
                 *common]) == 0
    assert main(["train", "branch", "--trunk", str(run), "--size", "8", *common]) == 0
    model = load(run / "model.safetensors")
    assert model.branch(8).dim == 512 and model.provenance["branches"]["8"]["preset"] == "paper"
    # A model that records no preset gets the cpu preset's.
    bare = load(run / "model.safetensors")
    bare.remove_branch(8)
    bare.provenance = {}
    save(bare, tmp_path / "bare.safetensors")
    assert main(["train", "branch", "--trunk", str(tmp_path / "bare.safetensors"), "--size", "8", *common]) == 0
    model = load(tmp_path / "bare.safetensors")
    assert model.branch(8).dim == 256 and model.provenance["branches"]["8"]["preset"] == "cpu"


def test_a_rerun_with_other_settings_is_refused(tiny_pack, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "trunk", "--data", str(tiny_pack), "--out", str(run), "--epochs", "1", "--quiet"]
    assert main([*argv, "--width", "0.125", "--batch-size", "8"]) == 0
    model = (run / "model.safetensors").read_bytes()
    for other, message in [(["--width", "0.0625", "--batch-size", "8"], "width 0.125 vs 0.0625"),
                           (["--width", "0.125", "--batch-size", "4"], "batch_size 8 vs 4"),
                           (["--width", "0.125", "--batch-size", "8", "--no-antialias"], "antialias True vs False")]:
        capsys.readouterr()
        assert main([*argv, *other]) == 2
        assert capsys.readouterr().err == (f"pydcr train: {run} holds a run with other settings ({message}); "
                                           "use another --out or delete it\n")
    assert (run / "model.safetensors").read_bytes() == model  # its provenance not rewritten


def test_the_training_kernel_is_chosen_and_recorded(tiny_pack, tmp_path):
    """--no-antialias trains on a = -0.75 copies; the model records it, so step 2 and evaluation
    degrade as the trunk learnt."""
    run = tmp_path / "run"
    common = ["--data", str(tiny_pack), "--epochs", "1", "--quiet"]
    assert main(["train", "trunk", "--out", str(run), "--width", "0.0625", "--batch-size", "8", "--no-antialias",
                 *common]) == 0
    model = load(run / "model.safetensors")
    assert model.antialias is False and model.provenance["trunk"]["antialias"] is False


def test_a_truncated_checkpoint_is_an_input_error(tiny_pack, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    assert main(["train", "trunk", "--data", str(tiny_pack), "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pydcr train: cannot read checkpoint {run / 'checkpoint.pt'} (") and err.count("\n") == 1
    assert "delete it to start the run afresh" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "trunk", "--data", "/no/such/pack", "--out", "OUT"], "no such pack file or dataset folder"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--preset", "huge"], "unknown preset 'huge'"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--preset", "demo"], "holds 112x96 crops"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--epochs", "0"], "--epochs must be positive"),
        (["train", "branch", "--trunk", "OUT", "--data", "PACK", "--size", "0"], "--size must be positive"),
        (["train", "branch", "--trunk", "OUT", "--data", "PACK", "--size", "8"], "no trained model"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--width", "nan"], "--width must be positive and finite"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--width", "inf"], "--width must be positive and finite"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--seed", "100000000000000"], "--seed must be within"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--device", "mps"], "pydcr runs on cpu or cuda"),
        (["train", "trunk", "--data", "PACK", "--out", "OUT", "--device", "meta"], "pydcr runs on cpu or cuda"),
    ],
)
def test_argument_errors(argv, message, tiny_pack, tmp_path, capsys):
    argv = [str(tiny_pack) if a == "PACK" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_model_without_its_run_is_not_replaced(tiny_pack, tmp_path, capsys):
    """Step 1 into a folder whose model.safetensors it did not make (its checkpoint gone): refused,
    as the new trunk would replace that model and its pairs."""
    run = tmp_path / "run"
    common = ["--data", str(tiny_pack), "--epochs", "1", "--quiet"]
    trunk = ["train", "trunk", "--out", str(run), "--width", "0.0625", "--batch-size", "8", *common]
    assert main(trunk) == 0
    assert main(["train", "branch", "--trunk", str(run), "--size", "8", "8", "--seed", "3", *common]) == 0
    model = load(run / "model.safetensors")
    assert model.resolutions == [8]  # one pair however often the size is named
    assert model.provenance["branches"]["8"]["seed"] == 3 and model.provenance["branches"]["8"]["amp"] is False
    made = (run / "model.safetensors").read_bytes()
    (run / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert main([*trunk, "--seed", "1"]) == 2
    assert "exists, but no run to resume" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == made


def test_step_2_on_a_trunk_run_that_has_not_finished(tiny_pack, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")  # as a stopped run leaves it: a checkpoint, no model
    assert main(["train", "branch", "--trunk", str(run), "--data", str(tiny_pack), "--size", "8", "--quiet"]) == 2
    assert "has not finished: run its `pydcr train trunk` command again" in capsys.readouterr().err


def test_step_2_names_the_trunk_when_the_crops_do_not_fit(synthetic_pack, tmp_path, capsys):
    run = tmp_path / "run"
    small = synthetic_pack((56, 48))
    assert main(["train", "trunk", "--data", str(synthetic_pack((112, 96))), "--out", str(run), "--width", "0.0625",
                 "--batch-size", "8", "--epochs", "1", "--quiet"]) == 0
    assert main(["train", "branch", "--trunk", str(run), "--data", str(small), "--size", "8", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"holds 56x48 crops; the trunk in {run / 'model.safetensors'} takes 112x96: pack the faces at that size")


def test_an_interrupt_exits_130_without_a_traceback(monkeypatch, capsys):
    import pydcr.cli_train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pydcr.cli_train, "run_branch", interrupted)
    assert main(["train", "branch", "--trunk", "T", "--data", "D", "--size", "8"]) == 130
    assert capsys.readouterr().err == "pydcr train: interrupted (outputs are written whole, so none is left half-written)\n"


def test_a_stopped_demo_exits_130(monkeypatch, tmp_path):
    import pydcr.demo

    monkeypatch.setattr(pydcr.demo, "run_demo", lambda *args, **kwargs: {})  # what a stopped run returns
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 130


def test_tensorboard_without_the_package_is_a_usage_error(tiny_pack, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    argv = ["train", "trunk", "--data", str(tiny_pack), "--out", str(tmp_path / "out"), "--tensorboard"]
    assert main(argv) == 2
    assert "pip install 'pydcr[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.fixture
def lfw_like_root(tmp_path):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "pairs.txt").write_text("10 300\n")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--root", "/nonexistent"], "is not an LFW root"),
    (["--preset", "nope"], "unknown preset"),
    (["--test-folds", "6", "11"], "--test-folds"),
    (["--sizes", "0", "8"], "--sizes must be positive"),
])
def test_reproduce_argument_errors(args, message, lfw_like_root, capsys):
    argv = ["reproduce", "lfw", "--root", str(lfw_like_root), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_preset_a_model_records():
    from types import SimpleNamespace

    from pydcr.cli_train import trained_preset

    def model(**provenance):
        return SimpleNamespace(provenance=provenance)

    pairs = {"20": {"preset": "paper"}, "30": {"preset": "paper"}, "112": {"preset": "small"}}
    assert trained_preset(model(preset="cpu", branches=pairs), [20, 30]) == "paper"  # the pairs' own
    assert trained_preset(model(preset="cpu", branches=pairs), [20, 112]) == "cpu"  # they differ: the trunk's
    assert trained_preset(model(preset="demo")) == "demo"
    assert trained_preset(model(preset="future-preset")) == "cpu"  # a name this version does not know
    assert trained_preset(model()) == "cpu"


def test_people_whose_names_are_not_utf8_are_recorded(tmp_path):
    """A folder named in another encoding reads as a name with surrogates (as Python decodes file
    names); the finished model must still be written, and the person found among those trained on."""
    import cv2
    import numpy as np

    from pydcr.data import REFERENCE_112x96, FaceDataset, pack

    names = ["Ann", b"Jos\xe9".decode("utf-8", "surrogateescape")]
    paths, labels = [], []
    for label, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        for i in range(4):
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), np.full((112, 96, 3), 60 + 90 * label, np.uint8))
            paths.append(f"{folder}/{i}.png")
            labels.append(label)
    faces = pack(FaceDataset(tmp_path, paths, labels, names, {p: REFERENCE_112x96 for p in paths}),
                 tmp_path / "faces.pack", progress=False)
    run = tmp_path / "run"
    assert main(["train", "trunk", "--data", str(faces), "--out", str(run), "--width", "0.0625", "--batch-size", "4",
                 "--epochs", "1", "--quiet"]) == 0
    assert trained_on(load(run / "model.safetensors").provenance, [*names, "someone else"]) == sorted(names)
