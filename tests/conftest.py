import os
from pathlib import Path

import pytest
import torch

# ../shared beside the checkout (or PYDCR_SHARED) holds the real data; tests that need it skip without it.
SHARED = Path(os.environ.get("PYDCR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
LFW_ROOT = SHARED / "data" / "lfw"

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    # A GPU check sets PYDCR_REQUIRE_CUDA: there, a CUDA test that would skip is an error.
    if os.environ.get("PYDCR_REQUIRE_CUDA", "") not in ("", "0") and not HAS_CUDA:
        raise pytest.UsageError("PYDCR_REQUIRE_CUDA is set, but torch sees no CUDA device")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_data = pytest.mark.skip(reason=f"needs the LFW data at {LFW_ROOT}")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "data" in item.keywords and not (LFW_ROOT / "lfw_landmark.txt").is_file():
            item.add_marker(skip_data)


@pytest.fixture(autouse=True)
def keep_malloc_settings(monkeypatch):
    """pydcr.cli.main sets glibc's malloc options for its whole process; tests that call it in the
    pytest process must not change them for the tests after. (tests/test_allocator.py checks the
    setting itself in fresh processes, and that the command applies it.)"""
    import pydcr.cli

    monkeypatch.setattr(pydcr.cli, "retain_freed_memory", lambda: False)


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    return LFW_ROOT


@pytest.fixture(scope="session")
def synthetic_pack(tmp_path_factory):
    """make(size) -> a pack of 16 synthetic 'faces' of 4 people (brightness tells them apart) at crop size `size`."""
    import cv2
    import numpy as np

    from pydcr.data import REFERENCE_112x96, FaceDataset, pack

    def make(size: tuple[int, int]) -> Path:
        root = tmp_path_factory.mktemp("faces")
        rng = np.random.default_rng(0)
        paths, labels = [], []
        for person in range(4):
            (root / f"p{person}").mkdir()
            for i in range(4):
                image = np.clip(rng.integers(0, 80, (112, 96, 3)) + 40 * person, 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / f"p{person}" / f"{i}.png"), image)
                paths.append(f"p{person}/{i}.png")
                labels.append(person)
        dataset = FaceDataset(root, paths, labels, [f"p{p}" for p in range(4)],
                              {p: REFERENCE_112x96 for p in paths}, size=size)
        return pack(dataset, root / "faces.pack", progress=False)

    return make
