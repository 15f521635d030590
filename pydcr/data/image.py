"""Image decoding."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an H x W x 3 uint8 RGB array (grayscale and RGBA are converted).

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for one that is
    empty, corrupt, truncated (JPEG) or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"image file is empty: {path}")
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-64:].tobytes():
        # OpenCV decodes a cut-off JPEG with a warning, filling the missing rows with grey.
        raise ValueError(f"truncated JPEG (no end-of-image marker): {path}")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
    if image.dtype != np.uint8:  # 16-bit PNG/TIFF: keep the top 8 bits
        image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
