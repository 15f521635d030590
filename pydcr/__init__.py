"""pydcr: the Deep Coupled ResNet (Lu, Jiang, Kot, IEEE SPL 2018) for low-resolution face recognition.

Fused C++/CUDA torch ops for the hot paths live in :mod:`pydcr.ops` (with pure-PyTorch twins in
:mod:`pydcr.reference`).
"""

from ._extension import build_info
from . import ops, reference

__version__ = build_info()["version"]

__all__ = ["build_info", "ops", "reference", "__version__"]
