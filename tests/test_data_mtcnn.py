"""MTCNN: the cascade's plumbing, and its landmarks on LFW against the published MTCNN landmark list."""

import os

import numpy as np
import pytest
import torch

from pydcr.data import MTCNN, read_image, read_landmarks
from pydcr.data.mtcnn import WEIGHTS_DIR, batched_nms, central_face, nms, pyramid_scales, square


@pytest.fixture(scope="module")
def detector():
    return MTCNN("cpu")


def test_weights_ship_with_licence():
    for name in ("pnet.pt", "rnet.pt", "onet.pt", "LICENSE.facenet-pytorch.md", "README.md"):
        assert (WEIGHTS_DIR / name).is_file(), name
    state = torch.load(WEIGHTS_DIR / "onet.pt", weights_only=True)
    assert state["dense6_3.weight"].shape == (10, 256)


def test_pyramid_scales():
    scales = pyramid_scales(250, 300, 20, 0.709)
    assert scales[0] == pytest.approx(12 / 20)
    np.testing.assert_allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * 0.709
    assert pyramid_scales(11, 400, 12, 0.709) == []


def random_boxes(rng, n):
    xy = rng.uniform(0, 100, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1), rng.uniform(0, 1, n)


def overlap(a, b, mode):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    inter = iw * ih
    return inter / (min(area(a), area(b)) if mode == "min" else area(a) + area(b) - inter)


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_invariants(mode):
    """Kept boxes overlap each other at most `threshold`; every dropped box overlaps a better kept one more."""
    rng = np.random.default_rng(1)
    boxes, scores = random_boxes(rng, 200)
    keep = nms(boxes, scores, 0.4, mode)
    assert list(scores[keep]) == sorted(scores[keep], reverse=True)
    for i in keep:
        for j in keep:
            assert i == j or overlap(boxes[i], boxes[j], mode) <= 0.4
    for d in set(range(200)) - set(keep.tolist()):
        assert any(scores[k] >= scores[d] and overlap(boxes[k], boxes[d], mode) > 0.4 for k in keep)


def test_batched_nms_keeps_images_apart():
    rng = np.random.default_rng(2)
    boxes, scores = random_boxes(rng, 50)
    groups = np.repeat([0, 1], 25)
    both = batched_nms(np.concatenate([boxes, boxes]), np.concatenate([scores, scores]), np.repeat([0, 1], 50), 0.5)
    alone = nms(boxes, scores, 0.5)
    assert sorted(both.tolist()) == sorted(alone.tolist() + (alone + 50).tolist())
    assert batched_nms(boxes[:0], scores[:0], groups[:0], 0.5).shape == (0,)


def test_square_keeps_centre():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 50.0, 10.0]])
    sq = square(boxes)
    np.testing.assert_allclose((sq[:, :2] + sq[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    np.testing.assert_allclose(sq[:, 2] - sq[:, 0], [40, 50])
    np.testing.assert_allclose(sq[:, 3] - sq[:, 1], [40, 50])


def test_central_face():
    boxes = np.array([[0, 0, 20, 20], [40, 40, 60, 60], [70, 70, 99, 99]], dtype=float)
    assert central_face(boxes, (100, 100, 3)) == 1
    assert central_face(boxes[:0], (100, 100, 3)) is None


def test_no_face_gives_empty_arrays(detector):
    for image in (np.full((120, 160, 3), 128, np.uint8), np.zeros((8, 8, 3), np.uint8)):
        boxes, scores, points = detector.detect(image)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and points.shape == (0, 5, 2)


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((20, 20), np.uint8), r"image 0 must be an H x W x 3 uint8"),
        (np.zeros((20, 20, 3), np.float32), r"dtype float32"),
    ],
)
def test_bad_images(detector, image, match):
    with pytest.raises(ValueError, match=match):
        detector.detect(image)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"min_face_size": 8}, "min_face_size"), ({"factor": 1.2}, "factor"), ({"thresholds": (0.5, 0.5)}, "thresholds")],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MTCNN("cpu", **kwargs)


@pytest.fixture(scope="module")
def lfw_sample(lfw_root):
    """A fixed spread of 100 LFW images and their listed (MTCNN) landmarks."""
    marks = read_landmarks(lfw_root / "lfw_landmark.txt")
    names = sorted(marks)[7::131][:100]
    return [read_image(lfw_root / "lfw" / n) for n in names], np.stack([marks[n] for n in names])


@pytest.mark.data
def test_landmarks_match_the_lfw_list(detector, lfw_sample):
    images, expected = lfw_sample
    errors = []
    for image, truth, (boxes, scores, points) in zip(images, expected, detector.detect_batch(images)):
        assert len(boxes) == len(scores) == len(points) >= 1
        assert (scores > detector.thresholds[2]).all()
        face = central_face(boxes, image.shape)
        errors.append(np.linalg.norm(points[face] - truth, axis=1))
        x1, y1, x2, y2 = boxes[face]
        assert (x1 <= points[face, :, 0]).all() and (points[face, :, 0] <= x2).all()
        assert (y1 <= points[face, :, 1]).all() and (points[face, :, 1] <= y2).all()
    errors = np.concatenate(errors)
    assert np.median(errors) < 3.0 and np.percentile(errors, 95) < 6.0, (np.median(errors), np.percentile(errors, 95))


@pytest.mark.data
def test_batch_equals_single(detector, lfw_sample):
    images = list(lfw_sample[0][:4])
    images[2] = np.ascontiguousarray(images[2][:200, 30:])  # a different size joins its own group
    images[3] = torch.from_numpy(images[3])  # torch images too
    for (b1, s1, p1), image in zip(detector.detect_batch(images), images):
        b2, s2, p2 = detector.detect(image)
        np.testing.assert_allclose(b1, b2, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-3)


@pytest.mark.data
def test_pnet_in_pixel_bounded_calls_finds_the_same_faces(detector, lfw_sample, monkeypatch):
    # Large photos go through P-Net a few at a time: one image a call here, as the same batch at once.
    import pydcr.data.mtcnn

    images = list(lfw_sample[0][:4])
    together = detector.detect_batch(images)
    monkeypatch.setattr(pydcr.data.mtcnn, "PNET_PIXELS", 1)
    for (b1, s1, p1), (b2, s2, p2) in zip(detector.detect_batch(images), together):
        np.testing.assert_allclose(b1, b2, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-3)


@pytest.mark.data
def test_flipped_image_mirrors_landmarks(detector, lfw_sample):
    """A mirrored face is found at the mirrored place (eyes and mouth corners swap sides)."""
    image = lfw_sample[0][0]
    boxes, _, points = detector.detect(image)
    fboxes, _, fpoints = detector.detect(np.ascontiguousarray(image[:, ::-1]))
    face, fface = central_face(boxes, image.shape), central_face(fboxes, image.shape)
    mirrored = fpoints[fface][[1, 0, 2, 4, 3]] * [-1, 1] + [image.shape[1] - 1, 0]
    assert np.abs(mirrored - points[face]).max() < 3.0


@pytest.mark.cuda
@pytest.mark.data
def test_cuda_matches_cpu(detector, lfw_sample):
    gpu = MTCNN("cuda")
    images = list(lfw_sample[0][:8])
    for image, (boxes, _, points) in zip(images, gpu.detect_batch(images)):
        cpu_boxes, _, cpu_points = detector.detect(image)
        face, cpu_face = central_face(boxes, image.shape), central_face(cpu_boxes, image.shape)
        np.testing.assert_allclose(points[face], cpu_points[cpu_face], atol=1.0)  # integer crops may shift by a pixel
        np.testing.assert_allclose(boxes[face], cpu_boxes[cpu_face], atol=2.0)


class FakeDetector:
    """One face per image, its points recognisable by the image's fill value; counts the images seen."""

    def __init__(self):
        self.seen = 0

    def detect_batch(self, images):
        self.seen += len(images)
        out = []
        for image in images:
            value = float(image[0, 0, 0])
            if value == 0:  # no face in black images
                out.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))))
            else:
                out.append((np.array([[0.0, 0.0, 9.0, 9.0]]), np.ones(1), np.full((1, 5, 2), value)))
        return out


def test_detect_landmarks_writes_and_resumes(tmp_path):
    import cv2

    from pydcr.data import IdentityFolder
    from pydcr.data.mtcnn import _align_plan, detect_landmarks

    for k in range(7):
        (tmp_path / "src" / f"p{k % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "src" / f"p{k % 2}" / f"{k}.png"), np.full((10, 10, 3), k * 10, np.uint8))
    (tmp_path / "src" / "p1" / "bad.jpg").write_bytes(b"broken")
    data = IdentityFolder(tmp_path / "src")
    out = tmp_path / "marks.txt"
    fake = FakeDetector()
    # An interrupted earlier run of these images: its plan, two whole lines and a torn one.
    lines = "p0/2.png" + "\t20" * 10 + "\n" + "p0/4.png" + "\t40" * 10 + "\np0/6.png\t6"
    (tmp_path / "marks.txt.partial").write_text(_align_plan(data, fake) + "\n" + lines)
    missing = detect_landmarks(data, out, detector=fake, batch_size=3, workers=2, progress=False)
    assert fake.seen == 5  # the seven images less the two done; the broken file is never decoded
    assert sorted(missing) == ["p0/0.png", "p1/bad.jpg"]
    marks = read_landmarks(out)
    assert list(marks) == [p for p in data.paths if p not in missing]  # dataset order
    for path, points in marks.items():
        np.testing.assert_array_equal(points, np.full((5, 2), int(path.split("/")[1][0]) * 10))
    assert not (tmp_path / "marks.txt.partial").exists()
    # Another run's partial list (another plan, or none: written before runs recorded theirs) is
    # started over, not taken for this run's.
    stale = "p0/2.png" + "\t99" * 10 + "\n"
    for head in ("# pydcr align plan 0123\n", ""):
        (tmp_path / "marks.txt.partial").write_text(head + stale)
        fake = FakeDetector()
        detect_landmarks(data, out, detector=fake, batch_size=3, progress=False)
        assert fake.seen == 7 and read_landmarks(out)["p0/2.png"][0, 0] == 20


def test_detect_landmarks_names_a_file_name_a_list_cannot_hold(tmp_path):
    import cv2

    from pydcr.data import FlatFolder
    from pydcr.data.mtcnn import detect_landmarks

    root = tmp_path / "src"
    root.mkdir()
    ok, png = cv2.imencode(".png", np.full((10, 10, 3), 10, np.uint8))
    try:
        with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:  # a Latin-1 name
            f.write(png.tobytes())
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    (root / "plain.png").write_bytes(png.tobytes())
    unreadable = {}
    missing = detect_landmarks(FlatFolder(root), tmp_path / "marks.txt", detector=FakeDetector(), progress=False,
                               unreadable=unreadable)
    assert missing == ["caf\udce9.png"] and "not UTF-8" in unreadable["caf\udce9.png"]
    assert list(read_landmarks(tmp_path / "marks.txt")) == ["plain.png"]  # the run finished, the list is whole


def test_detect_landmarks_names_a_file_name_with_a_tab(tmp_path):
    import cv2

    from pydcr.data import FlatFolder
    from pydcr.data.mtcnn import detect_landmarks

    root = tmp_path / "src"
    root.mkdir()
    for name in ("a\tb.png", "plain.png", "next\x85line.png"):  # NEL: a line break to str.splitlines only
        cv2.imwrite(str(root / name), np.full((10, 10, 3), 10, np.uint8))
    unreadable = {}
    missing = detect_landmarks(FlatFolder(root), tmp_path / "marks.txt", detector=FakeDetector(), progress=False,
                               unreadable=unreadable)
    assert missing == ["a\tb.png"] and "holds a tab or line break" in unreadable["a\tb.png"]
    assert list(read_landmarks(tmp_path / "marks.txt")) == ["next\x85line.png", "plain.png"]
    # A partial list holding such a name resumes: its lines end at "\n" only.
    from pydcr.data.mtcnn import _align_plan

    data = FlatFolder(root)
    (tmp_path / "m2.txt.partial").write_text(_align_plan(data, FakeDetector()) + "\n" + "next\x85line.png"
                                             + "\t7" * 10 + "\n")
    fake = FakeDetector()
    detect_landmarks(data, tmp_path / "m2.txt", detector=fake, progress=False)
    assert fake.seen == 1 and read_landmarks(tmp_path / "m2.txt")["next\x85line.png"][0, 0] == 7
