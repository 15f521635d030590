"""Datasets: an identity-folder tree, the real LFW protocol files, and SCface on a stand-in tree."""

import os

import numpy as np
import pytest

from pydcr.data import LFW, FlatFolder, IdentityFolder, SCface, align, open_dataset, read_image, read_landmarks
from pydcr.data.datasets import read_pairs


def write_image(path, value=0, shape=(40, 30, 3)):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, value, np.uint8))


def test_identity_folder(tmp_path):
    # Hidden files and folders (notebook checkpoints, macOS metadata) and empty folders are no one.
    folders = {"bob": ["2.jpg", "1.png", "._1.png"], "alice": ["a.jpg"], "empty": [], ".ipynb_checkpoints": ["c.jpg"],
               "__MACOSX": ["m.jpg"]}
    for name, files in folders.items():
        (tmp_path / name).mkdir()
        for f in files:
            write_image(tmp_path / name / f, value=len(f))
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    (tmp_path / "stray.jpg").write_bytes(b"")
    points = np.array([[12, 15], [20, 15], [16, 20], [12, 25], [20, 25]], np.float32)
    data = IdentityFolder(tmp_path, landmarks={"bob/1.png": points}, size=(56, 48))
    assert data.classes == ["alice", "bob"]
    assert data.paths == ["alice/a.jpg", "bob/1.png", "bob/2.jpg"]
    assert data.labels.tolist() == [0, 1, 1] and data.identities == ["alice", "bob", "bob"]
    crop, label = data[1]
    assert crop.shape == (56, 48, 3) and crop.dtype == np.uint8 and label == 1
    np.testing.assert_array_equal(crop, align(data.image(1), points, (56, 48)))
    with pytest.raises(KeyError, match="no landmarks for bob/2.jpg.*pydcr align"):
        data[2]
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        IdentityFolder(tmp_path / "missing")


def test_landmark_list_file_relative_to_root(tmp_path):
    write_image(tmp_path / "x" / "1.jpg")
    (tmp_path / "marks.txt").write_text("x/1.jpg" + "\t5" * 10 + "\n")
    data = IdentityFolder(tmp_path, landmarks="marks.txt")
    np.testing.assert_array_equal(data.landmarks_of(0), np.full((5, 2), 5.0))


def test_flat_folder_and_auto_layout(tmp_path):
    for name in ["b.jpg", "a.png"]:
        write_image(tmp_path / "flat" / name)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    data = open_dataset(tmp_path / "flat")
    assert isinstance(data, FlatFolder)
    assert data.paths == ["a.png", "b.jpg"] and data.labels.tolist() == [-1, -1] and data.classes == []
    write_image(tmp_path / "flat" / ".ipynb_checkpoints" / "a.png")
    (tmp_path / "flat" / "empty").mkdir()
    assert isinstance(open_dataset(tmp_path / "flat"), FlatFolder)  # those folders do not make it a tree
    write_image(tmp_path / "people" / "ann" / "1.jpg")
    assert type(open_dataset(tmp_path / "people")) is IdentityFolder
    assert open_dataset(tmp_path / "people", "flat").paths == []  # the layout asked for, not guessed
    write_image(tmp_path / "lfw_root" / "lfw" / "Ann" / "Ann_0001.jpg")
    assert type(open_dataset(tmp_path / "lfw_root")) is LFW
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        open_dataset(tmp_path / "missing")


@pytest.mark.parametrize("where", ["root", "cwd"])
def test_lfw_landmark_list_under_root_or_current_folder(tmp_path, monkeypatch, where):
    """A relative landmark list is looked for under the LFW root first, then where it was given."""
    write_image(tmp_path / "lfw_root" / "lfw" / "Ann" / "Ann_0001.jpg")
    home = tmp_path / "lfw_root" if where == "root" else tmp_path / "work"
    home.mkdir(exist_ok=True)
    (home / "marks.txt").write_text("Ann/Ann_0001.jpg" + "\t7" * 10 + "\n")
    monkeypatch.chdir(tmp_path / "work" if where == "cwd" else tmp_path)
    data = LFW(tmp_path / "lfw_root", pairs=None, landmarks="marks.txt")
    np.testing.assert_array_equal(data.landmarks_of(0), np.full((5, 2), 7.0))


@pytest.mark.parametrize(
    "text, match",
    [
        ("2\t1\nA\t1\t2\n", "announces 2 x 2 x 1 pairs, found 1"),
        ("1\nA\t1\t2\nA\t1\n", ":3: expected 3 or 4 fields"),
        ("1\nA\t1\t2\nA\t1\tB\t9\n", r":3: B/B_0009.jpg is not in the dataset"),
        ("", "empty pairs file"),
    ],
)
def test_read_pairs_errors(tmp_path, text, match):
    (tmp_path / "pairs.txt").write_text(text)
    index = {"A/A_0001.jpg": 0, "A/A_0002.jpg": 1, "B/B_0001.jpg": 2}
    with pytest.raises(ValueError, match=match):
        read_pairs(tmp_path / "pairs.txt", index)


@pytest.fixture(scope="module")
def lfw(lfw_root):
    return LFW(lfw_root)


@pytest.mark.data
def test_lfw_view2_pairs(lfw):
    assert len(lfw) == 13233 and len(lfw.classes) == 5749
    pairs = lfw.pairs
    assert len(pairs) == 6000 and pairs.num_folds == 10
    names = np.array(lfw.identities)
    for fold in range(10):
        mine = pairs.fold == fold
        assert mine.sum() == 600 and pairs.same[mine].sum() == 300
        first, second = names[pairs.first[mine]], names[pairs.second[mine]]
        assert ((first == second) == pairs.same[mine]).all()
        assert (pairs.first[mine] != pairs.second[mine]).all()
    identities = [lfw.fold_identities([f]) for f in range(10)]
    for a in range(10):
        for b in range(a + 1, 10):
            assert not identities[a] & identities[b], (a, b)
    assert lfw.fold_identities(range(10)) == set().union(*identities)
    with pytest.raises(ValueError, match=r"folds must lie in \[0, 10\) \(numbered from 0\), got \[6, 7, 8, 9, 10\]"):
        lfw.fold_identities([6, 7, 8, 9, 10])  # the command line's numbering: fold 6 (5 here) would train


@pytest.mark.data
def test_lfw_items_and_view1(lfw, lfw_root):
    marks = read_landmarks(lfw_root / "lfw_landmark.txt")
    i = lfw.paths.index("Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
    crop, label = lfw[i]
    assert lfw.classes[label] == "Aaron_Eckhart"
    np.testing.assert_array_equal(crop, align(read_image(lfw_root / "lfw" / lfw.paths[i]), marks[lfw.paths[i]]))
    dev = LFW(lfw_root, pairs="pairsDevTrain.txt", landmarks=None)
    assert dev.landmarks is None and len(dev.pairs) == 2200 and dev.pairs.num_folds == 1
    assert dev.pairs.same.sum() == 1100


def build_scface(lfw_root, root, subjects):
    """A tree with SCface's folders and file names, linking one LFW image per subject (from a different person)."""
    marks = read_landmarks(lfw_root / "lfw_landmark.txt")
    sources = sorted(marks)[::97][:subjects]
    landmarks = {}

    def put(rel, source):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(lfw_root / "lfw" / source, path)
        landmarks[rel] = marks[source]

    for s, source in enumerate(sources, 1):
        sid = f"{s:03d}"
        put(f"mugshot_frontal_cropped_all/{sid}_frontal.JPG", source)
        put(f"mugshot_rotation_all/{sid}_L1.JPG", source)  # not part of the protocol
        for d in (1, 2, 3):
            for c in (1, 2, 3, 4, 5):
                put(f"surveillance_cameras_distance_{d}/cam{c}/{sid}_cam{c}_{d}.jpg", source)
                put(f"surveillance_cameras_all/{sid}_cam{c}_{d}.jpg", source)  # the same file again
        put(f"surveillance_cameras_IR_cam8/{sid}_cam8.jpg", source)
    return landmarks


@pytest.mark.data
def test_scface_stand_in(lfw_root, tmp_path):
    landmarks = build_scface(lfw_root, tmp_path, 130)
    data = SCface(tmp_path, seed=3, landmarks=landmarks)
    assert len(data.classes) == 130 and len(data) == 130 * 16
    assert len(data.train_subjects) == 50 and len(data.test_subjects) == 80
    assert not set(data.train_subjects) & set(data.test_subjects)
    again, other = SCface(tmp_path, seed=3), SCface(tmp_path, seed=4)
    assert again.train_subjects == data.train_subjects and other.train_subjects != data.train_subjects

    gallery = data.gallery()
    assert len(gallery) == 80 and (data.camera[gallery] == 0).all()
    assert {data.classes[label] for label in data.labels[gallery]} == set(data.test_subjects)
    assert all(data.paths[i].endswith("_frontal.JPG") for i in gallery)
    for d in (1, 2, 3):
        probes = data.probes(d)
        assert len(probes) == 80 * 5 and (data.distance[probes] == d).all()
        assert set(data.labels[probes]) == set(data.labels[gallery])
        assert len(data.probes(d, split="train", cameras=[2, 4])) == 50 * 2
    for i in (gallery[0], data.probes(1)[0]):
        crop, label = data[i]
        name = data.paths[i].rsplit("/", 1)[-1]
        assert crop.shape == (112, 96, 3) and data.classes[label] == name.split("_")[0]
    with pytest.raises(ValueError, match="distance must be 1"):
        data.probes(4)
    with pytest.raises(ValueError, match="split must be"):
        data.gallery("val")
    with pytest.raises(ValueError, match=r"train_subjects must be in \[0, 130\)"):
        SCface(tmp_path, train_subjects=130)


def test_scface_empty_tree(tmp_path):
    with pytest.raises(ValueError, match="no SCface images"):
        SCface(tmp_path)


def test_align_and_pack_take_an_scface_tree_of_any_size(tmp_path, capsys):
    """Listing SCface for `pydcr align` / `pydcr pack` does not split its subjects: 3 are enough."""
    from pydcr.cli import main

    root = tmp_path / "scface"
    for sid in ("001", "002", "003"):
        write_image(root / "mugshot_frontal_cropped_all" / f"{sid}_frontal.JPG", 90, (64, 64, 3))
        write_image(root / "surveillance_cameras_all" / f"{sid}_cam1_1.jpg", 90, (64, 64, 3))
    data = open_dataset(root, "scface")
    assert len(data) == 6 and data.classes == ["001", "002", "003"] and data.test_subjects == data.classes
    marks = "".join(p + "\t20\t30\t44\t30\t32\t42\t22\t52\t42\t52\n" for p in data.paths)
    (tmp_path / "marks.txt").write_text(marks)
    assert main(["pack", str(root), str(tmp_path / "s.pack"), "--layout", "scface", "--landmarks",
                 str(tmp_path / "marks.txt"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 's.pack'}: 6 faces of 3 identities, ")
    # flat grey images hold no face: align lists all six as such (and, finding none, writes no list)
    assert main(["align", str(root), str(tmp_path / "found.txt"), "--layout", "scface", "--device", "cpu",
                 "--quiet"]) == 1
    assert capsys.readouterr().err.count("no face: ") == 6 and not (tmp_path / "found.txt").exists()
