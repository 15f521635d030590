"""Five-point landmark lists: ``path<TAB>x1<TAB>y1 ... x5<TAB>y5`` per line (LFW, CASIA-WebFace)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from .._files import atomic_write, naming_write_errors


def read_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Map each listed image path to its 5 x 2 float32 array of (x, y) points.

    Point order: left eye, right eye, nose tip, left mouth corner, right mouth corner ("left" as
    seen in the image). A malformed line raises ValueError naming the file and line number.
    """
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first path
        return parse_landmarks(f, path)


def parse_landmarks(lines: Iterable[str], path: str | os.PathLike, first: int = 1) -> dict[str, np.ndarray]:
    """:func:`read_landmarks` of the lines of a list (numbered from `first` in its errors)."""
    out: dict[str, np.ndarray] = {}
    for number, line in enumerate(lines, first):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 11:
            # a hand-written list often separates by spaces; paths may hold spaces, so tabs are the format
            spaces = " (separated by spaces? the list's fields are separated by tabs)" if (
                len(fields) == 1 and len(line.split()) == 11) else ""
            raise ValueError(f"{path}:{number}: expected a path and 10 coordinates, got {len(fields) - 1} "
                             f"coordinate{'' if len(fields) == 2 else 's'}{spaces}")
        try:
            with np.errstate(over="ignore"):  # 1e39 overflows float32: refused just below, without a warning line
                points = np.asarray(fields[1:], dtype=np.float32).reshape(5, 2)
        except ValueError as err:
            raise ValueError(f"{path}:{number}: bad coordinate ({err})") from None
        if not np.isfinite(points).all():
            raise ValueError(f"{path}:{number}: coordinates must be finite, got {fields[1:]}")
        if fields[0] in out:
            raise ValueError(f"{path}:{number}: {fields[0]} is listed twice")
        out[fields[0]] = points
    return out


def format_landmark_line(name: str, points: np.ndarray) -> str:
    """One line of a landmark list (without the newline); coordinates with up to 6 significant digits."""
    if any(c in name for c in "\t\n\r"):
        raise ValueError(f"image path {name!r} contains a tab or newline, which the list format cannot hold")
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks of {name!r} must be a 5 x 2 array of (x, y), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"landmarks of {name!r} are not all finite: {points.tolist()}")
    return "\t".join([name, *(format(float(v), ".6g") for v in points.reshape(-1))])


def write_landmarks(
    path: str | os.PathLike, landmarks: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]
) -> None:
    """Write a landmark list that :func:`read_landmarks` reads back, in the given order.

    landmarks: a mapping (or pairs) from image path, as it should appear in the list (usually
    relative to the dataset root), to a 5 x 2 (x, y) array. The file is replaced atomically, so a
    reader never sees half a list.
    """
    items = landmarks.items() if isinstance(landmarks, Mapping) else landmarks
    lines = [format_landmark_line(str(name), points) + "\n" for name, points in items]
    with atomic_write(path) as tmp, naming_write_errors(path), open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
