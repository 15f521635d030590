"""Face data: decoding, five-point alignment, landmark lists, the MTCNN detector, datasets, packed crops and
multi-resolution batches."""

from .align import REFERENCE_112x96, align, align_many, alignment_matrix, similarity_transform, template
from .batches import MultiResolution, MultiResolutionBatch, face_loader
from .datasets import LFW, FaceArrays, FaceDataset, FlatFolder, IdentityFolder, Pairs, SCface, open_dataset
from .image import read_image
from .landmarks import read_landmarks, write_landmarks
from .mtcnn import MTCNN
from .packed import CorruptPackError, PackedFaces, pack

__all__ = [
    "CorruptPackError",
    "FaceArrays",
    "FaceDataset",
    "FlatFolder",
    "IdentityFolder",
    "LFW",
    "MTCNN",
    "MultiResolution",
    "MultiResolutionBatch",
    "PackedFaces",
    "Pairs",
    "REFERENCE_112x96",
    "SCface",
    "align",
    "align_many",
    "alignment_matrix",
    "open_dataset",
    "pack",
    "read_image",
    "read_landmarks",
    "similarity_transform",
    "face_loader",
    "template",
    "write_landmarks",
]
