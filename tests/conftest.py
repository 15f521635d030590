import os
from pathlib import Path

import pytest
import torch

# ../shared beside the checkout (or PYDCR_SHARED) holds the real data; tests that need it skip without it.
SHARED = Path(os.environ.get("PYDCR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
LFW_ROOT = SHARED / "data" / "lfw"

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_data = pytest.mark.skip(reason=f"needs the LFW data at {LFW_ROOT}")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "data" in item.keywords and not (LFW_ROOT / "lfw_landmark.txt").is_file():
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    return LFW_ROOT
