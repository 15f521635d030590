"""Output files: written with the permissions of any new file (under the process umask), and a
failed write (a full disk) names its file and leaves the old one."""

import errno
import os
import stat
import sys

import pytest
import torch

from pydcr import models
from pydcr._files import write_safetensors
from pydcr.embed.tables import concat

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o640
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_safetensors_files_follow_the_umask(tmp_path, umask_027):
    write_safetensors({"a": torch.zeros(3)}, tmp_path / "a.safetensors", {})
    write_safetensors({"b": torch.ones(2, 2)}, tmp_path / "b.safetensors", {})
    concat([tmp_path / "b.safetensors"] * 2, tmp_path / "c.safetensors", {})
    model = models.save(models.Trunk(width=0.0625, input_size=(40, 40)), tmp_path / "m.safetensors")
    for path in ("a.safetensors", "b.safetensors", "c.safetensors", model.name):
        assert mode(tmp_path / path) == umask_027, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors",
                                                          "m.safetensors"]  # no temporary left behind
    assert os.umask(0o027) == 0o027  # the umask read back is the one set


def test_landmark_lists_follow_the_umask(tmp_path, umask_027):
    import numpy as np

    from pydcr.data import read_landmarks, write_landmarks

    points = np.arange(10, dtype=np.float32).reshape(5, 2)
    write_landmarks(tmp_path / "list.txt", {"a.jpg": points})
    os.chmod(tmp_path / "list.txt", 0o600)
    write_landmarks(tmp_path / "list.txt", {"b.jpg": points})  # replaced with a new file's permissions
    assert mode(tmp_path / "list.txt") == umask_027
    assert list(read_landmarks(tmp_path / "list.txt")) == ["b.jpg"] and os.listdir(tmp_path) == ["list.txt"]


FULL_DISK = r"""
import errno, json, os, resource, signal, sys
from pathlib import Path

import numpy as np
import torch

from pydcr._files import write_safetensors, write_text
from pydcr.data import write_landmarks
from pydcr.embed.tables import concat
from pydcr.train.checkpoint import save_checkpoint

folder = Path(sys.argv[1])
big = torch.zeros(1 << 16)  # 256 KiB, over the limit below
for i in range(2):
    write_safetensors({"a": big}, folder / f"part{i}.safetensors", {})
writers = {
    "model.safetensors": lambda p: write_safetensors({"a": big}, p, {}),
    "checkpoint.pt": lambda p: save_checkpoint(p, {"a": big}),
    "report.json": lambda p: write_text(p, "x" * (1 << 18)),
    "gallery.safetensors": lambda p: concat([folder / "part0.safetensors", folder / "part1.safetensors"], p, {}),
    "landmarks.txt": lambda p: write_landmarks(p, {f"{i}.jpg": np.zeros((5, 2)) for i in range(20000)}),
}
for name in writers:
    (folder / name).write_text("old")
# A file-size limit fails writes as a full disk does, with no file name in Python's error.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 17, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
seen = {}
for name, write in writers.items():
    try:
        write(folder / name)
        seen[name] = "written"
    except OSError as err:
        seen[name] = [err.errno == errno.EFBIG, err.filename, err.strerror]
print(json.dumps(seen))
"""


def test_a_failed_write_names_its_file_and_leaves_the_old_one(tmp_path):
    """A full disk (here a file-size limit) fails every writer with an OSError naming the file it
    was writing, not safetensors' or torch.save's own error; the file already there is kept and no
    temporary is left behind."""
    import json
    import subprocess

    # from tmp_path: in the source folder, `import pydcr` would find the package without its build
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    for name, outcome in seen.items():
        assert outcome == [True, str(tmp_path / name), os.strerror(errno.EFBIG)], (name, outcome)
        assert (tmp_path / name).read_text() == "old", name
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([*seen, "part0.safetensors", "part1.safetensors"])  # no temporary


def test_a_read_error_keeps_the_name_of_the_file_read(tmp_path, monkeypatch):
    """Only write errors are given the output's name: a part that cannot be read (a flaky mount)
    is not reported as the gallery being written."""
    import pydcr.embed.tables as tables

    write_safetensors({"a": torch.zeros(4)}, tmp_path / "part.safetensors", {})

    def flaky(src, dst, nbytes):
        raise OSError(errno.EIO, os.strerror(errno.EIO))  # as a read on a failing disk: no file name

    monkeypatch.setattr(tables, "_copy", flaky)
    with pytest.raises(OSError) as caught:
        concat([tmp_path / "part.safetensors"], tmp_path / "out.safetensors", {})
    assert caught.value.errno == errno.EIO and caught.value.filename is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.safetensors"]  # no temporary left
