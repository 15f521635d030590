import subprocess
import sys

import pytest
import torch

import pydcr


def test_build_info_keys():
    info = pydcr.build_info()
    for key in ("version", "torch_built", "torch_running", "cuda", "cuda_archs", "cuda_version", "openmp"):
        assert key in info
    assert info["version"] == pydcr.__version__
    assert info["torch_running"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cuda_loaded"] == (info["cuda"] and torch.version.cuda is not None)
    if info["cuda"]:
        assert info["cuda_archs"] and all(a.isdigit() for a in info["cuda_archs"])


def test_ops_registered():
    for name in ("resize", "resize_backward", "degrade", "degrade_backward"):
        assert hasattr(torch.ops.pydcr, name)


@pytest.mark.parametrize("argv", [["-m", "pydcr", "info"], ["-m", "pydcr", "info", "--json"]])
def test_info_command(argv, tmp_path):
    # Run outside the source tree so the installed package is the one imported.
    out = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert "torch_built" in out and pydcr.build_info()["torch_built"] in out
