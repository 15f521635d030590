"""Row tables in safetensors files, and their concatenation without loading them whole.

A table is a safetensors file whose tensors all have the same number of rows (features, index,
labels) plus string metadata. Chunks and shards of a gallery are tables; :func:`concat` appends
tables row-wise into one file, copying each tensor's bytes part by part, so memory stays at one
part whatever the gallery's size. The result is a plain safetensors file (header, then each
tensor's bytes in name order), readable by ``safetensors.safe_open``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from .._files import NamedWrites, atomic_write


ITEM_SIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1}
_COPY_BLOCK = 1 << 22


def read_header(path: Path) -> tuple[dict, dict[str, str], int]:
    """(tensor entries, metadata, offset of the data) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 1 << 30:
            raise ValueError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path}: damaged safetensors header") from None
    metadata = header.pop("__metadata__", {}) or {}
    return header, metadata, 8 + n


def is_complete(path: Path) -> bool:
    """Whether `path` is a safetensors file whose header reads and whose data is all there (a file
    cut short by a crash or a full disk is not)."""
    try:
        tensors, _, start = read_header(path)
        end = max((t["data_offsets"][1] for t in tensors.values()), default=0)
        return os.path.getsize(path) >= start + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def concat(parts: Sequence[Path], out: Path, metadata: dict[str, str]) -> None:
    """Append the rows of `parts` (tables with the same tensor names, dtypes and widths) into `out`."""
    headers = [read_header(p) for p in parts]
    if not headers:
        raise ValueError("nothing to concatenate")
    names = sorted(headers[0][0])
    entries = {}
    offset = 0
    for name in names:
        dtype, tail, rows = None, None, 0
        for path, (tensors, _, _) in zip(parts, headers):
            if sorted(tensors) != names:
                raise ValueError(f"{path} holds tensors {sorted(tensors)}, expected {names}")
            t = tensors[name]
            if dtype is None:
                dtype, tail = t["dtype"], t["shape"][1:]
            if t["dtype"] != dtype or t["shape"][1:] != tail:
                raise ValueError(f"{path}: {name} is {t['dtype']} {t['shape']}, expected {dtype} [*, {tail}]")
            rows += t["shape"][0]
        nbytes = rows * ITEM_SIZE[dtype] * _prod(tail)
        entries[name] = {"dtype": dtype, "shape": [rows, *tail], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    # a part found truncated, a full disk, Ctrl-C: no half file left behind
    with atomic_write(out) as tmp, open(tmp, "wb") as f:
        written = NamedWrites(f, out)  # a write error names out; a part's read error keeps the part's name
        written.write(struct.pack("<Q", len(header)) + header)
        for name in names:
            for path, (tensors, _, start) in zip(parts, headers):
                a, b = tensors[name]["data_offsets"]
                with open(path, "rb") as src:
                    src.seek(start + a)
                    _copy(src, written, b - a)
        written.flush()


def _copy(src, dst, nbytes: int) -> None:
    while nbytes > 0:
        block = src.read(min(nbytes, _COPY_BLOCK))
        if not block:
            raise ValueError(f"{src.name} is truncated")
        dst.write(block)
        nbytes -= len(block)


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n

