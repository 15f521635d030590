"""`pydcr embed`, `pydcr identify` and `pydcr verify` end to end on tiny inputs, two processes under
torchrun, and argument errors."""

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pydcr
from pydcr.cli import main
from pydcr.data import REFERENCE_112x96, PackedFaces
from pydcr.demo import DEMO_PACK
from pydcr.embed import Gallery, topk
from pydcr.models import DCR, BranchPair, Trunk, save

from fake_detector import FakeDetector


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save(DCR(Trunk(width=0.125), {8: BranchPair(0), 16: BranchPair(0)}), root / f"m{seed}.safetensors"))
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 aligned crops of 4 identities (one folder each) and one unreadable file among them."""
    root = tmp_path_factory.mktemp("gallery")
    demo = PackedFaces(DEMO_PACK)
    for i in range(12):
        person = root / f"person{i % 4}"
        person.mkdir(exist_ok=True)
        cv2.imwrite(str(person / f"{i:02d}.png"), cv2.cvtColor(demo.image(i), cv2.COLOR_RGB2BGR))
    (root / "person2" / "05b.jpg").write_bytes(b"not an image")
    return root


def test_embed_identify_verify(models, folder, tmp_path, capsys):
    model = models[0]
    gallery = tmp_path / "g.safetensors"
    assert main(["embed", str(model), str(folder), "--out", str(gallery), "--dtype", "float32", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "05b.jpg: unreadable" in err and "1 of 13 inputs skipped" in err
    g = Gallery(gallery)
    assert len(g) == 12 and g.heads == ["hr8", "hr16"] and g.failures[0][0] == "person2/05b.jpg"
    assert [g.identity(r) for r in range(len(g))] == [f"person{int(Path(p).stem) % 4}" for p in g.paths]

    # Probes: a list file of the same crops shrunk to 12 x 12 (native low-resolution probes).
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    lines = []
    for i, path in enumerate(g.paths[:5]):
        image = cv2.imread(str(folder / path))
        cv2.imwrite(str(probe_dir / f"q{i}.png"), cv2.resize(image, (12, 12), interpolation=cv2.INTER_AREA))
        lines.append(f"q{i}.png\t{Path(path).parent.name}")
    (probe_dir / "list.txt").write_text("\n".join(lines) + "\n")
    results = tmp_path / "r.csv"
    assert main(["identify", str(model), "--gallery", str(gallery), "--probes", str(probe_dir / "list.txt"),
                 "--top-k", "3", "--out", str(results), "--quiet"]) == 0
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 5 * 3

    # The same search by hand: probe features through the LR branch, brute force against the file.
    e = pydcr.Embedder(model)
    probes = e.embed_lr([str(probe_dir / f"q{i}.png") for i in range(5)])
    r = int(probes.resolutions[0])
    scores, hits = topk(g.features(f"hr{r}"), probes.features, 3)
    assert [row["gallery"] for row in rows] == [g.paths[h] for h in hits.reshape(-1).tolist()]
    assert [int(row["gallery_row"]) for row in rows] == hits.reshape(-1).tolist()
    np.testing.assert_allclose([float(row["score"]) for row in rows], scores.reshape(-1).numpy(), atol=1e-5)
    assert [row["rank"] for row in rows] == ["1", "2", "3"] * 5
    assert {row["resolution"] for row in rows} == {str(r)} and rows[0]["probe_identity"] == lines[0].split("\t")[1]

    # verify: one gallery crop against one probe.
    a, b = folder / g.paths[0], probe_dir / "q1.png"
    capsys.readouterr()
    assert main(["verify", str(model), str(a), str(b), "--threshold", "2"]) == 0
    out = capsys.readouterr().out
    z = e.embed_lr([str(b)])
    x = e.embed_hr([str(a)], int(z.resolutions[0]))
    want = torch.nn.functional.cosine_similarity(x.features, z.features).item()
    assert out.startswith(f"cosine {want:.4f}") and "different at threshold 2" in out
    below = round(want - 0.01, 4)  # a threshold the pair's cosine passes: "same"
    assert main(["verify", str(model), str(a), str(b), "--threshold", str(below)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cosine {want:.4f}") and out.rstrip().endswith(f": same at threshold {below:g}"), out


def test_verify_with_a_trunk_only_model_takes_a_native_probe(folder, tmp_path, capsys):
    """Without branch pairs, verify compares trunk features; a 12 x 12 probe is upsampled, as identify does."""
    torch.manual_seed(0)
    trunk = DCR(Trunk(width=0.125))
    model = save(trunk, tmp_path / "trunk.safetensors")
    a = sorted(folder.rglob("*.png"))[0]
    b = tmp_path / "probe.png"
    cv2.imwrite(str(b), cv2.resize(cv2.imread(str(a)), (12, 12), interpolation=cv2.INTER_AREA))
    assert main(["verify", str(model), str(a), str(b)]) == 0
    out = capsys.readouterr().out
    e = pydcr.Embedder(trunk)
    want = torch.nn.functional.cosine_similarity(e.embed_trunk([str(a)]).features,
                                                 e.embed_trunk([str(b)]).features).item()
    with torch.no_grad():
        probe = torch.from_numpy(cv2.cvtColor(cv2.imread(str(b)), cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None]
        torch.testing.assert_close(e.embed_trunk([str(b)]).features, trunk.embed_trunk(probe))
    assert out.startswith(f"cosine {want:.4f} (trunk vs probe through trunk)")


def _photo(crop_path: Path, out: Path) -> np.ndarray:
    """The crop placed in a larger, black 200 x 180 photo, shifted by (40, 30): the photo's landmarks."""
    canvas = np.zeros((200, 180, 3), np.uint8)
    canvas[30:142, 40:136] = cv2.imread(str(crop_path))
    cv2.imwrite(str(out), canvas)
    return REFERENCE_112x96 + np.array([40.0, 30.0], np.float32)


def test_detect_aligns_photos_and_takes_small_probes_as_they_are(models, folder, tmp_path, monkeypatch, capsys):
    """--detect applies to images larger than a native low-resolution crop; a 12 x 12 probe (where
    MTCNN finds no face) is used as it is, as without --detect."""
    import pydcr.data

    crop = sorted(folder.rglob("*.png"))[0]
    photo, probe = tmp_path / "photo.png", tmp_path / "probes" / "q.png"
    probe.parent.mkdir()
    points = _photo(crop, photo)
    cv2.imwrite(str(probe), cv2.resize(cv2.imread(str(crop)), (12, 12), interpolation=cv2.INTER_AREA))
    seen = []
    monkeypatch.setattr(pydcr.data, "MTCNN", lambda *args, **kwargs: FakeDetector(points, seen))
    assert main(["verify", str(models[0]), str(crop), str(probe)]) == 0
    want = capsys.readouterr().out
    assert main(["verify", str(models[0]), str(photo), str(probe), "--detect"]) == 0
    assert capsys.readouterr().out == want and seen == [(200, 180)]
    gallery, results = tmp_path / "g.safetensors", tmp_path / "r.csv"
    assert main(["embed", str(models[0]), str(folder), "--out", str(gallery), "--quiet"]) == 0
    seen.clear()
    assert main(["identify", str(models[0]), "--gallery", str(gallery), "--probes", str(probe.parent), "--detect",
                 "--out", str(results), "--quiet"]) == 0
    assert seen == [] and len(list(csv.DictReader(results.open()))) == 5


def test_unaligned_images_name_the_options(models, folder, tmp_path, capsys):
    """The reason for an image that is not an aligned crop names --landmarks and --detect."""
    photo = tmp_path / "photo.png"
    _photo(sorted(folder.rglob("*.png"))[0], photo)
    assert main(["verify", str(models[0]), str(photo), str(photo)]) == 2
    assert capsys.readouterr().err == (f"pydcr verify: cannot use {photo}: not an aligned 112x96 crop (or a smaller "
                                       "low-resolution one): got 200x180; give --landmarks LIST or --detect to align "
                                       "it\n")
    (tmp_path / "marks.txt").write_text("elsewhere.png" + "\t1" * 10 + "\n")
    (tmp_path / "list.txt").write_text("photo.png\n")
    assert main(["embed", str(models[0]), str(tmp_path / "list.txt"), "--landmarks", str(tmp_path / "marks.txt"),
                 "--out", str(tmp_path / "g.safetensors"), "--quiet"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "skipped photo.png: not an aligned 112x96 crop: got 200x180; it is not in the landmark list: add it, or use "
        "--detect (without --landmarks) to align it")


def test_a_finished_gallery_is_kept(models, folder, tmp_path, monkeypatch, capsys):
    """A rerun of a finished embed says so and embeds nothing; other settings, a changed image or
    --fresh embed again."""
    import pydcr.embed.gallery as gallery_module

    faces = tmp_path / "faces"
    shutil.copytree(folder, faces)
    out = tmp_path / "g.safetensors"
    argv = ["embed", str(models[0]), str(faces), "--out", str(out), "--quiet"]
    real, chunks = gallery_module._write_chunk, []
    monkeypatch.setattr(gallery_module, "_write_chunk", lambda *args: (chunks.append(1), real(*args)))
    assert main(argv) == 0 and len(chunks) == 1
    made, stamp = out.read_bytes(), out.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0 and len(chunks) == 1
    assert capsys.readouterr().out == (f"{out}: already complete (12 faces, 1 inputs skipped) from the same input and "
                                       "settings; nothing embedded (--fresh embeds again)\n")
    assert out.read_bytes() == made and out.stat().st_mtime_ns == stamp
    for extra in (["--batch-size", "5"], ["--dtype", "float32"], ["--resolution", "8"], ["--amp"], ["--fresh"]):
        assert main([*argv, *extra]) == 0 and "already complete" not in capsys.readouterr().out
    assert len(chunks) == 6
    assert main(argv) == 0 and len(chunks) == 6  # --fresh made it again, as this run would
    image = sorted(faces.rglob("*.png"))[3]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert main(argv) == 0 and len(chunks) == 7
    assert main(argv) == 0 and len(chunks) == 7


def test_the_input_path_and_model_file_name_are_not_compared(models, folder, tmp_path, monkeypatch, capsys):
    """The same input reached by another path, and a renamed copy of the model file, resume an
    interrupted run and keep a finished one."""
    import pydcr.embed.gallery as gallery_module

    model = tmp_path / "renamed.safetensors"
    shutil.copy(models[0], model)
    out = tmp_path / "g.safetensors"
    real, chunks = gallery_module._write_chunk, []

    def interrupted(*args):
        if len(chunks) == 1:
            raise KeyboardInterrupt
        chunks.append(1)
        return real(*args)

    monkeypatch.setattr(gallery_module, "_write_chunk", interrupted)
    assert main(["embed", str(models[0]), str(folder), "--out", str(out), "--chunk-size", "8", "--quiet"]) == 130
    monkeypatch.setattr(gallery_module, "_write_chunk", lambda *args: (chunks.append(1), real(*args)))
    monkeypatch.chdir(folder.parent)
    relative = ["embed", str(model), folder.name, "--out", str(out), "--chunk-size", "8", "--quiet"]
    assert main(relative) == 0 and len(chunks) == 2  # chunk 0 was kept
    assert "starting over" not in capsys.readouterr().err
    assert Gallery(out).meta["about"] == {"source": folder.name, "kind": "folder", "model_file": model.name}
    assert main(["embed", str(models[0]), str(folder), "--out", str(out), "--chunk-size", "8", "--quiet"]) == 0
    assert len(chunks) == 2 and "already complete" in capsys.readouterr().out


def test_identify_embeds_probes_as_the_gallery_was(models, folder, tmp_path):
    """A gallery of image + mirror features is searched with probes embedded the same way."""
    gallery = tmp_path / "g.safetensors"
    assert main(["embed", str(models[0]), str(folder), "--out", str(gallery), "--dtype", "float32", "--flip",
                 "--quiet"]) == 0
    g = Gallery(gallery)
    assert g.meta["flip"] is True
    probes = sorted(folder.rglob("*.png"))[:4]
    listing = tmp_path / "probes.txt"
    listing.write_text("".join(f"{p}\n" for p in probes))
    results = tmp_path / "r.csv"
    assert main(["identify", str(models[0]), "--gallery", str(gallery), "--probes", str(listing), "--size", "16",
                 "--top-k", "2", "--out", str(results), "--quiet"]) == 0
    rows = list(csv.DictReader(results.open()))
    e = pydcr.Embedder(models[0])
    with_flip = e.embed_lr([str(p) for p in probes], 16, flip=True).features
    for features, flip in ((with_flip, True), (e.embed_lr([str(p) for p in probes], 16).features, False)):
        scores, hits = topk(g.features("hr16"), features, 2)
        same = [float(r["score"]) for r in rows] == pytest.approx(scores.reshape(-1).tolist(), abs=2e-6)
        assert same == flip


def test_identify_refuses_a_gallery_with_nan_features(models, folder, tmp_path, capsys):
    from pydcr._files import write_safetensors
    from safetensors import safe_open

    gallery = tmp_path / "g.safetensors"
    assert main(["embed", str(models[0]), str(folder), "--out", str(gallery), "--dtype", "float32", "--quiet"]) == 0
    with safe_open(str(gallery), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["features.hr16"][5, 7] = float("nan")
    write_safetensors(tensors, gallery, meta)
    results = tmp_path / "r.csv"
    capsys.readouterr()
    assert main(["identify", str(models[0]), "--gallery", str(gallery), "--probes", str(folder), "--size", "16",
                 "--out", str(results), "--quiet"]) == 2
    assert "hr16: the gallery features hold NaN or infinite values" in capsys.readouterr().err
    assert not results.exists()


def test_size_does_not_apply_to_trunk_features(models, folder, tmp_path, capsys):
    """The trunk takes no probe size: --size with a model without pairs, or a trunk-only gallery, is refused."""
    torch.manual_seed(0)
    trunk = save(DCR(Trunk(width=0.125)), tmp_path / "trunk.safetensors")
    a, b = sorted(folder.rglob("*.png"))[:2]
    assert main(["verify", str(trunk), str(a), str(b), "--size", "8"]) == 2
    assert capsys.readouterr().err.strip() == f"pydcr verify: {trunk} has no branch pairs: --size does not apply"
    for model, extra in ((trunk, []), (models[0], ["--trunk"])):
        gallery = tmp_path / f"g-{model.stem}.safetensors"
        assert main(["embed", str(model), str(folder), "--out", str(gallery), "--quiet", *extra]) == 0
        capsys.readouterr()
        results = tmp_path / "r.csv"
        assert main(["identify", str(model), "--gallery", str(gallery), "--probes", str(folder), "--size", "8",
                     "--out", str(results), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert not results.exists()
        if model == trunk:
            assert err == f"pydcr identify: {trunk} has no branch pairs: --size does not apply"
        else:
            assert err == (f"pydcr identify: {gallery} holds trunk features only: --size does not apply (embed the "
                           "gallery without --trunk to match probes through a branch pair)")


def test_identify_refuses_another_models_gallery(models, folder, tmp_path, capsys):
    gallery = tmp_path / "g.safetensors"
    assert main(["embed", str(models[0]), str(folder), "--out", str(gallery), "--quiet"]) == 0
    code = main(["identify", str(models[1]), "--gallery", str(gallery), "--probes", str(folder),
                 "--out", str(tmp_path / "r.csv")])
    assert code == 2 and "embedded by a different model" in capsys.readouterr().err


def test_list_and_pack_inputs_agree(models, folder, tmp_path):
    """The same faces from a list file and from a pack give the same features."""
    from pydcr.data import open_dataset, pack

    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    # as a Windows editor saves it: a byte-order mark and CRLF line ends, neither part of a path
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf" + "".join(f"{folder / p}\r\n" for p in paths).encode())
    from pydcr.data import REFERENCE_112x96

    dataset = open_dataset(folder, "folder", {p: REFERENCE_112x96 for p in paths})
    packed = pack(dataset, tmp_path / "f.pack", format="png", progress=False)
    for name, src in (("list", tmp_path / "list.txt"), ("pack", packed)):
        assert main(["embed", str(models[0]), str(src), "--out", str(tmp_path / f"{name}.safetensors"), "--quiet"]) == 0
    a, b = Gallery(tmp_path / "list.safetensors"), Gallery(tmp_path / "pack.safetensors")
    assert len(a) == len(b) == 12
    torch.testing.assert_close(a.features("hr8"), b.features("hr8"))


def test_amp_on_the_cpu(models, folder, tmp_path):
    """--amp runs the CPU in bfloat16 autocast: features close to float32's, in the same rows."""
    out = {}
    for flag in ("--no-amp", "--amp"):
        out[flag] = tmp_path / f"{flag.strip('-')}.safetensors"
        assert main(["embed", str(models[0]), str(folder), "--out", str(out[flag]), "--dtype", "float32",
                     "--device", "cpu", flag, "--quiet"]) == 0
    exact, fast = Gallery(out["--no-amp"]), Gallery(out["--amp"])
    assert exact.paths == fast.paths and len(exact) == 12
    cosine = torch.nn.functional.cosine_similarity(exact.features("hr8"), fast.features("hr8"))
    assert cosine.min() > 0.99 and not torch.equal(exact.features("hr8"), fast.features("hr8"))


def test_two_processes_under_torchrun(models, folder, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    out = tmp_path / "g.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [str(models[0]), str(folder), "--chunk-size", "4", "--batch-size", "4", "--quiet"]
    subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pydcr", "embed", *common,
                    "--out", str(out), "--shard", "auto"], check=True, env=env, cwd=tmp_path, timeout=300)
    shards = sorted(tmp_path.glob("g.shard*"))
    assert [s.name for s in shards] == ["g.shard000-of-002.safetensors", "g.shard001-of-002.safetensors"]
    assert main(["embed", "--merge", *map(str, shards), "--out", str(out)]) == 0
    single = tmp_path / "single.safetensors"
    assert main(["embed", *common, "--out", str(single)]) == 0
    a, b = Gallery(out), Gallery(single)
    assert a.paths == b.paths and a.failures == b.failures and a.meta == b.meta
    for head in a.heads:  # other processes (one thread each): equal up to float rounding
        torch.testing.assert_close(a.features(head), b.features(head), atol=1e-3, rtol=1e-3)


def test_interrupted_cli_run_resumes(models, folder, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first chunk: exit 130 and a rerun that finishes the same file."""
    import pydcr.embed.gallery as gallery_module

    argv = ["embed", str(models[0]), str(folder), "--chunk-size", "4", "--quiet"]
    whole = tmp_path / "whole.safetensors"
    assert main([*argv, "--out", str(whole)]) == 0
    real = gallery_module._write_chunk
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(gallery_module, "_write_chunk", interrupted)
    out = tmp_path / "g.safetensors"
    assert main([*argv, "--out", str(out)]) == 130
    assert "resumes from the last finished chunk" in capsys.readouterr().err
    monkeypatch.setattr(gallery_module, "_write_chunk", real)
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["embed", "/no/model.safetensors", "FOLDER", "--out", "G"], "no such model file"),
        (["embed", "MODEL", "/no/such/folder", "--out", "G"], "no such input folder, list or pack"),
        (["embed", "MODEL", "EMPTY", "--out", "G"], "no images in"),
        (["identify", "MODEL", "--gallery", "G", "--probes", "EMPTY", "--out", "R"], "no images in"),
        (["embed", "MODEL", "FOLDER", "--out", "G", "--resolution", "12"], "no branch pair for [12]"),
        (["embed", "MODEL", "FOLDER", "--out", "G", "--shard", "2/2"], "--shard must be RANK/WORLD"),
        (["embed", "MODEL", "FOLDER", "--out", "G", "--shard", "1/99999999999999999999"],
         "--shard WORLD must be at most 65536, got 99999999999999999999"),
        (["embed", "MODEL", "FOLDER", "--out", "G", "--batch-size", "99999999999999999999"],
         "--batch-size must be below 2**31, got 99999999999999999999"),
        (["embed", "MODEL", "FOLDER", "--out", "G", "--batch-size", "0"], "--batch-size must be positive"),
        (["embed", "MODEL", "FOLDER", "--out", "G", "--landmarks", "/no/marks.txt"], "no such landmark list"),
        (["embed", "MODEL", "--out", "G"], "give MODEL and INPUT"),
        (["embed", "--merge", "/no/shard", "--out", "G"], "no such shard file"),
        (["embed", "--merge", "G", "--out", "G2", "--dtype", "float32"], "so --dtype cannot apply"),
        (["embed", "--merge", "G", "--out", "G2", "--trunk", "--resolution", "8"],
         "so --resolution, --trunk cannot apply"),
        (["identify", "MODEL", "--gallery", "/no/g", "--probes", "FOLDER", "--out", "R"], "no such gallery file"),
        (["identify", "MODEL", "--gallery", "MODEL", "--probes", "FOLDER", "--out", "R"], "not a pydcr gallery"),
        (["identify", "MODEL", "--gallery", "G", "--probes", "FOLDER", "--out", "R", "--size", "0"],
         "--size must be positive"),
        (["identify", "MODEL", "--gallery", "G", "--probes", "FOLDER", "--out", "R", "--top-k", "0"],
         "--top-k must be positive"),
        (["identify", "MODEL", "--gallery", "G", "--probes", "FOLDER", "--out", "R", "--size", "100000"],
         "--size 100000 is larger than"),
        (["verify", "MODEL", "IMAGE", "IMAGE", "--size", "100000"], "--size 100000 is larger than"),
        (["verify", "MODEL", "/no/a.png", "/no/b.png"], "no such image file"),
    ],
)
def test_argument_errors(argv, message, models, folder, tmp_path, capsys):
    names = {"MODEL": str(models[0]), "FOLDER": str(folder), "G": str(tmp_path / "g.safetensors"),
             "R": str(tmp_path / "r.csv"), "IMAGE": str(sorted(folder.rglob("*.png"))[0]),
             "EMPTY": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    if "identify" in argv and "G" in argv:
        assert main(["embed", str(models[0]), str(folder), "--out", names["G"], "--quiet"]) == 0
    assert main([names.get(a, a) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_faiss_backend_without_faiss(models, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)
    code = main(["identify", str(models[0]), "--gallery", str(tmp_path / "g"), "--probes", str(folder),
                 "--out", str(tmp_path / "r.csv"), "--backend", "faiss"])
    assert code == 2 and "no such gallery file" in capsys.readouterr().err
    (tmp_path / "g").write_bytes(b"x")
    code = main(["identify", str(models[0]), "--gallery", str(tmp_path / "g"), "--probes", str(folder),
                 "--out", str(tmp_path / "r.csv"), "--backend", "faiss"])
    assert code == 2 and "pip install faiss-cpu" in capsys.readouterr().err


def test_identify_with_faiss_writes_the_torch_backend_results(models, folder, tmp_path):
    """A float16 gallery (the default) and --top-k beyond its 12 faces: every face, best first, either way."""
    pytest.importorskip("faiss")
    gallery = tmp_path / "g.safetensors"
    assert main(["embed", str(models[0]), str(folder), "--out", str(gallery), "--quiet"]) == 0
    rows = {}
    for backend in ("torch", "faiss"):
        out = tmp_path / f"{backend}.csv"
        assert main(["identify", str(models[0]), "--gallery", str(gallery), "--probes", str(folder), "--size", "8",
                     "--top-k", "20", "--backend", backend, "--out", str(out), "--quiet"]) == 0
        rows[backend] = list(csv.DictReader(out.open()))
    assert len(rows["torch"]) == 12 * 12
    scores = {backend: np.array([float(row.pop("score")) for row in rows[backend]]) for backend in rows}
    assert rows["faiss"] == rows["torch"]
    np.testing.assert_allclose(scores["faiss"], scores["torch"], atol=2e-6)  # written to 6 decimals


def test_unknown_backend_is_a_usage_error(models, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["identify", str(models[0]), "--gallery", "g", "--probes", "p", "--out", "r", "--backend", "annoy"])
    assert exit.value.code == 2 and "invalid choice: 'annoy'" in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_file(models, tmp_path):
    """SIGKILL in the middle of a run (no chance to clean up), then the same command again."""
    demo = PackedFaces(DEMO_PACK)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(96):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(demo.image(i), cv2.COLOR_RGB2BGR))
    argv = [sys.executable, "-m", "pydcr", "embed", str(models[0]), str(folder), "--chunk-size", "8",
            "--batch-size", "8", "--quiet"]
    out, whole = tmp_path / "g.safetensors", tmp_path / "whole.safetensors"
    parts = tmp_path / "g.safetensors.parts"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # cwd: outside the source folder, whose pydcr/ would shadow the installed one
    process = subprocess.Popen([*argv, "--out", str(out)], env=env, cwd=tmp_path)
    try:
        while len(list(parts.glob("chunk-*.safetensors"))) < 2 and process.poll() is None:
            time.sleep(0.02)
        process.kill()
    finally:
        process.wait()
    if out.exists():
        pytest.skip("the run finished before it could be killed")
    done = len(list(parts.glob("chunk-*.safetensors")))
    assert 2 <= done < 12
    subprocess.run([*argv, "--out", str(out)], check=True, env=env, cwd=tmp_path, timeout=300)
    subprocess.run([*argv, "--out", str(whole)], check=True, env=env, cwd=tmp_path, timeout=300)
    assert out.read_bytes() == whole.read_bytes() and not parts.exists()


def test_names_that_are_not_utf8(models, folder, tmp_path):
    """A person folder named in another encoding embeds and is searched; the CSV holds the name's
    bytes as they are on disk."""
    root = tmp_path / "gallery"
    shutil.copytree(folder, root)
    try:
        os.rename(root / "person1", os.fsencode(root) + b"/Jos\xe9")
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    gallery, results = tmp_path / "g.safetensors", tmp_path / "r.csv"
    assert main(["embed", str(models[0]), str(root), "--out", str(gallery), "--quiet"]) == 0
    assert "Jos\udce9" in Gallery(gallery).meta["classes"]
    assert main(["identify", str(models[0]), "--gallery", str(gallery), "--probes", str(root), "--size", "16",
                 "--top-k", "1", "--out", str(results), "--quiet"]) == 0
    assert b"Jos\xe9/" in results.read_bytes()


def test_identify_refuses_gallery_features_of_another_width(models, folder, tmp_path, capsys):
    """A gallery file edited to features of another width (its model identity still agreeing) is
    refused, not a matrix-product error at search time."""
    import json

    from safetensors import safe_open

    from pydcr._files import write_safetensors
    from pydcr.embed.gallery import META_KEY

    gallery = tmp_path / "g.safetensors"
    assert main(["embed", str(models[0]), str(folder), "--out", str(gallery), "--resolution", "8", "--quiet"]) == 0
    with safe_open(str(gallery), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    dim = tensors["features.hr8"].shape[1]
    tensors["features.hr8"] = tensors["features.hr8"][:, : dim - 1].contiguous()
    write_safetensors(tensors, gallery, meta)
    assert json.loads(meta[META_KEY])["heads"] == ["hr8"]
    capsys.readouterr()
    assert main(["identify", str(models[0]), "--gallery", str(gallery), "--probes", str(folder), "--size", "8",
                 "--out", str(tmp_path / "r.csv"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"features.hr8 are {dim - 1}-d, but {models[0]} gives {dim}-d features; embed the gallery again")
    assert not (tmp_path / "r.csv").exists()


def test_a_list_file_ends_lines_at_newlines_only(tmp_path):
    """A byte-order mark and CRLF line ends are not part of a path; a lone carriage return inside
    a file name is."""
    from pydcr.cli_embed import _list_file

    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf/data/a\rb.png\tAnn\r\n/x.png\n")
    listed = _list_file(tmp_path / "list.txt", (112, 96), None)
    assert listed.paths == ["/data/a\rb.png", "/x.png"] and listed.classes == ["Ann"]
