"""Writing safetensors files the way every pydcr output is written."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` atomically: a crash never leaves a half-written file under the
    name. The file gets the permissions of any new file (safetensors alone creates it 0600, which
    hides models and galleries from the other users of a shared machine)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:  # on disk before the rename: a power cut leaves the old file or the new
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask
