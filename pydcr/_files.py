"""Writing output files the way every pydcr output is written: atomically, readable by others."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` atomically: a crash never leaves a half-written file under the
    name (see :func:`publish`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    publish(tmp, path)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished file `tmp` to `path`: first with the permissions of any new file (what
    safetensors and mkstemp create is private, 0600, which hides the file from the other users of
    a shared machine) and on disk, so that a crash or power cut leaves the old file or the new."""
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask
