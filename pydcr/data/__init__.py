"""Face data: decoding, five-point alignment and landmark lists."""

from .align import REFERENCE_112x96, align, align_many, alignment_matrix, similarity_transform, template
from .image import read_image
from .landmarks import read_landmarks, write_landmarks

__all__ = [
    "REFERENCE_112x96",
    "align",
    "align_many",
    "alignment_matrix",
    "read_image",
    "read_landmarks",
    "similarity_transform",
    "template",
    "write_landmarks",
]
