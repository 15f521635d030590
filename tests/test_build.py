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


def test_version_flag(capsys):
    from pydcr.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pydcr {pydcr.__version__}"


def test_failed_load_names_the_torch_and_the_fix(monkeypatch):
    """A build the running torch cannot load gives a clear ImportError, not a bare linker error."""
    from pydcr import _extension

    def broken(name):
        raise ImportError(f"{name}: undefined symbol: aoti_torch_something")

    monkeypatch.setattr(_extension.importlib, "import_module", broken)
    with pytest.raises(ImportError) as info:
        _extension._load("_C")
    message = str(info.value)
    assert torch.__version__ in message and "undefined symbol" in message
    assert "pip install --no-build-isolation --force-reinstall" in message


def test_too_old_torch_is_refused_before_loading(monkeypatch):
    from pydcr import _extension

    monkeypatch.setattr(_extension.torch, "__version__", "2.10.0")
    with pytest.raises(ImportError, match=r"for torch >= 2\.11, but torch 2\.10\.0 is running"):
        _extension._load("_C")
