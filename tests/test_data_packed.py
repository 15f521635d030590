"""Pack files: round trips in every encoding, resuming, and detection of truncation and damage."""

import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pydcr.data import CorruptPackError, FlatFolder, IdentityFolder, PackedFaces, align, pack, read_landmarks
from pydcr.data.packed import FOOTER, RECORD, RECORD_MAGIC

POINTS = np.array([[20, 30], [44, 30], [32, 42], [22, 52], [42, 52]], np.float32)


@pytest.fixture
def tree(tmp_path):
    """Three identities of smooth random 64 x 64 images (seeded), landmarks for all but one, one unreadable file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    marks = {}
    for person, count in (("ann", 3), ("bo", 1), ("cy", 4)):
        (root / person).mkdir(parents=True)
        for k in range(count):
            name = f"{person}/{k}.png"
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            cv2.imwrite(str(root / name), cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC))
            marks[name] = POINTS + rng.uniform(-3, 3, (5, 2)).astype(np.float32)
    del marks["cy/2.png"]
    (root / "cy" / "9.jpg").write_bytes(b"not a jpeg")
    return root, marks


def test_degenerate_landmarks_are_skipped_and_listed(tree, tmp_path):
    root, marks = tree
    marks["ann/1.png"] = np.full((5, 2), 30, np.float32)  # all five points equal: no alignment exists
    out = pack(IdentityFolder(root, landmarks=marks), tmp_path / "x.pack", progress=False)
    with PackedFaces(out) as faces:
        assert "ann/1.png" not in faces.paths and "ann/2.png" in faces.paths
        assert dict(faces.skipped)["ann/1.png"].startswith("bad landmarks: source points are all equal")


@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg"])
def test_round_trip(tree, tmp_path, fmt):
    root, marks = tree
    data = IdentityFolder(root, landmarks=marks, size=(56, 48))
    out = pack(data, tmp_path / "x.pack", format=fmt, quality=95, workers=3, progress=False)
    assert not (tmp_path / "x.pack.partial").exists()
    with PackedFaces(out) as faces:
        assert faces.format == fmt and faces.size == (56, 48) and faces.classes == ["ann", "bo", "cy"]
        assert dict(faces.skipped) == {"cy/2.png": "no landmarks", "cy/9.jpg": faces.skipped[-1][1]}
        assert faces.skipped[-1][1].startswith("unreadable: cannot decode")
        expected = [p for p in data.paths if p in marks]
        assert faces.paths == expected and len(faces) == len(expected)
        for i, path in enumerate(faces.paths):
            j = data.paths.index(path)
            crop, label = faces[i]
            truth, truth_label = data[j]
            assert label == truth_label and faces.identities[i] == path.split("/")[0]
            np.testing.assert_array_equal(faces.landmarks[i], marks[path])
            assert crop.shape == (56, 48, 3) and crop.dtype == np.uint8
            if fmt == "jpeg":  # lossy: what OpenCV's own JPEG round trip of the crop gives
                ok, data_ = cv2.imencode(".jpg", truth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                truth = cv2.imdecode(data_, cv2.IMREAD_COLOR)[..., ::-1]
            np.testing.assert_array_equal(crop, truth)
        np.testing.assert_array_equal(faces.images([2, 0]), np.stack([faces.image(2), faces.image(0)]))
        assert faces.verify() == []
        with pytest.raises(IndexError, match="out of range"):
            faces.image(len(faces))


def test_pack_is_deterministic_and_picklable(tree, tmp_path):
    root, marks = tree
    data = IdentityFolder(root, landmarks=marks)
    a = pack(data, tmp_path / "a.pack", workers=1, progress=False)
    b = pack(data, tmp_path / "b.pack", workers=4, progress=False)
    assert a.read_bytes() == b.read_bytes()
    faces = PackedFaces(a)
    clone = pickle.loads(pickle.dumps(faces))  # what DataLoader workers receive
    np.testing.assert_array_equal(clone[1][0], faces[1][0])


class Interrupt(Exception):
    pass


class Flaky(IdentityFolder):
    """Fails when asked for one item, to interrupt a pack midway."""

    fail_at = None
    reads: list

    def image(self, index):
        self.reads.append(index)
        if index == self.fail_at:
            raise Interrupt
        return super().image(index)


def test_resume_after_interruption(tree, tmp_path):
    root, marks = tree
    whole = pack(IdentityFolder(root, landmarks=marks), tmp_path / "whole.pack", progress=False)
    data = Flaky(root, landmarks=marks)
    data.reads, data.fail_at = [], 5
    out = tmp_path / "part.pack"
    with pytest.raises(Interrupt):
        pack(data, out, workers=2, progress=False)
    partial = tmp_path / "part.pack.partial"
    assert partial.exists() and not out.exists()
    with open(partial, "ab") as f:  # a torn record, as from a killed process
        f.write(b"REC1\x00\x00")
    data.reads, data.fail_at = [], None
    pack(data, out, workers=2, progress=False)
    assert min(data.reads) == 5  # the five whole records were kept
    assert out.read_bytes() == whole.read_bytes()


def test_resume_ignores_another_plan(tree, tmp_path):
    root, marks = tree
    data = Flaky(root, landmarks=marks)
    data.reads, data.fail_at = [], 4
    with pytest.raises(Interrupt):
        pack(data, tmp_path / "p.pack", progress=False)
    data.reads, data.fail_at = [], None
    pack(data, tmp_path / "p.pack", format="png", progress=False)  # other settings: start over
    assert min(data.reads) == 0
    assert PackedFaces(tmp_path / "p.pack").format == "png"


def test_resume_ignores_a_pack_begun_by_another_alignment(tree, tmp_path, monkeypatch):
    import pydcr.data.packed

    root, marks = tree
    data = Flaky(root, landmarks=marks)
    data.reads, data.fail_at = [], 4
    with pytest.raises(Interrupt):
        pack(data, tmp_path / "p.pack", progress=False)
    monkeypatch.setattr(pydcr.data.packed, "ALIGNMENT_VERSION", pydcr.data.packed.ALIGNMENT_VERSION + 1)
    data.reads, data.fail_at = [], None
    pack(data, tmp_path / "p.pack", progress=False)
    assert min(data.reads) == 0  # its crops would differ: started over


def test_resume_with_a_detector_starts_over(tree, tmp_path):
    # Images skipped for lack of landmarks would stay skipped in a resumed pack that now detects.
    from fake_detector import FakeDetector

    root, marks = tree
    data = Flaky(root, landmarks=marks)
    data.reads, data.fail_at = [], 6  # past cy/2.png, skipped with "no landmarks"
    with pytest.raises(Interrupt):
        pack(data, tmp_path / "p.pack", progress=False)
    data.reads, data.fail_at = [], None
    pack(data, tmp_path / "p.pack", detector=FakeDetector(POINTS), progress=False)
    skipped = [reason for _, reason in PackedFaces(tmp_path / "p.pack").skipped]
    assert min(data.reads) == 0 and "no landmarks" not in skipped and len(skipped) == 1  # the unreadable file


def test_resume_stops_at_a_damaged_record_length(tree, tmp_path):
    root, marks = tree
    whole = pack(IdentityFolder(root, landmarks=marks), tmp_path / "whole.pack", progress=False)
    data = Flaky(root, landmarks=marks)
    data.reads, data.fail_at = [], 4
    with pytest.raises(Interrupt):
        pack(data, tmp_path / "p.pack", progress=False)
    partial = tmp_path / "p.pack.partial"
    raw = bytearray(partial.read_bytes())
    last = raw.rfind(RECORD_MAGIC)  # the fourth record's header: its length made absurd
    fields = list(RECORD.unpack_from(raw, last))
    fields[3] = 2**62
    RECORD.pack_into(raw, last, *fields)
    partial.write_bytes(raw)
    data.reads, data.fail_at = [], None
    pack(data, tmp_path / "p.pack", progress=False)  # not a MemoryError: the records end before it
    assert min(data.reads) == 3 and (tmp_path / "p.pack").read_bytes() == whole.read_bytes()


def test_file_names_that_are_not_utf8(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    ok, png = cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))
    try:
        with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:  # Latin-1 bytes, as old archives hold
            f.write(png.tobytes())
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    (root / "plain.png").write_bytes(png.tobytes())
    data = FlatFolder(root, landmarks={name: POINTS for name in os.listdir(root)})
    faces = PackedFaces(pack(data, tmp_path / "p.pack", progress=False))
    assert faces.paths == data.paths and len(faces) == 2


@pytest.fixture
def packed(tree, tmp_path):
    root, marks = tree
    return pack(IdentityFolder(root, landmarks=marks), tmp_path / "ok.pack", format="raw", progress=False)


def test_truncated_pack_is_refused(packed):
    data = packed.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20):
        packed.write_bytes(data[:cut])
        with pytest.raises(CorruptPackError, match=r"ok.pack is truncated or damaged: no index footer"):
            PackedFaces(packed)
    packed.write_bytes(b"")
    with pytest.raises(CorruptPackError, match="empty"):
        PackedFaces(packed)
    packed.write_bytes(b"PK\x03\x04 a zip file, say" * 10)
    with pytest.raises(CorruptPackError, match="not a pydcr pack"):
        PackedFaces(packed)


def test_damaged_record_is_named(packed):
    faces = PackedFaces(packed)
    offset, name = int(faces.offsets[3]), faces.paths[3]
    faces.close()
    with open(packed, "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0x01]))
    faces = PackedFaces(packed)
    faces.image(2)  # the others still read
    with pytest.raises(CorruptPackError, match=rf"record 3 \({name}\) is damaged"):
        faces.image(3)
    assert faces.verify() == [3]


def test_damaged_index_is_refused(packed):
    data = bytearray(packed.read_bytes())
    data[-FOOTER.size - 10] ^= 0xFF
    packed.write_bytes(bytes(data))
    with pytest.raises(CorruptPackError, match="index is damaged"):
        PackedFaces(packed)


def test_bad_settings(tree, tmp_path):
    root, marks = tree
    with pytest.raises(ValueError, match="format must be one of jpeg, png, raw"):
        pack(IdentityFolder(root, landmarks=marks), tmp_path / "x.pack", format="webp")
    with pytest.raises(ValueError, match="quality"):
        pack(IdentityFolder(root, landmarks=marks), tmp_path / "x.pack", quality=101)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pydcr", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_pack_command_on_a_flat_folder_and_its_errors(tmp_path):
    """A folder of loose images packs without identities; a missing folder or landmark list, or a
    folder without images, exits 2 with one line and writes nothing."""
    (tmp_path / "photos").mkdir()
    for name in ["a.jpg", "b.png"]:
        cv2.imwrite(str(tmp_path / "photos" / name), np.full((120, 100, 3), 128, np.uint8))
    (tmp_path / "marks.txt").write_text("".join(f"{n}" + "\t40\t50\t60\t50\t50\t62\t42\t75\t58\t75\n"
                                                for n in ["a.jpg", "b.png"]))
    done = run_cli("pack", "photos", "p.pack", "--landmarks", "marks.txt", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("p.pack: 2 faces without identities (a flat folder), ")
    faces = PackedFaces(tmp_path / "p.pack")
    assert faces.paths == ["a.jpg", "b.png"] and faces.labels.tolist() == [-1, -1] and faces.classes == []
    assert faces.identities == [None, None] == FlatFolder(tmp_path / "photos").identities

    (tmp_path / "empty").mkdir()
    for args, message in [
        (("missing", "x.pack"), "no such dataset folder: missing"),
        (("photos", "x.pack", "--landmarks", "nowhere.txt"), "no such landmark list: nowhere.txt"),
        (("empty", "x.pack"), "no images under empty in the auto layout (see --layout)"),
    ]:
        done = run_cli("pack", *args, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.strip() == f"pydcr pack: {message}", done.stderr
        assert not (tmp_path / "x.pack").exists()


@pytest.mark.data
def test_align_and_pack_commands(lfw_root, tmp_path):
    """`pydcr align` writes MTCNN landmarks for a folder without any; `pydcr pack` uses them."""
    marks = read_landmarks(lfw_root / "lfw_landmark.txt")
    root = tmp_path / "people"
    names = sorted(marks)[::1500][:6]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(lfw_root / "lfw" / n, root / n)
    (root / "Nobody").mkdir()
    cv2.imwrite(str(root / "Nobody" / "blank.png"), np.full((100, 100, 3), 90, np.uint8))

    done = run_cli("align", root, tmp_path / "marks.txt", "--quiet", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "landmarks of 6 of 7 images" in done.stdout and "no face: Nobody/blank.png" in done.stderr
    found = read_landmarks(tmp_path / "marks.txt")
    assert sorted(found) == names and not (tmp_path / "marks.txt.partial").exists()
    for n in names:
        assert np.median(np.linalg.norm(found[n] - marks[n], axis=1)) < 4

    done = run_cli("pack", root, tmp_path / "p.pack", "--landmarks", tmp_path / "marks.txt", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 faces of 6 identities" in done.stdout and "skipped Nobody/blank.png: no landmarks" in done.stderr
    faces = PackedFaces(tmp_path / "p.pack")
    i = faces.paths.index(names[0])
    crop = align(cv2.cvtColor(cv2.imread(str(root / names[0])), cv2.COLOR_BGR2RGB), found[names[0]])
    assert np.abs(faces.image(i).astype(int) - crop).mean() < 3  # JPEG at quality 90
