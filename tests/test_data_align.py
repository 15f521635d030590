"""Alignment and landmark lists, against independent computations (direct least squares, OpenCV)."""

import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydcr.data.align import MAX_WARP_SHRINK
from pydcr.data import (
    REFERENCE_112x96,
    align,
    align_many,
    alignment_matrix,
    read_image,
    read_landmarks,
    similarity_transform,
    template,
    write_landmarks,
)


def lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity as a linear system in (a, b, tx, ty): u = a x - b y + tx, v = b x + a y + ty."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    rows = []
    for x, y in src:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


similarities = st.tuples(st.floats(-np.pi, np.pi), st.floats(0.2, 5.0), st.floats(-300, 300), st.floats(-300, 300))


def similarity(angle, scale, tx, ty) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


@settings(max_examples=50, deadline=None)
@given(similarities, st.lists(st.floats(-3, 3), min_size=10, max_size=10))
def test_similarity_transform_is_the_least_squares_solution(params, noise):
    src = apply(similarity(*params), REFERENCE_112x96.astype(np.float64)) + np.reshape(noise, (5, 2))
    ours = similarity_transform(src, REFERENCE_112x96)
    np.testing.assert_allclose(ours, lstsq_similarity(src, REFERENCE_112x96), rtol=1e-7, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(similarities)
def test_exact_similarity_recovered_like_opencv(params):
    """Points that are an exact similarity of the template: ours and OpenCV's robust estimate agree."""
    truth = similarity(*params)
    src = apply(truth, REFERENCE_112x96.astype(np.float64))
    ours = similarity_transform(src, REFERENCE_112x96)
    theirs, inliers = cv2.estimateAffinePartial2D(src, REFERENCE_112x96.astype(np.float64), method=cv2.LMEDS)
    assert inliers.all()
    np.testing.assert_allclose(apply(ours, src), REFERENCE_112x96, atol=1e-6)
    np.testing.assert_allclose(apply(ours, src), apply(theirs, src), atol=1e-4)


def test_template_scales_per_axis():
    np.testing.assert_allclose(template((112, 96)), REFERENCE_112x96)
    np.testing.assert_allclose(template((224, 48)), REFERENCE_112x96 * [0.5, 2.0], rtol=1e-6)


@pytest.mark.parametrize(
    "landmarks, size, match",
    [
        (np.zeros((4, 2)), (112, 96), "5 x 2"),
        (np.random.rand(5, 2), (0, 96), "positive"),
        (np.ones((5, 2)), (112, 96), "all equal"),
        (np.full((5, 2), np.nan), (112, 96), "not all finite"),
    ],
)
def test_align_errors(landmarks, size, match):
    with pytest.raises(ValueError, match=match):
        align(np.zeros((50, 50, 3), np.uint8), landmarks, size)


def test_align_rejects_non_rgb():
    with pytest.raises(ValueError, match="H x W x 3"):
        align(np.zeros((50, 50), np.uint8), REFERENCE_112x96)


def test_align_many_checks_lengths():
    with pytest.raises(ValueError, match="2 images but 1 landmark"):
        align_many([np.zeros((9, 9, 3), np.uint8)] * 2, [REFERENCE_112x96])


def test_landmark_list_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    marks = {f"Person_{i}/Person_{i}_0001.jpg": rng.uniform(0, 250, (5, 2)).astype(np.float32) for i in range(20)}
    marks["Whole/Whole_0001.jpg"] = np.arange(10, dtype=np.float32).reshape(5, 2)
    path = tmp_path / "marks.txt"
    write_landmarks(path, marks)
    back = read_landmarks(path)
    assert list(back) == list(marks)
    for name in marks:
        np.testing.assert_allclose(back[name], marks[name], rtol=1e-5)
    assert path.read_text().splitlines()[-1] == "Whole/Whole_0001.jpg\t0\t1\t2\t3\t4\t5\t6\t7\t8\t9"
    write_landmarks(path, [("a.jpg", np.ones((5, 2)))])  # pairs are accepted too, and replace the file
    assert list(read_landmarks(path)) == ["a.jpg"]


@pytest.mark.parametrize(
    "name, points, match",
    [
        ("a\tb.jpg", np.ones((5, 2)), "tab or newline"),
        ("a.jpg", np.ones((4, 2)), "5 x 2"),
        ("a.jpg", np.full((5, 2), np.nan), "finite"),
    ],
)
def test_write_landmarks_errors(tmp_path, name, points, match):
    path = tmp_path / "marks.txt"
    with pytest.raises(ValueError, match=match):
        write_landmarks(path, {name: points})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_read_landmarks_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg\t1\t2\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected a path and 10 coordinates, got 2 coordinates$"):
        read_landmarks(bad)
    bad.write_text("a.jpg" + " 1" * 10 + "\n")
    with pytest.raises(ValueError, match=r"got 0 coordinates \(separated by spaces\? the list's fields are "
                                         r"separated by tabs\)"):
        read_landmarks(bad)
    bad.write_text("a.jpg" + "\t1" * 10 + "\n\nb.jpg" + "\tx" * 10 + "\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: bad coordinate"):
        read_landmarks(bad)
    bad.write_text("a.jpg" + "\t1" * 10 + "\nb.jpg" + "\tnan" * 10 + "\n")  # float() reads it; the list must not
    with pytest.raises(ValueError, match=r"bad.txt:2: coordinates must be finite"):
        read_landmarks(bad)
    bad.write_text("a.jpg" + "\t1" * 10 + "\na.jpg" + "\t2" * 10 + "\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: a.jpg is listed twice"):
        read_landmarks(bad)


def test_read_landmarks_ignores_a_byte_order_mark(tmp_path):
    path = tmp_path / "marks.txt"
    path.write_text("a.jpg" + "\t1" * 10 + "\n", encoding="utf-8-sig")
    assert list(read_landmarks(path)) == ["a.jpg"]


def test_read_image_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.*empty.jpg"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot decode.*text.jpg"):
        read_image(tmp_path / "text.jpg")


def test_jpeg_ends_are_told_from_truncation(tmp_path):
    """A JPEG with data after its end (a phone's trailer, a motion photo's video, padding) reads; one
    cut short does not, even when an EXIF thumbnail before its image holds an end marker."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8)
    thumbnail = io.BytesIO()
    Image.fromarray(rgb[::4, ::4]).save(thumbnail, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 1
    whole = io.BytesIO()
    Image.fromarray(rgb).save(whole, "JPEG", quality=95, exif=exif.tobytes() + thumbnail.getvalue())
    data = whole.getvalue()
    assert data.count(b"\xff\xd9") == 2  # the thumbnail's end marker, then the image's
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    for name, tail in (("zeros", bytes(100)), ("video", b"\x00\x00\x00\x18ftypmp42" + bytes(5000))):
        (tmp_path / f"{name}.jpg").write_bytes(data + tail)
        np.testing.assert_array_equal(read_image(tmp_path / f"{name}.jpg"), expected)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) - 200])
    with pytest.raises(ValueError, match="truncated JPEG"):
        read_image(tmp_path / "cut.jpg")


def test_read_image_converts_gray_and_rgba(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 128  # blue 10, red 200
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 10]


def test_read_image_upright_by_exif_orientation(tmp_path):
    """A photo stored sideways with an EXIF rotation comes out as viewers (and cv2.imread) show it."""
    from PIL import Image

    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:20, :20] = (250, 0, 0)  # a red corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(rgb).save(tmp_path / "o.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "o.jpg")
    assert image.shape == (80, 60, 3)
    np.testing.assert_array_equal(image, cv2.cvtColor(cv2.imread(str(tmp_path / "o.jpg")), cv2.COLOR_BGR2RGB))
    assert image[:20, -20:, 0].mean() > 200 and image[:20, :20, 0].mean() < 50  # the corner turned to top right


def test_read_image_16_bit_and_float(tmp_path):
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((4, 4), 0x8000 + 0x7F, np.uint16))
    assert (read_image(tmp_path / "g16.png") == 0x80).all()
    cv2.imwrite(str(tmp_path / "f.tiff"), np.full((4, 4, 3), 0.5, np.float32))
    assert (read_image(tmp_path / "f.tiff") == 128).all()  # 0 to 1, not cast to 0


@pytest.fixture(scope="module")
def lfw_sample(lfw_root):
    """Every 500th LFW image with its listed landmarks."""
    marks = read_landmarks(lfw_root / "lfw_landmark.txt")
    names = sorted(marks)[::500]
    return [read_image(lfw_root / "lfw" / n) for n in names], np.stack([marks[n] for n in names])


@pytest.mark.data
@pytest.mark.parametrize("size", [(112, 96), (56, 48), (224, 192)])
def test_align_on_lfw_matches_lstsq_warp(lfw_sample, size):
    images, marks = lfw_sample
    target = template(size)
    for image, points in zip(images, marks):
        m = lstsq_similarity(points, target)
        np.testing.assert_allclose(alignment_matrix(points, size), m, rtol=1e-6, atol=1e-6)
        if np.sqrt(np.linalg.det(m[:, :2])) >= MAX_WARP_SHRINK:  # a plain warp (see the area test below)
            expected = cv2.warpAffine(image, m, size[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
            diff = np.abs(align(image, points, size).astype(int) - expected)
            assert diff.max() <= 1 and diff.mean() < 1e-3  # equal up to the last bit of the matrix
        # The aligned points sit where the least-squares residual says, a few pixels at most.
        residual = np.linalg.norm(apply(m, points) - target, axis=1)
        assert residual.mean() < 0.1 * size[1]


def test_large_photos_are_shrunk_by_area_before_the_warp():
    # A face 10x the crop's scale on a fine checkerboard (2 px squares): the crop should be the
    # pattern's mean, flat grey; a bicubic warp alone samples the squares and shows moire.
    size = 2240
    yy, xx = np.mgrid[:size, :size]
    photo = np.repeat((((yy // 2 + xx // 2) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    points = REFERENCE_112x96 * 10 + 500
    m = alignment_matrix(points)
    plain = cv2.warpAffine(photo, m, (96, 112), flags=cv2.INTER_CUBIC)
    crop = align(photo, points).astype(float)
    assert abs(crop.mean() - 127.5) < 2 and crop.std() < 2
    assert plain.std() > 10 * crop.std()


@pytest.mark.parametrize("seed", range(8))
def test_the_area_shrink_keeps_the_geometry(seed):
    # A square dot near the nose of a rotated face shrunk 2x to 12x, in an image of odd size: its
    # centre of mass in the crop is where the alignment matrix maps it.
    rng = np.random.default_rng(seed)
    height, width = rng.integers(801, 2001, 2)
    scale, angle = rng.uniform(0.08, 0.49), rng.uniform(-0.6, 0.6)
    size = [(112, 96), (111, 95), (56, 48), (29, 25)][seed % 4]
    to_image = similarity(angle, 1 / scale, *rng.uniform(0.3, 0.7, 2) * (width, height))
    points = apply(to_image, template(size))
    m = alignment_matrix(points, size)
    x, y = np.round(points[2] + rng.uniform(-4, 4, 2) / scale).astype(int)
    r = int(3 / scale)
    image = np.zeros((height, width, 3), np.uint8)
    image[y - r:y + r + 1, x - r:x + r + 1] = 255
    crop = align(image, points, size)[..., 0].astype(float)
    rows, cols = np.mgrid[:size[0], :size[1]]
    centre = np.array([(cols * crop).sum(), (rows * crop).sum()]) / crop.sum()
    np.testing.assert_allclose(centre, apply(m, np.array([[x, y]], float))[0], atol=0.15)


def test_the_area_shrink_keeps_the_black_border():
    # A face half outside a large white image: the crop's outside part stays black, as in a plain warp.
    image = np.full((1500, 1000, 3), 255, np.uint8)
    points = REFERENCE_112x96 * 8 + [-400, 300]  # the left half of the face lies left of the image
    m = alignment_matrix(points)
    plain = cv2.warpAffine(image, m, (96, 112), flags=cv2.INTER_CUBIC)
    crop = align(image, points)
    inside, outside = plain[..., 0] == 255, plain[..., 0] == 0
    assert inside.any() and outside.any()
    assert (crop[inside] == 255).mean() > 0.95 and (crop[outside] == 0).mean() > 0.95


@pytest.mark.data
def test_align_on_lfw_agrees_with_opencv_robust_estimate(lfw_sample):
    """OpenCV's LMEDS fit (refined on its inliers) lands the points within a few pixels of ours."""
    images, marks = lfw_sample
    target = template((112, 96)).astype(np.float64)
    for points in marks:
        theirs, _ = cv2.estimateAffinePartial2D(points.astype(np.float64), target, method=cv2.LMEDS)
        ours = alignment_matrix(points)
        assert np.abs(apply(ours, points) - apply(theirs, points)).max() < 4.0


@pytest.mark.data
def test_align_many_equals_align(lfw_sample):
    images, marks = lfw_sample
    expected = np.stack([align(im, p) for im, p in zip(images, marks)])
    np.testing.assert_array_equal(align_many(images, marks), expected)
    np.testing.assert_array_equal(align_many(images, marks, workers=0), expected)
    assert align_many([], np.zeros((0, 5, 2)), (20, 10)).shape == (0, 20, 10, 3)
