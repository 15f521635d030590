"""retain_freed_memory keeps freed CPU memory in the process, and the pydcr command applies it."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

import pydcr.cli

# Resident MiB gained by allocating, writing and freeing a 64 MiB tensor, in a fresh process (the
# setting is process-wide), with glibc's default or after retain_freed_memory.
CHILD = """
import sys
from pathlib import Path
import torch
from pydcr.allocator import freed_memory_retained, retain_freed_memory

def resident_mib():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

applied = retain_freed_memory() if sys.argv[1] == "retain" else None
before = resident_mib()
t = torch.ones(64 * 2**20 // 4)
del t
print(applied, freed_memory_retained(), resident_mib() - before)
"""


def kept_after_free(setting: str, cwd: Path) -> tuple[str, str, float]:
    # Run outside the source tree: `python -c` puts the working folder first on sys.path, and the
    # source folder's pydcr has no compiled extension when the package is installed normally.
    run = subprocess.run([sys.executable, "-c", CHILD, setting], capture_output=True, text=True, cwd=cwd)
    assert run.returncode == 0, run.stderr
    applied, recorded, kept = run.stdout.split()
    return applied, recorded, float(kept)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_memory_stays_resident_only_when_retained(tmp_path):
    assert kept_after_free("default", tmp_path) == ("None", "False", pytest.approx(0, abs=8))
    applied, recorded, kept = kept_after_free("retain", tmp_path)
    assert applied == recorded == "True"
    assert kept == pytest.approx(64, abs=8)


def test_the_command_applies_it(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pydcr.cli, "retain_freed_memory", lambda: calls.append(True) or True)
    assert pydcr.cli.main(["info"]) == 0
    assert calls == [True]
