import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pydcr


def test_build_info_keys():
    info = pydcr.build_info()
    for key in ("version", "torch", "torch_built", "torch_running", "cuda", "cuda_archs", "cuda_version", "openmp"):
        assert key in info
    assert info["version"] == pydcr.__version__
    assert info["torch_running"] == torch.__version__ and info["torch"] == info["torch_built"]
    assert isinstance(info["cuda"], bool)
    assert info["cuda_loaded"] == (info["cuda"] and torch.version.cuda is not None)
    if info["cuda"]:
        assert info["cuda_archs"] and all(a.isdigit() for a in info["cuda_archs"])


OPS = ("resize", "resize_backward", "degrade", "degrade_backward", "prelu", "prelu_backward", "prelu_pool",
       "prelu_pool_backward", "center_loss", "center_loss_backward", "center_stats", "center_apply_",
       "center_update_")


@pytest.mark.parametrize("name", OPS)
def test_ops_registered(name):
    """Every op csrc/ops.cpp declares has a CPU kernel and a fake (Meta) kernel in this build."""
    assert hasattr(torch.ops.pydcr, name)
    for key in ("CPU", "Meta"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pydcr::{name}", key), (name, key)


def test_every_declared_op_is_listed():
    schemas = (Path(__file__).parents[1] / "csrc" / "ops.cpp").read_text()
    assert re.findall(r'm\.def\("(\w+)\(', schemas) == list(OPS)


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


def test_a_closed_stdout_is_not_an_error_message(tmp_path):
    """`pydcr info --json | head -1`: the reader goes away; the command ends quietly (status 141, as
    a shell reports SIGPIPE), not with "Broken pipe" on stderr."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as for most users
        done = subprocess.run([sys.executable, "-m", "pydcr", "info", "--json"], stdout=write, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=env)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, b"")
