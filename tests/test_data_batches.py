"""The multi-resolution transform and the face loader."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pydcr import ops, reference
from pydcr.data import IdentityFolder, PackedFaces, pack
from pydcr.data.batches import MultiResolution, collate_faces, face_loader


def random_batch(n, h=112, w=96, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g).to(device)


def check(transform, x, out):
    """Each HR image is its input or the mirror of it; every low copy is the degraded HR image."""
    assert out.hr.dtype == torch.float32 and out.hr.shape == x.shape and out.hr.device == x.device
    same = (out.hr == x.float()).flatten(1).all(1)
    mirrored = (out.hr == x.flip(-1).float()).flatten(1).all(1)
    assert (same | mirrored).all()
    assert list(out.low) == transform.lows
    for k, low in out.low.items():
        assert low.shape == x.shape and low.dtype == torch.float32
        torch.testing.assert_close(
            low, reference.degrade(out.hr, k, antialias=transform.antialias), atol=1e-3, rtol=1e-5
        )
    return mirrored & ~same


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(0, 4),
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    lows=st.lists(
        st.one_of(st.integers(2, 20), st.tuples(st.integers(2, 20), st.integers(2, 20))),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    antialias=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_transform_matches_reference(n, h, w, lows, antialias, seed):
    transform = MultiResolution(lows, antialias=antialias, generator=seed)
    x = random_batch(n, h, w, seed)
    check(transform, x, transform(x))


def test_trunk_recipe_and_seeded_flips():
    x = random_batch(32)
    a, b, c = (MultiResolution(generator=s)(x) for s in (7, 7, 8))
    assert list(a.low) == [40, 6]
    torch.testing.assert_close(a.low[6], ops.degrade(a.hr, 6))
    flips = check(MultiResolution(generator=7), x, a)
    assert 4 < flips.sum() < 28  # about half
    torch.testing.assert_close(a.hr, b.hr)
    assert not torch.equal(a.hr, c.hr)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_flip_probability_extremes(p):
    x = random_batch(8)
    out = MultiResolution([12], flip=p, generator=0)(x)
    torch.testing.assert_close(out.hr, (x.flip(-1) if p else x).float())


def test_given_flip_mask():
    x = random_batch(6)
    mask = torch.tensor([True, False, False, True, True, False])
    out = MultiResolution([12], flip=0.0)(x, mask)  # the mask, not the probability, decides
    torch.testing.assert_close(out.hr, torch.where(mask[:, None, None, None], x.flip(-1), x).float())
    with pytest.raises(ValueError, match="one bool per image"):
        MultiResolution([12])(x, mask[:5])


def test_generator_object_advances():
    g = torch.Generator().manual_seed(3)
    transform = MultiResolution([8], generator=g)
    x = random_batch(32)
    first, second = transform(x).hr, transform(x).hr
    assert not torch.equal(first, second)  # a new draw per batch
    again = MultiResolution([8], generator=3)
    torch.testing.assert_close(again(x).hr, first)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(2, 3, 8, 8), "uint8 N x 3 x H x W tensor, got torch.float32"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), r"shape \(2, 1, 8, 8\)"),
        (np.zeros((2, 3, 8, 8), np.uint8), "ndarray"),
    ],
)
def test_transform_errors(x, match):
    with pytest.raises(ValueError, match=match):
        MultiResolution()(x)


def test_transform_setting_errors():
    with pytest.raises(ValueError, match="flip must be a probability"):
        MultiResolution(flip=1.5)
    with pytest.raises(TypeError, match="lows must be an int or a pair"):
        MultiResolution([(1, 2, 3)])
    with pytest.raises(ValueError, match="must not repeat"):
        MultiResolution([6, 8, 6])


@pytest.mark.cuda
def test_transform_on_cuda_matches_cpu():
    x = random_batch(16)
    cpu = MultiResolution([6, 40, (16, 12)], generator=5)(x)
    gpu = MultiResolution([6, 40, (16, 12)], generator=5)(x.cuda())
    torch.testing.assert_close(gpu.hr.cpu(), cpu.hr)
    for k in cpu.low:
        assert gpu.low[k].is_cuda
        torch.testing.assert_close(gpu.low[k].cpu(), cpu.low[k], atol=1e-3, rtol=1e-4)


def test_collate():
    items = [(np.full((4, 3, 3), i, np.uint8), i) for i in range(5)]
    images, labels = collate_faces(items)
    assert images.shape == (5, 3, 4, 3) and images.dtype == torch.uint8 and images.is_contiguous()
    assert labels.tolist() == [0, 1, 2, 3, 4] and (images[2] == 2).all()


def test_loader_over_a_pack(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    marks = {}
    for person in ("a", "b", "c"):
        (tmp_path / "src" / person).mkdir(parents=True)
        for k in range(5):
            cv2.imwrite(str(tmp_path / "src" / person / f"{k}.png"), rng.integers(0, 256, (60, 60, 3), dtype=np.uint8))
            marks[f"{person}/{k}.png"] = np.array([[20, 25], [40, 25], [30, 35], [22, 45], [38, 45]], np.float32)
    faces = PackedFaces(
        pack(IdentityFolder(tmp_path / "src", landmarks=marks), tmp_path / "f.pack", format="raw", progress=False)
    )
    in_order = list(face_loader(faces, 4, shuffle=False, workers=2))
    images = torch.cat([b for b, _ in in_order])
    assert images.shape == (15, 3, 112, 96)
    torch.testing.assert_close(images, torch.from_numpy(faces.images(range(15))).permute(0, 3, 1, 2))
    assert torch.cat([y for _, y in in_order]).tolist() == faces.labels.tolist()
    first = [torch.cat([y for _, y in face_loader(faces, 4, seed=1, workers=0)]).tolist() for _ in range(2)]
    assert first[0] == first[1] and sorted(first[0]) == sorted(faces.labels.tolist())


def test_loader_with_a_sampler():
    from torch.utils.data.distributed import DistributedSampler

    items = [(np.full((4, 3, 3), i, np.uint8), i) for i in range(10)]
    halves = []
    for rank in (0, 1):  # two ranks' samplers deal out one permutation
        sampler = DistributedSampler(items, num_replicas=2, rank=rank, seed=5)
        halves.append(torch.cat([y for _, y in face_loader(items, 2, shuffle=False, sampler=sampler, workers=0)]))
    assert sorted(torch.cat(halves).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="either shuffle=True or a sampler"):
        face_loader(items, 2, sampler=sampler)
