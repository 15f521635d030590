"""Model, gallery and landmark files get the permissions of any new file, under the process's umask."""

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
