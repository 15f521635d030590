"""Face data: decoding, five-point alignment, landmark lists, the MTCNN detector and datasets."""

from .align import REFERENCE_112x96, align, align_many, alignment_matrix, similarity_transform, template
from .datasets import LFW, FaceDataset, IdentityFolder, Pairs, SCface
from .image import read_image
from .landmarks import read_landmarks, write_landmarks
from .mtcnn import MTCNN

__all__ = [
    "LFW",
    "MTCNN",
    "FaceDataset",
    "IdentityFolder",
    "Pairs",
    "SCface",
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
