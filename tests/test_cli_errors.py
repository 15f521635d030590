"""The command line's error paths: an output that is an input, bad arguments and unusable inputs end
in one line on stderr (exit 2 for a usage error, 1 for an input error), change no input and leave
no output behind."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pydcr.cli import main
from pydcr.data import REFERENCE_112x96, PackedFaces, open_dataset, pack
from pydcr.demo import DEMO_PACK
from pydcr.models import DCR, BranchPair, Trunk, save

MARKS = "\t40\t50\t60\t50\t50\t62\t42\t75\t58\t75\n"  # one landmark line's coordinates


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pydcr", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def tree(root):
    """Every file under root and its bytes: what a refused command must leave as it was."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def inputs_of(work):
    """tree(work) less a training run's folder (a stopped run resumes from it)."""
    return {k: v for k, v in tree(work).items() if not k.startswith("run/")}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model with pairs 8 and 16, 4 aligned crops of 2 people, a list of them, a landmark
    list, a pack of them, and the gallery of the folder and of pair 8 only."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save(DCR(Trunk(width=0.125), {8: BranchPair(0), 16: BranchPair(0)}), root / "m.safetensors")
    demo = PackedFaces(DEMO_PACK)
    paths = []
    for i in range(4):
        (root / "faces" / f"p{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "faces" / f"p{i % 2}" / f"{i}.png"), cv2.cvtColor(demo.image(i), cv2.COLOR_RGB2BGR))
        paths.append(f"p{i % 2}/{i}.png")
    (root / "list.txt").write_text("".join(f"faces/{p}\n" for p in paths))
    (root / "marks.txt").write_text("".join(p + MARKS for p in paths))
    dataset = open_dataset(root / "faces", "folder", {p: REFERENCE_112x96 for p in paths})
    pack(dataset, root / "f.pack", format="png", progress=False)
    for name, extra in (("g", []), ("g8", ["--resolution", "8"])):
        assert main(["embed", str(root / "m.safetensors"), str(root / "faces"), "--out",
                     str(root / f"{name}.safetensors"), "--quiet", *extra]) == 0
    return root


@pytest.fixture
def work(inputs, tmp_path):
    """A copy of the inputs to run in (a refused command must change none of them)."""
    for name, data in tree(inputs).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "m.safetensors")
    return tmp_path


def refused(argv, work, capsys, code=2):
    """Run argv in work (main, in this process); the one line on stderr, after checking that the
    exit code is `code` and that no file under work changed, appeared or vanished."""
    before = tree(work)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(argv) == code
    assert tree(work) == before
    return one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, out", [
    (["embed", "m.safetensors", "faces", "--out", "m.safetensors"], "m.safetensors"),
    (["embed", "m.safetensors", "faces", "--out", "link.safetensors"], "link.safetensors"),
    (["embed", "m.safetensors", "list.txt", "--out", "list.txt"], "list.txt"),
    (["embed", "m.safetensors", "f.pack", "--out", "f.pack"], "f.pack"),
    (["embed", "m.safetensors", "faces", "--landmarks", "marks.txt", "--out", "marks.txt"], "marks.txt"),
    (["embed", "--merge", "g.safetensors", "g8.safetensors", "--out", "g.safetensors"], "g.safetensors"),
    (["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "faces", "--out", "g.safetensors"],
     "g.safetensors"),
    (["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "list.txt", "--out", "list.txt"],
     "list.txt"),
    (["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "faces", "--out", "m.safetensors"],
     "m.safetensors"),
    (["pack", "faces", "marks.txt", "--landmarks", "marks.txt", "--quiet"], "marks.txt"),
    (["pack", "faces", "faces/root-marks.txt", "--landmarks", "root-marks.txt", "--quiet"], "faces/root-marks.txt"),
    (["pack", "faces", "faces/p0/0.png", "--landmarks", "marks.txt", "--quiet"], "faces/p0/0.png"),  # a source image
    # an image read from a folder or named by a list file
    (["embed", "m.safetensors", "faces", "--out", "faces/p0/0.png"], "faces/p0/0.png"),
    (["embed", "m.safetensors", "list.txt", "--out", "faces/p1/1.png"], "faces/p1/1.png"),
    (["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "faces", "--out", "faces/p0/2.png"],
     "faces/p0/2.png"),
    (["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "list.txt", "--out", "faces/p0/0.png"],
     "faces/p0/0.png"),
    (["align", "faces", "faces/p1/3.png", "--quiet"], "faces/p1/3.png"),
])
def test_an_output_that_is_an_input_is_refused(argv, out, work, capsys):
    # found under the root, where there is none of its name in the current folder
    (work / "faces" / "root-marks.txt").write_text((work / "marks.txt").read_text())
    line = refused(argv, work, capsys)
    assert line.startswith(f"pydcr {argv[0]}: cannot write {out}: it is the input "), line


def test_pack_of_no_face_is_a_failure(work, capsys):
    """Every image skipped (no landmarks, unreadable): exit 1 with the reasons, and no empty pack left."""
    (work / "junk").mkdir()
    (work / "junk" / "a.png").write_bytes((work / "faces" / "p0" / "0.png").read_bytes())  # listed nowhere
    (work / "junk" / "b.jpg").write_bytes(b"not an image")
    (work / "none.txt").write_text("")
    before = tree(work)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(["pack", "junk", "j.pack", "--layout", "flat", "--landmarks", "none.txt", "--quiet"]) == 1
    assert tree(work) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == ["skipped a.png: no landmarks", "skipped b.jpg: unreadable: cannot decode image (corrupt or "
                       "not an image): junk/b.jpg"]
    assert err[2:] == ["pydcr pack: 1 of 2 images are not in the landmark list: add them (pydcr align writes a "
                       "list), or give --detect",
                       "pydcr pack: no face could be packed from junk (every image skipped, listed above); "
                       "j.pack not written"]


def test_pack_without_landmarks_says_how_to_get_them(work, capsys):
    """No landmark list and no --detect: each image is skipped, and one line names the options."""
    (work / "photos").mkdir()
    for name in ("a.png", "b.png"):
        (work / "photos" / name).write_bytes((work / "faces" / "p0" / "0.png").read_bytes())
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(["pack", "photos", "p.pack", "--quiet"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "skipped a.png: no landmarks", "skipped b.png: no landmarks",
        "pydcr pack: 2 of 2 images have no landmarks: give --landmarks LIST (pydcr align writes one) or --detect",
        "pydcr pack: no face could be packed from photos (every image skipped, listed above); p.pack not written"]


def test_a_rerun_that_packs_nothing_keeps_the_earlier_pack(work, capsys):
    """A rerun without its --landmarks packs no face: the pack made before is left as it was."""
    (work / "photos").mkdir()
    for name in ("a.png", "b.png"):
        (work / "photos" / name).write_bytes((work / "faces" / "p0" / "0.png").read_bytes())
    points = "".join(f"\t{v:.2f}" for v in REFERENCE_112x96.reshape(-1))
    (work / "marks.txt").write_text("".join(f"{name}{points}\n" for name in ("a.png", "b.png")))
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(["pack", "photos", "p.pack", "--landmarks", "marks.txt", "--quiet"]) == 0
        made = (work / "p.pack").read_bytes()
        capsys.readouterr()
        assert main(["pack", "photos", "p.pack", "--quiet"]) == 1
    assert (work / "p.pack").read_bytes() == made and not (work / "p.pack.partial").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "pydcr pack: no face could be packed from photos (every image skipped, listed above); p.pack not written "
        "(the file already there is left as it was)")


def test_align_names_unreadable_files_apart_from_faceless_ones(work, capsys):
    (work / "bad").mkdir()
    (work / "bad" / "text.jpg").write_text("not an image")
    (work / "bad" / "empty.jpg").write_bytes(b"")
    (work / "bad" / "cut.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes()[:-2])
    (work / "bad" / "blank.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes())
    (work / "marks.out").write_text("an earlier list\n")
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        # no face anywhere: a failure, and the list already there is kept
        assert main(["align", "bad", "marks.out", "--layout", "flat", "--quiet", "--device", "cpu"]) == 1
    assert (work / "marks.out").read_text() == "an earlier list\n" and not (work / "marks.out.partial").exists()
    err = sorted(capsys.readouterr().err.strip().splitlines())
    assert err == ["no face: blank.png",
                   "pydcr align: no face found in bad (every image listed above); marks.out not written (the file "
                   "already there is left as it was)",
                   "unreadable: cut.jpg: truncated JPEG (no end-of-image marker): bad/cut.jpg",
                   "unreadable: empty.jpg: image file is empty: bad/empty.jpg",
                   "unreadable: text.jpg: cannot decode image (corrupt or not an image): bad/text.jpg"]


@pytest.fixture
def eval_never_runs(monkeypatch):
    """evaluate_lfw raising if called: a refused `eval lfw` must stop before any alignment or embedding."""
    import pydcr.eval.lfw

    def evaluation(*args, **kwargs):
        raise AssertionError("evaluate_lfw was called")

    monkeypatch.setattr(pydcr.eval.lfw, "evaluate_lfw", evaluation)


@pytest.mark.parametrize("args, message", [
    (["--out", "m.safetensors"], "cannot write the report in m.safetensors: it is a file; give a folder for --out"),
    (["--out", "."], "cannot write report.json: it is the input m.safetensors, which writing would destroy"),
    (["--pca-dim", "100000"], "--pca-dim must be at most DIM (the feature size of m.safetensors), got 100000"),
    (["--sizes", "8", "113"], "--sizes 113 is larger than m.safetensors's 112x96 input: give resolutions up to 112"),
])
def test_eval_lfw_refuses_before_any_work(args, message, work, tiny_lfw, eval_never_runs, capsys):
    from pydcr.models import load

    if args == ["--out", "."]:  # a model file named as a report file
        (work / "m.safetensors").rename(work / "report.json")
        (work / "m.safetensors").symlink_to(work / "report.json")
    model = load(work / "m.safetensors")
    message = message.replace("DIM", str(min(model.trunk.feature_dim, model.branch(8).dim)))
    line = refused(["eval", "lfw", "m.safetensors", "--root", str(tiny_lfw), "--sizes", "8", "--quiet", *args],
                   work, capsys)
    assert line == f"pydcr eval: {message}"


@pytest.mark.parametrize("argv", [["eval", "lfw", "m.safetensors", "--root", "LFW", "--sizes", "8", "--folds", "1", "3"],
                                  ["reproduce", "lfw", "--root", "LFW", "--out", "run", "--test-folds", "1", "3"]])
def test_folds_a_short_pairs_file_lacks_are_refused_as_numbered(argv, work, tiny_lfw, eval_never_runs, capsys):
    """A pairs file of one's own with two folds: fold 3 is refused before any work, in the command
    line's numbering."""
    (tiny_lfw / "pairs.txt").write_text("2\t1\n" + "Ann\t1\t2\nAnn\t1\tBob\t1\n" * 2)
    line = refused([str(tiny_lfw) if a == "LFW" else a for a in argv], work, capsys)
    assert line.endswith(f"1 3: {tiny_lfw / 'pairs.txt'} has 2 folds (1-2)")


def test_embed_leaves_a_work_folder_it_did_not_make(work, capsys):
    """A folder named like a run's work folder (GALLERY.parts) but not one: starting over would delete it."""
    (work / "x.safetensors.parts").mkdir()
    (work / "x.safetensors.parts" / "notes.txt").write_text("mine")
    line = refused(["embed", "m.safetensors", "faces", "--out", "x.safetensors"], work, capsys)
    assert line == ("pydcr embed: x.safetensors.parts exists and is not the work folder of a gallery run (it "
                    "holds no plan.json): move it away or write x.safetensors under another name")
    (work / "x.safetensors.parts" / "plan.json").write_text("{}")  # a run's, with other settings: starts over
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(["embed", "m.safetensors", "faces", "--out", "x.safetensors", "--quiet"]) == 0
    assert "holds a run with other settings; starting over" in capsys.readouterr().err
    assert not (work / "x.safetensors.parts").exists()


@pytest.mark.parametrize("argv, message", [
    (["pack", "faces", "x.pack", "--quality", "200"], "--quality must be in 1-100, got 200"),
    (["pack", "faces", "x.pack", "--quality", "0"], "--quality must be in 1-100, got 0"),
    (["pack", "faces", "x.pack", "--size", "0", "0"], "--size must be positive, got 0 0"),
    (["pack", "faces", "x.pack", "--workers", "0"], "--workers must be positive, got 0"),
    (["pack", "faces", "nowhere/x.pack"], "cannot write nowhere/x.pack: the folder nowhere does not exist"),
    (["pack", "faces", "faces"], "cannot write faces: it is a folder; give a file name"),
    (["align", "faces", "x.txt", "--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["align", "faces", "x.txt", "--min-face-size", "5"], "--min-face-size must be at least 12 pixels, got 5"),
    (["align", "faces", "x.txt", "--threads", "0"], "--threads must be positive, got 0"),
    (["align", "faces", "x.txt", "--workers", "-1"], "--workers must be positive, got -1"),
    (["align", "faces", "x.txt", "--device", "gpu"], "--device 'gpu' is not a device: give cpu, cuda or cuda:N"),
    (["embed", "m.safetensors", "faces", "--out", "nowhere/x.safetensors"],
     "cannot write nowhere/x.safetensors: the folder nowhere does not exist"),
    (["embed", "m.safetensors", "faces", "--out", "x.safetensors", "--device", "gpu"],
     "--device 'gpu' is not a device"),
    (["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "faces", "--out", "nowhere/r.csv"],
     "cannot write nowhere/r.csv: the folder nowhere does not exist"),
    (["eval", "lfw", "m.safetensors", "--root", "lfw-root", "--device", "gpu"], "--device 'gpu' is not a device"),
    (["train", "branch", "--trunk", "f.pack", "--data", "f.pack", "--size", "8"],
     "f.pack is a pack of faces, not a model file"),
    (["train", "branch", "--trunk", "list.txt", "--data", "f.pack", "--size", "8"], "list.txt is not a readable"),
    (["train", "trunk", "--data", "f.pack", "--out", "run", "--workers", "-1"],
     "--workers must be 0 (load in this process) or more, got -1"),
    (["train", "trunk", "--data", "f.pack", "--out", "run", "--device", "gpu"], "--device 'gpu' is not a device"),
    (["demo", "--out", "demo", "--device", "gpu"], "--device 'gpu' is not a device"),
    (["verify", "m.safetensors", "faces/p0/0.png", "faces/p1/1.png", "--threshold", "nan"],
     "--threshold must be a finite score, got nan"),
    (["train", "branch", "--trunk", "m.safetensors", "--data", "f.pack", "--size", "8", "113"],
     "--size 113 is larger than m.safetensors's 112x96 input: give resolutions up to 112"),
    (["train", "branch", "--trunk", "m.safetensors", "--data", "f.pack", "--size", "8", "--preset", "cpu"],
     "m.safetensors has 512-d branch pairs (for 16) and preset cpu trains 256-d ones: give --preset paper, or "
     "retrain every pair (all of them in --size)"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message, work, capsys):
    line = refused(argv, work, capsys)
    assert line.startswith(f"pydcr {argv[0]}: {message}"), line


def test_cuda_without_a_cuda_device(work, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(["embed", "m.safetensors", "faces", "--out", "x.safetensors", "--device", "cuda"], work, capsys)
    assert line == "pydcr embed: --device cuda: no CUDA device is available"


@pytest.mark.parametrize("argv, message", [
    (["pack", "faces", "x.pack", "--landmarks", "latin1.txt", "--quiet"],
     "latin1.txt is not UTF-8 text (invalid continuation byte)"),
    (["embed", "m.safetensors", "faces", "--landmarks", "short.txt", "--out", "x.safetensors", "--quiet"],
     "short.txt:1: expected a path and 10 coordinates, got 2 coordinates"),
    (["embed", "m.safetensors", "list.txt", "--landmarks", "latin1.txt", "--out", "x.safetensors", "--quiet"],
     "latin1.txt is not UTF-8 text (invalid continuation byte)"),
    (["embed", "m.safetensors", "small.pack", "--out", "x.safetensors", "--quiet"],
     "small.pack holds 56x48 crops; the model takes 112x96"),
])
def test_unusable_inputs_end_in_one_line(argv, message, work):
    """Through `python -m pydcr`: exit 1 (an input error, not a usage error), no traceback."""
    (work / "latin1.txt").write_bytes("p0/0.png".encode() + b"\xe9" + MARKS.encode())
    (work / "short.txt").write_text("p0/0.png\t1\t2\n")
    marks = {f"p{i % 2}/{i}.png": REFERENCE_112x96 for i in range(4)}
    pack(open_dataset(work / "faces", "folder", marks, size=(56, 48)), work / "small.pack", progress=False)
    before = tree(work)
    done = run_cli(*argv, cwd=work)
    assert done.returncode == 1 and one_line(done.stderr) == f"pydcr {argv[0]}: {message}", done.stderr
    assert tree(work) == before


def train_one_epoch(work, data, capsys):
    """`pydcr train trunk` of a tiny trunk on data, in work: (exit code, its one stderr line)."""
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        code = main(["train", "trunk", "--data", data, "--out", "run", "--width", "0.125", "--batch-size", "4",
                     "--epochs", "1", "--quiet"])
    return code, one_line(capsys.readouterr().err)


def test_a_damaged_pack_record_met_mid_run(work, capsys):
    """Training reads every crop: a damaged record ends the run in one line, exit 1."""
    data = bytearray((work / "f.pack").read_bytes())
    start = int(PackedFaces(work / "f.pack").offsets[2])
    data[start + 40:start + 104] = bytes(64)  # inside record 2's payload: the index still opens
    (work / "f.pack").write_bytes(bytes(data))
    before = tree(work)
    code, line = train_one_epoch(work, "f.pack", capsys)
    assert code == 1 and line.startswith("pydcr train: f.pack: record 2 (") and line.endswith(
        ") is damaged (checksum mismatch)"), line
    assert inputs_of(work) == before


def test_missing_landmarks_found_before_training(work, capsys):
    """A dataset folder without a landmark list is refused before a run folder is made."""
    before = tree(work)
    code, line = train_one_epoch(work, "faces", capsys)
    assert code == 2 and line.startswith("pydcr train: 4 of 4 images under faces have no landmarks (first: p0/0.png)"), line
    assert tree(work) == before


def test_os_errors_bugs_and_the_debug_switch(work, capsys, monkeypatch):
    import pydcr.data

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "x.pack.partial")

    monkeypatch.setattr(pydcr.data, "pack", denied)
    argv = ["pack", "faces", "x.pack", "--landmarks", "marks.txt", "--quiet"]
    assert refused(argv, work, capsys, code=1) == "pydcr pack: x.pack.partial: Permission denied"
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYDCR_DEBUG", "1")  # the developer's traceback
    with pytest.raises(PermissionError):
        main(argv)
    monkeypatch.delenv("PYDCR_DEBUG")

    def bug(*args, **kwargs):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(pydcr.data, "pack", bug)
    with pytest.raises(RuntimeError, match="a genuine bug"):  # not an input error: the traceback stays
        main(argv)


def test_help_names_the_debug_switch(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "PYDCR_DEBUG=1" in capsys.readouterr().out


def test_help_states_every_default():
    """Each option of these commands says what happens without it (a required option needs none)."""
    import argparse

    from pydcr.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = []
    for name in ("embed", "identify", "verify", "pack", "align", "info"):
        for action in commands[name]._actions:
            # --merge is a mode (joining shards instead of embedding), --quiet's opposite is plain
            if action.option_strings and not action.required and action.dest not in ("help", "merge", "quiet"):
                if "default" not in action.help:
                    silent.append(f"{name} {action.option_strings[0]}")
    assert silent == []
    assert "GALLERY" not in commands["embed"].description and "--out" in commands["embed"].description


@pytest.fixture
def tiny_lfw(tmp_path):
    """An LFW root whose two people are both in every fold's pairs: no one is left to train on."""
    for name, count in (("Ann", 2), ("Bob", 1)):
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for i in range(1, count + 1):
            cv2.imwrite(str(tmp_path / "lfw" / name / f"{name}_{i:04d}.jpg"), np.full((120, 100, 3), 99, np.uint8))
    (tmp_path / "pairs.txt").write_text("10\t1\n" + "Ann\t1\t2\nAnn\t1\tBob\t1\n" * 10)
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "--epochs must be positive, got -1"),
    (["--epochs", "0"], "--epochs must be positive, got 0"),
    (["--pca-dim", "0"], "--pca-dim must be in 1-DIM (the small preset's feature size), got 0"),
    (["--pca-dim", "100000"], "--pca-dim must be in 1-DIM (the small preset's feature size), got 100000"),
    ([], "no one in ROOT trains: every person is in a pair of test folds 6 7 8 9 10 or has fewer than 2 images"),
    (["--test-folds", "1", "2", "--min-images", "3"], "no one in ROOT trains"),
    (["--sizes", "8", "57"], "--sizes 57 is larger than the small preset's 56x48 input: give resolutions up to 56"),
    (["--seed", "99999999999999"], "--seed must be within +-2**31, got 99999999999999"),
])
def test_reproduce_refuses_before_any_training(args, message, tiny_lfw, tmp_path, capsys, monkeypatch):
    import pydcr.reproduce
    from pydcr.train import get_preset

    small = get_preset("small")
    message = message.replace("DIM", str(min(small.trunk.feature_dim, small.branch.dim)))

    def training(*args, **kwargs):
        raise AssertionError("reproduce_lfw was called")

    monkeypatch.setattr(pydcr.reproduce, "reproduce_lfw", training)
    out = tmp_path / "run"
    assert main(["reproduce", "lfw", "--root", str(tiny_lfw), "--out", str(out), "--quiet", *args]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("pydcr reproduce: " + message.replace("ROOT", str(tiny_lfw))), line
    assert not out.exists()


def test_identify_stopped_mid_run_leaves_no_file(work, capsys):
    """A 16 x 16 probe routes to pair 16, which a gallery of pair 8 lacks: no results.csv(.tmp) stays."""
    (work / "probes").mkdir()
    crop = cv2.imread(str(work / "faces" / "p0" / "0.png"))
    cv2.imwrite(str(work / "probes" / "q.png"), cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA))
    line = refused(["identify", "m.safetensors", "--gallery", "g8.safetensors", "--probes", "probes",
                    "--out", "results.csv", "--quiet"], work, capsys)
    assert line == ("pydcr identify: a probe routes to hr16, but g8.safetensors holds only ['hr8']: "
                    "embed the gallery for every pair, or give --size")


@pytest.mark.parametrize("argv", [
    ["embed", "m.safetensors", "junk", "--out", "x.safetensors", "--quiet"],
    ["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "junk", "--out", "r.csv", "--quiet"],
])
def test_no_face_embedded_is_a_failure(argv, work, capsys):
    (work / "junk").mkdir()
    for name in ("a.jpg", "b.png"):
        (work / "junk" / name).write_bytes(b"not an image")
    before = tree(work)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(argv) == 1
    assert tree(work) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert [e.split(":")[0] for e in err[:2]] == ["skipped a.jpg", "skipped b.png"]
    assert err[2:] == [f"pydcr {argv[0]}: 2 of 2 inputs skipped (listed above)",
                       f"pydcr {argv[0]}: no face could be embedded from junk; {argv[-2]} not written"]


@pytest.mark.parametrize("argv", [
    ["embed", "m.safetensors", "junk", "--out", "x.safetensors", "--quiet"],
    ["identify", "m.safetensors", "--gallery", "g.safetensors", "--probes", "junk", "--out", "r.csv", "--quiet"],
])
def test_a_rerun_that_embeds_nothing_keeps_the_earlier_output(argv, work, capsys):
    """A rerun whose every input is skipped (a forgotten --landmarks, say) leaves the gallery or
    results made before as they were, and says so."""
    (work / "junk").mkdir()
    (work / "junk" / "a.jpg").write_bytes(b"not an image")
    (work / argv[-2]).write_bytes((work / "g.safetensors").read_bytes())  # what an earlier run made
    before = tree(work)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(argv) == 1
    assert tree(work) == before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"pydcr {argv[0]}: no face could be embedded from junk; {argv[-2]} not written (the file already there is "
        "left as it was)")


@pytest.mark.parametrize("argv", [
    ["eval", "lfw", "m.safetensors", "--root", "LFW", "--sizes", "8", "--out", "m.safetensors/report"],
    ["demo", "--out", "m.safetensors/demo"],
    ["reproduce", "lfw", "--root", "LFW", "--out", "m.safetensors/run"],
    ["train", "trunk", "--data", "g.safetensors", "--out", "m.safetensors/run"],
])
def test_an_out_folder_under_a_file_is_refused_before_any_work(argv, work, tiny_lfw, eval_never_runs, capsys):
    line = refused([str(tiny_lfw) if a == "LFW" else a for a in argv], work, capsys)
    assert line.endswith(f"cannot make the folder {argv[-1]}: {work / 'm.safetensors'} is a file, not a folder")


def test_a_merge_of_shards_that_hold_nothing_keeps_the_earlier_gallery(work, capsys):
    (work / "junk").mkdir()
    (work / "junk" / "a.jpg").write_bytes(b"not an image")
    (work / "x.safetensors").write_bytes((work / "g.safetensors").read_bytes())
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        for rank in (0, 1):  # an empty shard is still written: --merge needs every one
            assert main(["embed", "m.safetensors", "junk", "--out", "x.safetensors", "--shard", f"{rank}/2",
                         "--quiet"]) == 0
        capsys.readouterr()
        before = tree(work)
        assert main(["embed", "--merge", "x.shard000-of-002.safetensors", "x.shard001-of-002.safetensors",
                     "--out", "x.safetensors"]) == 1
    assert tree(work) == before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "pydcr embed: the shards hold no face; x.safetensors not written (the file already there is left as it was)")


def test_eval_input_error_met_mid_run_is_exit_1(inputs, tiny_lfw, capsys, monkeypatch):
    """What evaluation finds unusable while it runs (a damaged pack record, say) is an input error."""
    import pydcr.eval.lfw

    def damaged(*args, **kwargs):
        raise ValueError("f.pack: record 2 is damaged (checksum mismatch)")

    monkeypatch.setattr(pydcr.eval.lfw, "evaluate_lfw", damaged)
    assert main(["eval", "lfw", str(inputs / "m.safetensors"), "--root", str(tiny_lfw), "--quiet"]) == 1
    assert one_line(capsys.readouterr().err) == "pydcr eval: f.pack: record 2 is damaged (checksum mismatch)"


@pytest.mark.parametrize("argv", [["align", "faces", "out.txt"], ["pack", "faces", "out.pack"],
                                  ["embed", "m.safetensors", "faces", "--out", "g2.safetensors"],
                                  ["train", "trunk", "--data", "faces", "--out", "run"]])
def test_loose_images_beside_identity_folders_are_not_left_out_unsaid(argv, work, capsys):
    """Refused, with the ways out the command has: --layout where it takes one, else a pack."""
    (work / "faces" / "loose.png").write_bytes((work / "faces" / "p0" / "0.png").read_bytes())
    message = refused(argv, work, capsys)
    if argv[0] in ("align", "pack"):
        assert message.endswith("faces holds images and folders of images, and no layout reads both: choose one "
                                "(folder: one subfolder per identity, the loose images left out; flat: the loose "
                                "images only), or move the loose images into a folder of their own")
    else:
        assert message.endswith("faces holds images and folders of images, and this command reads one kind only: "
                                "move the loose images into a folder of their own, or give a pack of the ones "
                                "wanted (`pydcr pack faces OUT --layout folder`, or `--layout flat` for the loose "
                                "images)")


def test_a_relative_landmark_list_is_read_from_here_first(work, capsys):
    """--landmarks LIST names a file from the current folder; one of that name under the dataset
    root (a stale copy, say) does not take its place."""
    shifted = "".join(line.split("\t")[0] + "\t1" * 10 + "\n" for line in (work / "marks.txt").read_text().splitlines())
    (work / "faces" / "marks.txt").write_text(shifted)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(work)
        assert main(["pack", "faces", "here.pack", "--landmarks", "marks.txt", "--quiet"]) == 0
        from pydcr.cli_embed import open_input

        embedded, _ = open_input(Path("faces"), (112, 96), Path("marks.txt"))  # embed and identify read it so too
    faces = PackedFaces(work / "here.pack")
    want = np.array(MARKS.split(), dtype=np.float32).reshape(5, 2)
    np.testing.assert_allclose(faces.landmarks[0], want, atol=1e-3)
    np.testing.assert_allclose(embedded.landmarks_of(0), want, atol=1e-3)
