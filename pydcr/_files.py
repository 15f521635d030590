"""Writing output files the way every pydcr output is written: atomically, readable by others."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import save_file


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """The temporary file to write `path` under: once the block ends it is published as `path`
    (:func:`publish`); if the block fails it is removed, so a full disk or a Ctrl-C leaves the
    old file, and no partial one, behind. The block names `path` in its own write errors
    (:func:`naming_write_errors` around the writing, :class:`NamedWrites` where writes and reads
    of other files interleave: a read error must keep its own file's name)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with naming_write_errors(path):
            publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def naming_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an operating-system error in the block that names no file (a full disk, a
    file-size limit, a lost network mount) as an OSError naming `path`. Python's writes leave the
    file name out; safetensors and ``torch.save`` raise their own error types around it. An error
    that names its file (a missing input, say) is left as it is."""
    try:
        yield
    except Exception as err:
        code = _os_error_code(err)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from err


class NamedWrites:
    """A file object's writes (and flush) with their errors naming `path` (naming_write_errors)."""

    def __init__(self, f, path: str | os.PathLike) -> None:
        self._f, self._path = f, path

    def write(self, data):
        with naming_write_errors(self._path):
            return self._f.write(data)

    def flush(self) -> None:
        with naming_write_errors(self._path):
            self._f.flush()


def _os_error_code(err: BaseException | None) -> int | None:
    """The errno behind `err` if no file is named: its own, its cause's (``torch.save`` to a file
    object wraps the file's OSError), or the one safetensors writes into its message ("... (os
    error 28)")."""
    while err is not None:
        if isinstance(err, OSError) and err.errno:
            return None if err.filename else err.errno
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found:
            return int(found[1])
        err = err.__cause__ or err.__context__
    return None


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as tmp, naming_write_errors(path):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (UTF-8) atomically (:func:`atomic_write`)."""
    with atomic_write(path) as tmp, naming_write_errors(path):
        # surrogateescape: a path that is not UTF-8 is written as the bytes it has on disk
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished file `tmp` to `path`: first with the permissions of any new file (what
    safetensors creates is private, 0600, which hides the file from the other users of a shared
    machine) and on disk, so that a crash or power cut leaves the old file or the new."""
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask
