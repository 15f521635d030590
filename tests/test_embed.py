"""The Embedder against the model's own embed_* calls, bad inputs, search, and gallery files
(resume after an interruption, shards merged) against single uninterrupted runs."""

import os
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch

import pydcr
from pydcr.data import FaceDataset, PackedFaces, REFERENCE_112x96, align, pack, read_image, read_landmarks
from pydcr.demo import DEMO_PACK
from pydcr.embed import (ExactIndex, FaissIndex, Gallery, Shard, embed_gallery, make_index, merge_shards,
                         model_identity, topk)
from pydcr.embed.items import ItemSource
from pydcr._files import write_safetensors
from pydcr.models import DCR, BranchPair, Trunk, load, save

from fake_detector import FakeDetector
from module_outputs import output_dtypes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny DCR with random weights, saved and loaded as users get it."""
    torch.manual_seed(0)
    path = save(DCR(Trunk(width=0.125), {8: BranchPair(0), 16: BranchPair(0)}),
                tmp_path_factory.mktemp("model") / "tiny.safetensors")
    return load(path).eval()


@pytest.fixture(scope="module")
def faces():
    return torch.from_numpy(PackedFaces(DEMO_PACK).images(range(10))).permute(0, 3, 1, 2).contiguous()


def test_features_equal_the_model(model, faces):
    e = pydcr.Embedder(model, batch_size=4)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in e.model.parameters() if p.dim() == 4)
    with torch.no_grad():
        for got, want in [
            (e.embed_hr(faces, 8), model.embed_hr(faces, 8)),
            (e.embed_hr(faces, 16), model.embed_hr(faces, 16)),
            (e.embed_lr(faces, 12), model.embed_lr(faces, 12)),
            (e.embed_lr(faces), model.embed_lr(faces)),  # per-face estimated resolution
            (e.embed_trunk(faces), model.embed_trunk(faces)),
        ]:
            torch.testing.assert_close(got.features, want)
            assert got.index.tolist() == list(range(10)) and got.failures == []


def test_other_item_kinds(model, faces):
    e = pydcr.Embedder(model, batch_size=3)
    want = e.embed_hr(faces, 8).features
    arrays = [f.permute(1, 2, 0).numpy() for f in faces]
    torch.testing.assert_close(e.embed_hr(arrays, 8).features, want)
    torch.testing.assert_close(e.embed_hr(list(faces.float()), 8).features, want)
    small = torch.nn.functional.interpolate(faces.float(), (12, 12), mode="area").round().to(torch.uint8)
    got = e.embed_lr(small)
    with torch.no_grad():
        torch.testing.assert_close(got.features, model.embed_lr(small), atol=1e-4, rtol=1e-4)
    assert set(got.resolutions.tolist()) == {model.nearest_resolution(12)}


def test_16_bit_tensors_are_embedded(model, faces):
    """numpy has no bfloat16: such tensors are read as float32, as the model takes them."""
    e = pydcr.Embedder(model, batch_size=3)
    want = e.embed_hr(faces, 8).features
    for dtype in (torch.bfloat16, torch.float16):
        got = e.embed_hr(faces.to(dtype), 8)  # integers up to 255 are exact in both
        assert not got.failures
        torch.testing.assert_close(got.features, want)
        torch.testing.assert_close(e.embed_hr(list(faces.to(dtype)), 8).features, want)


def test_images_in_the_wrong_range_or_type_are_listed(model, faces):
    items = [faces[0], faces[1].float() / 255, faces[2].permute(1, 2, 0).numpy().astype(np.uint16) * 257,
             faces[3].float().masked_fill(faces[3] == faces[3].max(), float("nan")), faces[4].double(),
             torch.zeros_like(faces[5], dtype=torch.float32)]
    got = pydcr.Embedder(model, batch_size=2).embed_hr(items, 8)
    assert got.index.tolist() == [0, 4, 5]  # a black frame is no [0, 1] image
    reasons = [reason for _, reason in got.failures]
    assert "in [0, 1]: pydcr takes [0, 255]" in reasons[0]
    assert "uint8 or floating point" in reasons[1] and "NaN" in reasons[2]
    with torch.no_grad():
        torch.testing.assert_close(got.features, model.embed_hr(torch.stack([faces[0], faces[4], torch.zeros_like(faces[5])]), 8))


def test_images_aligned_with_landmarks(model, faces, tmp_path):
    """Files of faces placed off-centre in larger images, aligned back with their landmarks."""
    shift = np.array([40.0, 30.0], np.float32)
    paths, marks = [], []
    for i, face in enumerate(faces[:4]):
        canvas = np.zeros((200, 180, 3), np.uint8)
        canvas[30:142, 40:136] = face.permute(1, 2, 0).numpy()
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
        marks.append(REFERENCE_112x96 + shift)
    got = pydcr.Embedder(model).embed_hr(paths, 8, landmarks=marks)
    crops = np.stack([align(read_image(p), m) for p, m in zip(paths, marks)])
    with torch.no_grad():
        want = model.embed_hr(torch.from_numpy(crops).permute(0, 3, 1, 2), 8)
    torch.testing.assert_close(got.features, want)
    mapping = dict(zip(paths, marks))
    torch.testing.assert_close(pydcr.Embedder(model).embed_hr(paths, 8, landmarks=mapping).features, want)
    # An image that is not a crop, without landmarks: the reason says what to give.
    partial = pydcr.Embedder(model).embed_hr(paths, 8, landmarks=dict(zip(paths[1:], marks[1:])))
    assert partial.index.tolist() == [1, 2, 3]
    assert partial.failures[0][1].endswith("it is not in the landmark list: add it, or give a detector to align it")
    none = pydcr.Embedder(model).embed_hr(paths[:1], 8)
    assert none.failures[0][1].endswith("give landmarks or a detector to align it")


def test_small_probes_are_never_aligned(model, faces):
    """Native low-resolution probes are faces already: a detector given for the run does not apply
    to them (MTCNN finds no face in 12 x 12), only to images larger than a small crop; landmarks
    listed for one do."""
    e = pydcr.Embedder(model, batch_size=4)
    small = torch.nn.functional.interpolate(faces[:3].float(), (12, 12), mode="area").round().to(torch.uint8)
    want = e.embed_lr(small)
    shift = np.array([40.0, 30.0], np.float32)
    canvas = np.zeros((200, 180, 3), np.uint8)
    canvas[30:142, 40:136] = faces[3].permute(1, 2, 0).numpy()
    detector = FakeDetector(REFERENCE_112x96 + shift)
    got = e.embed_lr([*small, canvas], detector=detector)
    assert detector.seen == [(200, 180)] and got.failures == [] and got.index.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(got.features[:3], want.features)
    assert got.resolutions[:3].tolist() == want.resolutions.tolist()
    with torch.no_grad():
        torch.testing.assert_close(got.features[3:], model.embed_lr(faces[3:4]), atol=1e-4, rtol=1e-4)
    frame = canvas[20:120, 30:120]  # 100 x 90: smaller than a crop, but listed, so aligned
    points = REFERENCE_112x96 + np.float32(10)
    listed = e.embed_trunk([frame], landmarks=[points])
    torch.testing.assert_close(listed.features, e.embed_trunk([align(frame, points)]).features)
    assert not torch.allclose(listed.features, e.embed_trunk([frame]).features)  # unlisted: as it is
    gallery = FakeDetector()  # the gallery takes no small crops: one there is an image to align
    e.embed_hr(small[:1], 8, detector=gallery)
    assert gallery.seen == [(12, 12)]


def test_aligned_crops_are_taken_as_they_are_under_a_detector(model, faces, tiny_pack):
    # A pack's crops, or crop-size arrays, are aligned already: a detector given for the run skips them.
    e = pydcr.Embedder(model, batch_size=4)
    detector = FakeDetector(REFERENCE_112x96 + 7)  # would shift every face, were it run
    torch.testing.assert_close(e.embed_hr(faces[:3], 8, detector=detector).features, e.embed_hr(faces[:3], 8).features)
    with PackedFaces(tiny_pack) as packed:
        torch.testing.assert_close(e.embed_hr(packed, 8, detector=detector).features, e.embed_hr(packed, 8).features)
    assert detector.seen == []


def test_an_item_source_is_taken_as_it_is(model, faces):
    e = pydcr.Embedder(model, batch_size=4)
    source = ItemSource(list(faces[:2]), e.crop_size, advice=("say A", "say B"))
    torch.testing.assert_close(e.embed_hr(source, 8).features, e.embed_hr(faces[:2], 8).features)
    canvas = ItemSource([np.zeros((200, 180, 3), np.uint8)], e.crop_size, advice=("say A", "say B"))
    assert e.embed_hr(canvas, 8).failures == [("#0", "not an aligned 112x96 crop: got 200x180; say A")]
    with pytest.raises(ValueError, match="brings its own landmarks"):
        e.embed_hr(source, 8, landmarks=[REFERENCE_112x96] * 2)
    with pytest.raises(ValueError, match="takes full-size faces"):
        e.embed_hr(ItemSource(list(faces[:2]), e.crop_size, allow_small=True), 8)
    with pytest.raises(ValueError, match="makes 56x48 crops"):
        e.embed_hr(ItemSource(list(faces[:2]), (56, 48)), 8)


def _bad_files(tmp_path, faces):
    """A list of good crops (PNG) with a corrupt file, a truncated JPEG, a missing file, an empty
    file and an image of the wrong size between them; returns (paths, positions of the good ones)."""
    good = []
    for i, face in enumerate(faces[:4]):
        path = tmp_path / f"good{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(face.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR))
        good.append(path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _, data = cv2.imencode(".jpg", faces[0].permute(1, 2, 0).numpy())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data.tobytes()[: len(data) * 2 // 3])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((250, 250, 3), np.uint8))
    paths = [corrupt, good[0], truncated, good[1], tmp_path / "missing.png", good[2], empty, big, good[3]]
    return [str(p) for p in paths], [1, 3, 5, 8]


def test_bad_files_are_listed_and_skipped(model, faces, tmp_path):
    paths, good = _bad_files(tmp_path, faces)
    got = pydcr.Embedder(model, batch_size=4).embed_hr(paths, 8)
    assert got.index.tolist() == good
    assert got.names == [paths[i] for i in good]
    with torch.no_grad():
        torch.testing.assert_close(got.features, model.embed_hr(faces[:4], 8))
    reasons = dict(got.failures)
    assert [p for p, _ in got.failures] == [p for i, p in enumerate(paths) if i not in good]
    assert "cannot decode" in reasons[paths[0]]
    assert "truncated JPEG" in reasons[paths[2]]
    assert "no such image file" in reasons[paths[4]]
    assert "empty" in reasons[paths[6]]
    assert "not an aligned 112x96 crop" in reasons[paths[7]]


@pytest.mark.data
def test_detection_skips_a_faceless_image(model, lfw_root, tmp_path):
    from pydcr.data import MTCNN

    names = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg"]
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((250, 250, 3), 128, np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8" + bytes(range(256)) * 8)
    paths = [str(lfw_root / "lfw" / names[0]), str(grey), str(corrupt), str(lfw_root / "lfw" / names[1])]
    detector = MTCNN("cpu")
    got = pydcr.Embedder(model).embed_hr(paths, 8, detector=detector)
    assert got.index.tolist() == [0, 3]
    assert dict(got.failures)[str(grey)] == "no face found"
    assert "truncated JPEG" in dict(got.failures)[str(corrupt)] or "cannot decode" in dict(got.failures)[str(corrupt)]
    crops = []
    for p in (paths[0], paths[3]):
        image = read_image(p)
        boxes, _, points = detector.detect(image)
        from pydcr.data.mtcnn import central_face

        crops.append(align(image, points[central_face(boxes, image.shape)]))
    with torch.no_grad():
        want = model.embed_hr(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2), 8)
    torch.testing.assert_close(got.features, want)


@pytest.mark.data
def test_lfw_landmark_list(model, lfw_root):
    marks = read_landmarks(lfw_root / "lfw_landmark.txt")
    names = sorted(marks)[:6]
    paths = [str(lfw_root / "lfw" / n) for n in names]
    got = pydcr.Embedder(model).embed_hr(paths, 16, landmarks=[marks[n] for n in names])
    crops = np.stack([align(read_image(p), marks[n]) for p, n in zip(paths, names)])
    with torch.no_grad():
        torch.testing.assert_close(got.features, model.embed_hr(torch.from_numpy(crops).permute(0, 3, 1, 2), 16))


def test_cpu_bf16_autocast(model, faces):
    """On the CPU amp is off unless asked for; asked for, bf16 features stay close to float32's."""
    import copy

    assert not pydcr.Embedder(model, device="cpu").amp
    fast = pydcr.Embedder(copy.deepcopy(model), device="cpu", batch_size=4, amp=True)
    assert fast.amp
    with torch.no_grad():
        want, want_lr = model.embed_hr(faces, 8), model.embed_lr(faces, 12)
    with output_dtypes() as computed:
        got_hr, got_lr = fast.embed_hr(faces, 8).features, fast.embed_lr(faces, 12).features
    assert torch.bfloat16 in computed  # autocast was in force, not only asked for
    for got, ref in ((got_hr, want), (got_lr, want_lr)):
        assert got.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.99


@pytest.mark.cuda
def test_cuda_pinned_bf16_channels_last(model, faces):
    """On CUDA: float32 results equal the model's there; bf16 autocast stays close to them."""
    import copy

    on_gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        want = on_gpu.embed_hr(faces.cuda(), 8).cpu()
        want_lr = on_gpu.embed_lr(faces.cuda(), 12).cpu()
    exact = pydcr.Embedder(copy.deepcopy(model), device="cuda", batch_size=4, amp=False)
    torch.testing.assert_close(exact.embed_hr(faces, 8).features, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(exact.embed_lr(faces, 12).features, want_lr, atol=1e-4, rtol=1e-4)
    fast = pydcr.Embedder(copy.deepcopy(model), device="cuda", batch_size=4)
    assert fast.amp
    got = fast.embed_hr(faces, 8).features
    cosine = torch.nn.functional.cosine_similarity(got, want)
    assert cosine.min() > 0.99


def test_errors(model, faces):
    e = pydcr.Embedder(model)
    with pytest.raises(KeyError, match="no branch pair for resolution 12"):
        e.embed_hr(faces, 12)
    with pytest.raises(ValueError, match="name the resolution"):
        e.embed_hr(faces)
    with pytest.raises(ValueError, match="pass a batch"):
        e.embed_hr(faces[0], 8)
    with pytest.raises(TypeError, match="one path"):
        e.embed_hr("a.jpg", 8)
    with pytest.raises(TypeError, match="item 1 is a int"):
        e.embed_hr(["a.jpg", 3], 8)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        pydcr.Embedder(model, batch_size=0)
    with pytest.raises(RuntimeError, match="no branch pairs"):
        pydcr.Embedder(DCR(Trunk(width=0.125))).embed_lr(faces)
    with pytest.raises(ValueError, match="2 items but 1 landmark"):
        e.embed_hr(["a.png", "b.png"], 8, landmarks=[REFERENCE_112x96])


def test_probe_size_is_checked_as_the_model_checks_it(model, faces):
    e = pydcr.Embedder(model, batch_size=4)
    low = pydcr.ops.resize(faces[:2], (8, 8))
    for size in (8.7, True, 0):  # int() would have truncated 8.7 and taken True as 1
        with pytest.raises(ValueError, match="size must be a positive int"):
            e.embed_lr(low, size=size)
    assert e.embed_lr(low, size=8.0).resolutions.tolist() == [8, 8]


# Search -----------------------------------------------------------------------------------------


def _brute_force(gallery: np.ndarray, probes: np.ndarray, k: int):
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    scores = q @ g.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


@pytest.mark.parametrize("n,k", [(1000, 5), (7, 10), (300, 1)])
def test_topk_equals_brute_force(n, k):
    rng = np.random.default_rng(n)
    gallery = rng.standard_normal((n, 32)).astype(np.float32)
    probes = rng.standard_normal((57, 32)).astype(np.float32)
    want_scores, want_rows = _brute_force(gallery.astype(np.float64), probes.astype(np.float64), k)
    index = ExactIndex(probe_chunk=20)
    for start in range(0, n, 128):  # several gallery chunks: the running top-k merge is exercised
        index.add(torch.from_numpy(gallery[start : start + 128]))
    for scores, rows in (index.search(torch.from_numpy(probes), k), topk(torch.from_numpy(gallery), torch.from_numpy(probes), k)):
        assert rows.shape == (57, min(k, n))
        np.testing.assert_array_equal(rows.numpy(), want_rows)
        np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)


def test_a_gallery_added_whole_is_searched_in_chunks(monkeypatch):
    """Scores are held one probe chunk x one gallery chunk at a time, whatever the gallery's
    tensor: the matmuls never see more gallery rows than gallery_chunk."""
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((1000, 16)).astype(np.float32)
    probes = rng.standard_normal((30, 16)).astype(np.float32)
    index = ExactIndex(probe_chunk=8, gallery_chunk=96)
    index.add(torch.from_numpy(gallery))
    assert index.size == 1000 and max(len(c) for c in index.chunks) == 96
    want_scores, want_rows = _brute_force(gallery.astype(np.float64), probes.astype(np.float64), 7)
    scores, rows = index.search(torch.from_numpy(probes), 7)
    np.testing.assert_array_equal(rows.numpy(), want_rows)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_an_index_refuses_bad_gallery_rows(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    index = make_index(backend)
    bad = torch.randn(5, 8)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="the gallery features hold NaN or infinite values"):
        index.add(bad)
    index.add(torch.randn(5, 8))
    with pytest.raises(ValueError, match="gallery features are 4-d, the gallery's are 8-d"):
        index.add(torch.randn(5, 4))
    assert index.size == 5


def test_topk_input_errors():
    gallery, probes = torch.randn(6, 8), torch.randn(3, 8)
    scores, rows = topk(gallery.numpy(), probes.numpy(), k=2)  # numpy arrays are taken as they are
    assert torch.equal(rows, topk(gallery, probes, k=2)[1])
    with pytest.raises(ValueError, match=r"probe features must be N x D, got shape \(8,\)"):
        topk(gallery, probes[0], k=2)
    with pytest.raises(ValueError, match="probe features are 4-d, the gallery's are 8-d"):
        topk(gallery, probes[:, :4], k=2)
    for bad in ("gallery", "probe"):
        g, p = gallery.clone(), probes.clone()
        (g if bad == "gallery" else p)[1, 3] = float("nan")
        with pytest.raises(ValueError, match=f"the {bad} features hold NaN"):
            topk(g, p, k=2)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        topk(torch.randn(4, 8), torch.randn(2, 8), backend="faiss")
    with pytest.raises(ValueError, match="unknown search backend 'annoy'"):
        topk(torch.randn(4, 8), torch.randn(2, 8), backend="annoy")


def _assert_same_search(got, want):
    """Same rows in the same order, scores equal to float32 rounding."""
    assert got[0].dtype == want[0].dtype == torch.float32 and got[1].dtype == want[1].dtype == torch.int64
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("n,k", [(1000, 5), (7, 10), (300, 1)])
def test_faiss_equals_the_exact_search(n, k):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(n)
    gallery = torch.from_numpy(rng.standard_normal((n, 32)).astype(np.float32))
    for probes in (torch.from_numpy(rng.standard_normal((m, 32)).astype(np.float32)) for m in (57, 3)):
        want = topk(gallery, probes, k)  # faiss scores 20 probes or more with BLAS, fewer with its own loop
        _assert_same_search(topk(gallery, probes, k, backend="faiss"), want)
        _assert_same_search(topk(gallery.split(128), probes, k, backend="faiss"), want)  # added chunk by chunk
        _assert_same_search(topk(gallery.T.contiguous().T, probes, k, backend="faiss"), want)  # column-major


def test_faiss_takes_the_features_the_exact_search_takes():
    pytest.importorskip("faiss")
    seed = torch.Generator().manual_seed(0)
    g, p = torch.randn(200, 16, generator=seed), torch.randn(9, 16, generator=seed)
    for gallery, probes in [(g.half(), p), (g.double(), p.half()), (g.numpy(), p.numpy()), (g, p[:0]),
                            (g.clone().requires_grad_(), p)]:  # as a model's output outside no_grad
        _assert_same_search(topk(gallery, probes, 5, backend="faiss"), topk(gallery, probes, 5))
    # searched before anything was added: no rows, as ExactIndex answers
    _assert_same_search(FaissIndex().search(p, 5), ExactIndex().search(p, 5))


# Gallery files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    """22 faces of the demo pack, packed again (with labels) for quick gallery runs."""
    root = tmp_path_factory.mktemp("tinypack")
    demo = PackedFaces(DEMO_PACK)
    paths, labels = [], []
    for i in range(22):
        name = f"p{i % 5}/{i}.png"
        (root / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(root / name), cv2.cvtColor(demo.image(i), cv2.COLOR_RGB2BGR))
        paths.append(name)
        labels.append(i % 5)
    dataset = FaceDataset(root, paths, labels, [f"p{p}" for p in range(5)], {p: REFERENCE_112x96 for p in paths})
    return pack(dataset, root / "tiny.pack", format="png", progress=False)


def _gallery(model, pack_path, out, **kw):
    e = pydcr.Embedder(model, batch_size=3)
    source = ItemSource(PackedFaces(pack_path), e.crop_size)
    return embed_gallery(e, source, out, chunk_size=5, progress=False, **kw)


def test_gallery_file(model, tiny_pack, tmp_path):
    out = _gallery(model, tiny_pack, tmp_path / "g.safetensors", dtype="float32")
    g = Gallery(out)
    faces = PackedFaces(tiny_pack)
    images = torch.from_numpy(faces.images(range(len(faces)))).permute(0, 3, 1, 2)
    with torch.no_grad():
        for k in (8, 16):
            torch.testing.assert_close(g.features(f"hr{k}"), model.embed_hr(images, k))
    assert g.heads == ["hr8", "hr16"] and g.model == model_identity(model)
    assert g.index.tolist() == list(range(22)) and g.paths == faces.paths
    assert g.labels.tolist() == faces.labels.tolist() and g.identity(3) == "p3"
    assert not (tmp_path / "g.safetensors.parts").exists()
    half = Gallery(_gallery(model, tiny_pack, tmp_path / "h.safetensors"))
    assert half.features("hr8").dtype == torch.float16
    torch.testing.assert_close(half.features("hr8", 4, 9).float(), g.features("hr8", 4, 9), atol=2e-3, rtol=2e-3)


@pytest.fixture(scope="module")
def gallery_file(model, tiny_pack, tmp_path_factory):
    """A finished gallery of the tiny pack (hr8 and hr16 features), for damaged copies of it."""
    return _gallery(model, tiny_pack, tmp_path_factory.mktemp("gallery") / "g.safetensors")


def damaged_copy(path, out, edit):
    """`path` written again to `out` after edit(tensors, metadata) -> (tensors, metadata), a
    metadata that is not a str written as JSON."""
    import json

    from safetensors import safe_open

    from pydcr.embed.gallery import META_KEY

    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[META_KEY])
    tensors, meta = edit(tensors, meta)
    write_safetensors(tensors, out, {META_KEY: meta if isinstance(meta, str) else json.dumps(meta)})
    return out


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: (t, "{not json"), "its gallery metadata is not valid JSON"),
    (lambda t, m: (t, [m]), "its gallery metadata is not a JSON object"),
    (lambda t, m: (t, _without(m, "heads")), "its metadata lacks heads"),
    (lambda t, m: (t, {**m, "paths": m["paths"][:-1]}), r"its metadata lists 21 paths for 22 rows \(index\)"),
    (lambda t, m: (t, {**m, "paths": {"0": "a.png"}}), "metadata field paths is not a list of names"),
    (lambda t, m: (t, {**m, "failures": [["a.png"]]}), r"metadata field failures is not a list of \[path, reason\]"),
    (lambda t, m: ({**t, "labels": t["labels"][:-1]}, m), r"it holds 21 labels for 22 rows \(index\)"),
    (lambda t, m: ({**t, "index": t["index"].float()}, m), r"its index tensor is F32 \[22\], not one int64 per row"),
    (lambda t, m: (_without(t, "labels"), m), "it holds no labels tensor"),
    (lambda t, m: (_without(t, "features.hr8"), m), "its metadata lists head hr8, but it holds no features.hr8"),
    (lambda t, m: ({**t, "features.hr16": t["features.hr16"][:-1]}, m),
     r"features.hr16 is F16 \[21, 512\], expected float16 or float32 \[22, width\]: a row per index entry"),
    (lambda t, m: ({**t, "features.hr16": t["features.hr16"].reshape(-1)}, m), r"features.hr16 is F16 \[11264\]"),
    (lambda t, m: ({**t, "features.hr8": t["features.hr8"][:, :500].contiguous()}, m),
     r"its branch pairs' features differ in width \(features.hr8 500, features.hr16 512\): a model's pairs share"),
])
def test_a_damaged_gallery_is_refused_when_opened(gallery_file, tmp_path, edit, message):
    """A hand-edited or damaged file: one ValueError naming it and what disagrees, not a KeyError
    or a wrong match at search time."""
    import re

    out = damaged_copy(gallery_file, tmp_path / "edited.safetensors", edit)
    with pytest.raises(ValueError, match=f"^{re.escape(str(out))}: {message}.*; the gallery file was edited or "
                                         "damaged: embed it again$"):
        Gallery(out)
    assert len(Gallery(damaged_copy(gallery_file, tmp_path / "same.safetensors", lambda t, m: (t, m)))) == 22


class Interrupt(Exception):
    pass


def stop_after_two(chunk):
    if chunk == 1:
        raise Interrupt


def test_resume_after_interruption_is_identical(model, tiny_pack, tmp_path):
    whole = _gallery(model, tiny_pack, tmp_path / "whole.safetensors")
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupt):
        _gallery(model, tiny_pack, out, on_chunk=stop_after_two)
    parts = sorted(p.name for p in (tmp_path / "resumed.safetensors.parts").glob("chunk-*"))
    assert parts == ["chunk-00000000.safetensors", "chunk-00000001.safetensors"] and not out.exists()
    written = []
    _gallery(model, tiny_pack, out, on_chunk=written.append)
    assert written == [2, 3, 4]  # the two finished chunks were not embedded again
    assert out.read_bytes() == whole.read_bytes()
    # An input file touched between the interruption and the resume: the chunks still count.
    out.unlink()
    touched = tmp_path / "touched.pack"
    shutil.copy(tiny_pack, touched)
    with pytest.raises(Interrupt):
        _gallery(model, touched, out, on_chunk=stop_after_two)
    os.utime(touched, ns=(0, 0))
    written.clear()
    # The facts kept for the reader (here: another spelling of the input's path) are not compared.
    _gallery(model, touched, out, on_chunk=written.append, description={"source": "elsewhere/touched.pack"})
    assert written == [2, 3, 4] and Gallery(out).meta["input"]["files"] != Gallery(whole).meta["input"]["files"]
    assert Gallery(out).meta["about"] == {"source": "elsewhere/touched.pack"}


def test_a_damaged_chunk_is_embedded_again(model, tiny_pack, tmp_path):
    whole = _gallery(model, tiny_pack, tmp_path / "whole.safetensors")
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupt):
        _gallery(model, tiny_pack, out, on_chunk=stop_after_two)
    chunk = tmp_path / "resumed.safetensors.parts" / "chunk-00000000.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:300])  # cut short, as by a full disk
    written = []
    _gallery(model, tiny_pack, out, on_chunk=written.append)
    assert written == [0, 2, 3, 4]
    assert out.read_bytes() == whole.read_bytes()


def test_a_failed_concatenation_leaves_no_file(tmp_path):
    from pydcr.embed.tables import concat

    parts = []
    for i in range(2):
        parts.append(tmp_path / f"{i}.safetensors")
        write_safetensors({"x": torch.arange(6.0).reshape(3, 2)}, parts[-1], {})
    parts[1].write_bytes(parts[1].read_bytes()[:-4])
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="is truncated"):
        concat(parts, out, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.safetensors", "1.safetensors"]


def test_shards_merge_into_the_single_run(model, tiny_pack, tmp_path):
    whole = _gallery(model, tiny_pack, tmp_path / "whole.safetensors")
    out = tmp_path / "g.safetensors"
    shards = [_gallery(model, tiny_pack, out, shard=Shard(r, 3)) for r in (2, 0, 1)]
    assert [s.name for s in shards] == [f"g.shard00{r}-of-003.safetensors" for r in (2, 0, 1)]
    assert merge_shards(shards, out) == out
    assert out.read_bytes() == whole.read_bytes()
    # Shards read from copies of the data (other files, other times, other paths) still go
    # together; the merged file tells where rank 0 read it.
    copy = tmp_path / "copy.pack"
    shutil.copy(tiny_pack, copy)
    os.utime(copy, ns=(1, 1))
    mixed = [_gallery(model, copy if r == 1 else tiny_pack, tmp_path / "c.safetensors", shard=Shard(r, 3),
                      description={"source": str(copy if r == 1 else tiny_pack)}) for r in range(3)]
    described = _gallery(model, tiny_pack, tmp_path / "d.safetensors", description={"source": str(tiny_pack)})
    assert merge_shards(mixed, tmp_path / "c.safetensors").read_bytes() == described.read_bytes()
    many = [_gallery(model, tiny_pack, tmp_path / "m.safetensors", shard=Shard(r, 7)) for r in range(7)]
    assert len(Gallery(many[0])) == 0  # 5 chunks for 7 processes: some hold none
    assert merge_shards(many, tmp_path / "m.safetensors").read_bytes() == whole.read_bytes()
    with pytest.raises(ValueError, match="needs ranks 0..2 once each"):
        merge_shards(shards[:2], tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a shard"):
        merge_shards([whole], tmp_path / "x.safetensors")


def test_runs_of_the_earlier_format_still_go_together(model, tiny_pack, tmp_path):
    """Earlier versions kept the input's path and kind in `input`, and no `about`: an interrupted
    run of theirs still resumes, and a finished gallery of theirs is still found complete."""
    import json

    from pydcr.embed import complete_gallery
    from pydcr.embed.gallery import META_KEY, PLAN_FILE
    from safetensors import safe_open

    old_input = {"source": str(tiny_pack), "kind": "pack", "model_file": "m.safetensors"}
    out = tmp_path / "g.safetensors"
    with pytest.raises(Interrupt):
        _gallery(model, tiny_pack, out, on_chunk=stop_after_two)
    plan_file = tmp_path / "g.safetensors.parts" / PLAN_FILE
    plan = json.loads(plan_file.read_text())
    plan["input"] = {**old_input, **plan["input"]}
    plan_file.write_text(json.dumps(plan, sort_keys=True))
    written = []
    _gallery(model, tiny_pack, out, on_chunk=written.append)
    assert written == [2, 3, 4]

    with safe_open(str(out), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[META_KEY])
    meta.pop("about")
    meta["input"] = {**old_input, **meta["input"]}
    write_safetensors(tensors, out, {META_KEY: json.dumps(meta)})
    e = pydcr.Embedder(model, batch_size=3)
    assert complete_gallery(e, ItemSource(PackedFaces(tiny_pack), e.crop_size), out, chunk_size=5) is not None
