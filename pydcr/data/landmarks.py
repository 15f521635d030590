"""Five-point landmark lists: ``path<TAB>x1<TAB>y1 ... x5<TAB>y5`` per line (LFW, CASIA-WebFace)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def read_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Map each listed image path to its 5 x 2 float32 array of (x, y) points.

    Point order: left eye, right eye, nose tip, left mouth corner, right mouth corner ("left" as
    seen in the image). A malformed line raises ValueError naming the file and line number.
    """
    out: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 11:
                raise ValueError(f"{path}:{number}: expected a path and 10 coordinates, got {len(fields) - 1} fields")
            try:
                points = np.asarray(fields[1:], dtype=np.float32).reshape(5, 2)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: bad coordinate ({err})") from None
            out[fields[0]] = points
    return out
