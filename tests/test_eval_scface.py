"""The SCface protocol on a synthetic stand-in tree with SCface's layout and a tiny random model: the
split, the gallery and probe roles, rank-1 against a brute-force computation, fine-tuning that sees
only the training subjects, and `pydcr eval scface` with its argument errors."""

import json
import os
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from pydcr.cli import main
from pydcr.data import REFERENCE_112x96, SCface, write_landmarks
from pydcr.demo import DEMO_PACK
from pydcr.eval import evaluate_scface
from pydcr.eval.scface import finetune_pairs, paper_resolutions, protocol_features
from pydcr.models import DCR, BranchPair, Trunk, save
from pydcr.train import BranchConfig, get_preset

SUBJECTS, TRAIN = 10, 4
SIZE = (56, 48)
RESOLUTIONS = {1: 20, 2: 30, 3: 56}  # the paper's pairs on 56 x 48 crops: full size keyed 56
FINETUNE = BranchConfig(batch_size=8, epochs=2, optimizer="adamw", lr=1e-3)


def build_standin(root, subjects=SUBJECTS, seed=0, changed=()):
    """SCface's folders and file names with synthetic 112 x 96 faces: each subject's colour plus noise,
    the surveillance images fainter with distance. Subjects in `changed` get other pixels.
    Returns the landmark mapping (every face is already at the reference points)."""
    rng = np.random.default_rng(seed)
    landmarks = {}

    def put(rel, image=None, same_as=None):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if same_as is not None:
            os.symlink(root / same_as, path)
        else:
            cv2.imwrite(str(path), image)
        landmarks[rel] = REFERENCE_112x96

    for s in range(1, subjects + 1):
        sid = f"{s:03d}"
        colour = rng.integers(0, 200, 3)
        noise = rng.integers(0, 56, (16, 112, 96, 3))
        if s in changed:
            noise = 55 - noise
        faces = np.clip(colour + noise, 0, 255).astype(np.uint8)
        put(f"mugshot_frontal_cropped_all/{sid}_frontal.JPG", faces[0])
        put(f"mugshot_rotation_all/{sid}_L1.JPG", faces[0])  # not part of the protocol
        for d in (1, 2, 3):
            for c in (1, 2, 3, 4, 5):
                face = cv2.GaussianBlur(faces[d * 5 + c - 5], (0, 0), 4.0 - d)
                rel = f"surveillance_cameras_distance_{d}/cam{c}/{sid}_cam{c}_{d}.jpg"
                put(rel, face)
                put(f"surveillance_cameras_all/{sid}_cam{c}_{d}.jpg", same_as=rel)  # the same file again
        put(f"surveillance_cameras_IR_cam8/{sid}_cam8.jpg", faces[0])
    return landmarks


def tiny_model(seed=0):
    """A random quarter-size DCR with the paper's three SCface pairs; LR and HR branches differ."""
    torch.manual_seed(seed)
    model = DCR(Trunk(width=0.125, feature_dim=16, input_size=SIZE))
    for k in RESOLUTIONS.values():
        pair = BranchPair(0, in_dim=16, dim=12)
        with torch.no_grad():
            pair.lr_branch.fc.weight.add_(0.5 * torch.randn_like(pair.lr_branch.fc.weight))
        model.add_branch(k, pair)
    return model.eval()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("scface")
    landmarks = build_standin(root)
    return root, landmarks


def open_standin(standin):
    root, landmarks = standin
    return SCface(root, seed=1, train_subjects=TRAIN, landmarks=landmarks, size=SIZE)


def brute_force_rank1(gallery, gallery_ids, probes, probe_ids, fit, pca_dim):
    """Nearest gallery mugshot by cosine similarity after a numpy PCA of `fit`, probe by probe."""
    fit, gallery, probes = (np.asarray(a, dtype=np.float64) for a in (fit, gallery, probes))
    mean = fit.mean(0)
    basis = np.eye(fit.shape[1]) if pca_dim is None else np.linalg.svd(fit - mean)[2][:pca_dim].T
    g = (gallery - mean) @ basis
    predicted = []
    for p in (probes - mean) @ basis:
        cosines = [p @ row / (np.linalg.norm(p) * np.linalg.norm(row)) for row in g]
        predicted.append(int(gallery_ids[int(np.argmax(cosines))]))
    predicted = np.array(predicted)
    return float((predicted == probe_ids).mean()), predicted


@pytest.mark.parametrize("finetune,pca_dim", [(None, None), (None, 5), (FINETUNE, None)])
def test_rank1_matches_brute_force(standin, finetune, pca_dim):
    data = open_standin(standin)
    model = tiny_model()
    result = evaluate_scface(model, data, finetune=finetune, pca_dim=pca_dim, progress=False)

    # Trunk features straight from every crop, in one batch.
    crops = torch.from_numpy(np.stack([data[i][0] for i in range(len(data))])).permute(0, 3, 1, 2)
    with torch.no_grad():
        v = model.trunk(crops)
    is_train = np.isin(data.labels, [data.classes.index(s) for s in data.train_subjects])
    mugshot = data.camera == 0
    for d in (1, 2, 3):
        pair = result.pairs[d]
        if finetune is None:
            assert pair is model.branch(RESOLUTIONS[d])
        probe = data.distance == d
        rows = {(role, train): np.flatnonzero((mugshot if role == "gallery" else probe) & (is_train == train))
                for role in ("gallery", "probe") for train in (True, False)}
        assert rows["gallery", False].tolist() == result.gallery
        assert rows["probe", False].tolist() == result.probes[d]
        embed = {"trunk": {"gallery": lambda x: x, "probe": lambda x: x},
                 "DCR": {"gallery": pair.hr, "probe": pair.lr}}  # mugshots through HR, probes through LR
        for method, fns in embed.items():
            with torch.no_grad():
                feats = {key: fns[key[0]](v[r]).numpy() for key, r in rows.items()}
            fit = np.concatenate([feats["gallery", True], feats["probe", True]])
            accuracy, predicted = brute_force_rank1(
                feats["gallery", False], data.labels[rows["gallery", False]], feats["probe", False],
                data.labels[rows["probe", False]], fit, pca_dim)
            assert result.predictions[f"d{d}"][method] == predicted.tolist(), (d, method)
            assert result.rank1[f"d{d}"][method] == pytest.approx(accuracy, abs=1e-12)


def test_split_and_roles(standin):
    data = open_standin(standin)
    result = evaluate_scface(tiny_model(), data, progress=False)
    assert len(result.train_subjects) == TRAIN and len(result.test_subjects) == SUBJECTS - TRAIN
    assert not set(result.train_subjects) & set(result.test_subjects)
    subject = lambda i: data.classes[data.labels[i]]  # noqa: E731
    assert sorted(map(subject, result.gallery)) == result.test_subjects  # one mugshot per test subject
    assert all(data.paths[i].endswith("_frontal.JPG") for i in result.gallery)
    for d in (1, 2, 3):
        assert len(result.probes[d]) == 5 * len(result.test_subjects)  # five cameras, each file once
        assert {subject(i) for i in result.probes[d]} == set(result.test_subjects)
        assert all(data.paths[i].endswith(f"_{d}.jpg") and "_cam" in data.paths[i] for i in result.probes[d])
        assert set(result.predictions[f"d{d}"]["DCR"]) <= {data.classes.index(s) for s in result.test_subjects}
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["gallery"] == len(result.gallery) and summary["resolutions"] == {"d1": 20, "d2": 30, "d3": 56}


def test_finetuning_sees_only_the_training_subjects(standin, tmp_path):
    data = open_standin(standin)
    test_ids = [int(s) for s in data.test_subjects]
    other_root = tmp_path / "other"
    landmarks = build_standin(other_root, changed=test_ids)  # the test subjects' pixels differ
    other = SCface(other_root, seed=1, train_subjects=TRAIN, landmarks=landmarks, size=SIZE)
    assert other.train_subjects == data.train_subjects

    def tuned(dataset):
        model = tiny_model()
        features = protocol_features(model, dataset, np.arange(len(dataset)), progress=False)
        pairs = {d: model.branch(k) for d, k in RESOLUTIONS.items()}
        return pairs, finetune_pairs(pairs, dataset, features, FINETUNE, progress=False)

    (original, a), (_, b) = tuned(data), tuned(other)
    for d in (1, 2, 3):
        for (key, x), (_, y) in zip(a[d].state_dict().items(), b[d].state_dict().items()):
            assert torch.equal(x, y), (d, key)
        assert not torch.equal(a[d].lr_branch.fc.weight, original[d].lr_branch.fc.weight)  # it did train
        assert a[d].hr_branch.classifier is None  # deployment copies


def test_protocol_errors(standin):
    data = open_standin(standin)
    model = tiny_model()
    with pytest.raises(ValueError, match=r"distance d1 needs one for 24"):
        evaluate_scface(model, data, resolutions={1: 24}, progress=False)
    with pytest.raises(ValueError, match=r"pca_dim must be in \[1, 12\]"):
        evaluate_scface(model, data, pca_dim=13, progress=False)
    root, landmarks = standin
    with pytest.raises(ValueError, match="crops are 112x96"):
        evaluate_scface(model, SCface(root, train_subjects=TRAIN, landmarks=landmarks), progress=False)
    partial = {p: x for p, x in landmarks.items() if "_cam3_1" not in p}
    with pytest.raises(ValueError, match="have no landmarks"):
        evaluate_scface(model, SCface(root, train_subjects=TRAIN, landmarks=partial, size=SIZE), progress=False)


@pytest.fixture(scope="module")
def cli_files(standin, tmp_path_factory):
    root, landmarks = standin
    files = tmp_path_factory.mktemp("cli")
    write_landmarks(files / "landmarks.txt", landmarks.items())
    save(tiny_model(), files / "model.safetensors")
    bare = tiny_model()
    for k in RESOLUTIONS.values():
        bare.remove_branch(k)
    save(bare, files / "trunk.safetensors")
    return root, files


def test_cli_writes_the_table(cli_files, tmp_path, capsys):
    root, files = cli_files
    out = tmp_path / "report"
    argv = ["eval", "scface", str(files / "model.safetensors"), "--root", str(root), "--landmarks",
            str(files / "landmarks.txt"), "--train-subjects", str(TRAIN), "--seed", "1", "--finetune-epochs", "2",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "scface.json").read_text())
    assert set(report["rank1"]) == {"d1", "d2", "d3"} and report["finetune"]["epochs"] == 2
    for table in (printed, (out / "scface.md").read_text()):
        assert "| model | d1 (4.20 m) | d2 (2.60 m) | d3 (1.00 m) |" in table
        assert "| DCR | " + " | ".join(f"{100 * report['rank1'][d]['DCR']:.1f}" for d in ("d1", "d2", "d3")) in table

    # The same numbers as the function with the same settings.
    data = open_standin((root, files / "landmarks.txt"))
    branch = get_preset("cpu").branch  # the command's default preset, a tenth of its rate
    finetune = replace(branch, epochs=2, lr=branch.lr / 10)
    expected = evaluate_scface(tiny_model(), data, finetune=finetune, seed=1, progress=False)
    assert report["rank1"] == expected.rank1


def test_cli_finetunes_with_the_models_preset(cli_files, tmp_path):
    # The settings the pairs were trained with, as the model records them: here the paper's SGD.
    root, files = cli_files
    model = tiny_model()  # a cpu trunk whose pairs were trained with the paper's settings
    model.provenance = {"preset": "cpu", "branches": {str(k): {"preset": "paper"} for k in (20, 30, 56)}}
    save(model, tmp_path / "paper.safetensors")
    out = tmp_path / "report"
    assert main(["eval", "scface", str(tmp_path / "paper.safetensors"), "--root", str(root), "--landmarks",
                 str(files / "landmarks.txt"), "--train-subjects", str(TRAIN), "--finetune-epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    branch = get_preset("paper").branch
    assert json.loads((out / "scface.json").read_text())["finetune"] == replace(branch, epochs=1, lr=branch.lr / 10).to_dict()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["MODEL", "--root", "/no/such/scface", "--landmarks", "LIST"], "no such SCface folder: /no/such/scface"),
        (["/no/model.safetensors", "--root", "ROOT", "--landmarks", "LIST"], "no such model file"),
        (["PACK", "--root", "ROOT", "--landmarks", "LIST"],
         f"pydcr eval: {DEMO_PACK} is a pack of faces, not a model file"),
        (["MODEL", "--root", "ROOT"], "SCface has no landmark list of its own"),
        (["MODEL", "--root", "ROOT", "--landmarks", "/no/list.txt"], "no such landmark list"),
        (["TRUNK", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4"], "needs one for 20"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST"], "train_subjects must be in [0, 10)"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--sizes", "20", "0", "112"],
         "--sizes must be positive"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--pca-dim", "0"],
         "--pca-dim must be positive"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--finetune-epochs", "-1"],
         "--finetune-epochs must be 0 or more"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--finetune-lr", "nan"],
         "--finetune-lr must be positive and finite, got nan"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--finetune-lr", "inf"],
         "--finetune-lr must be positive and finite, got inf"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--seed", "-5"],
         "--seed must be within 0 to 2**31 - 1, got -5"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--preset", "huge"],
         "unknown preset 'huge'"),
        (["MODEL", "--root", "ROOT", "--landmarks", "LIST", "--train-subjects", "4", "--out", "LIST"],
         "landmarks.txt: it is a file; give a folder for --out"),  # before the evaluation, not after it
    ],
)
def test_cli_argument_errors(argv, message, cli_files, capsys):
    root, files = cli_files
    names = {"MODEL": files / "model.safetensors", "TRUNK": files / "trunk.safetensors", "ROOT": root,
             "LIST": files / "landmarks.txt", "PACK": DEMO_PACK}
    assert main(["eval", "scface", *(str(names.get(a, a)) for a in argv)]) == 2
    assert message in capsys.readouterr().err


def test_cli_needs_a_protocol(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2


@pytest.mark.data
def test_paper_split_on_the_lfw_stand_in(lfw_root, tmp_path):
    """The stand-in the data tests build (130 subjects, real faces and landmarks): 80 tested, 50 tuned."""
    from test_data_datasets import build_scface

    landmarks = build_scface(lfw_root, tmp_path, 130)
    data = SCface(tmp_path, seed=3, landmarks=landmarks, size=SIZE)
    result = evaluate_scface(tiny_model(), data, finetune=replace(FINETUNE, epochs=1), progress=False)
    assert len(result.train_subjects) == 50 and len(result.gallery) == 80
    assert {d: len(p) for d, p in result.probes.items()} == {1: 400, 2: 400, 3: 400}
    assert all(0.0 <= result.rank1[d][m] <= 1.0 for d in result.rank1 for m in ("trunk", "DCR"))


def test_the_default_pairs_follow_the_input_size():
    """The paper's d3 pair is the full-size one: keyed 112 for its 112 x 96 crops, 56 for 56 x 48."""
    assert paper_resolutions(DCR(Trunk(width=0.0625, input_size=(112, 96)))) == {1: 20, 2: 30, 3: 112}
    assert paper_resolutions(tiny_model()) == RESOLUTIONS
