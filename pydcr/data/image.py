"""Image decoding."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an H x W x 3 uint8 RGB array, upright as its EXIF orientation says
    (as viewers and ``cv2.imread`` show it). Grayscale is converted, alpha dropped; 16-bit images
    keep their top 8 bits and floating-point ones (TIFF, EXR) are read as 0 to 1.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for one that is
    empty, corrupt, truncated (JPEG) or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"image file is empty: {path}")
    if data[:2].tobytes() == b"\xff\xd8" and not _jpeg_is_complete(data.tobytes()):
        # OpenCV decodes a cut-off JPEG with a warning, filling the missing rows with grey.
        raise ValueError(f"truncated JPEG (no end-of-image marker): {path}")
    # Not IMREAD_UNCHANGED: that flag also skips the EXIF rotation, and phone photos come out sideways.
    image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.clip(np.nan_to_num(image) * 255 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported image sample type {image.dtype}: {path}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG's image data reach its end-of-image marker. The segments before the first
    start-of-scan are stepped over by their lengths (an EXIF thumbnail there holds its own end
    marker); after it, scan data cannot hold the marker (0xFF bytes are stuffed), so any end
    marker is the image's, whatever follows it (a phone's trailer, an appended video)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False  # not a segment: damaged
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", i + 2) != -1
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False
