"""Face data: decoding, five-point alignment and landmark lists."""

from .align import REFERENCE_112x96, align, similarity_transform
from .image import read_image
from .landmarks import read_landmarks

__all__ = ["REFERENCE_112x96", "align", "read_image", "read_landmarks", "similarity_transform"]
