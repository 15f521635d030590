"""Face data: decoding, five-point alignment, landmark lists and the MTCNN detector."""

from .align import REFERENCE_112x96, align, align_many, alignment_matrix, similarity_transform, template
from .image import read_image
from .landmarks import read_landmarks, write_landmarks
from .mtcnn import MTCNN

__all__ = [
    "MTCNN",
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
