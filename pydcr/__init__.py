"""pydcr: the Deep Coupled ResNet (Lu, Jiang, Kot, IEEE SPL 2018) for low-resolution face recognition.

Fused C++/CUDA torch ops for the hot paths live in :mod:`pydcr.ops` (with pure-PyTorch twins in
:mod:`pydcr.reference`); :mod:`pydcr.nn` has the layers, :mod:`pydcr.models` the network,
:mod:`pydcr.losses` the center and CM losses, :mod:`pydcr.data` alignment and datasets,
:mod:`pydcr.train` the two-step training, :mod:`pydcr.eval` the protocols and
:mod:`pydcr.embed` batch embedding and search (:class:`pydcr.Embedder`); :mod:`pydcr.allocator`
holds the CPU allocator setting the ``pydcr`` command runs with and :mod:`pydcr.denormals` the
flushing of denormal floats that CPU training runs with. Submodules load on first use.
"""

import importlib

from ._extension import build_info
from . import ops, reference

__version__ = build_info()["version"]

_SUBMODULES = ("allocator", "data", "demo", "denormals", "embed", "eval", "losses", "models", "nn", "train")

__all__ = ["Embedder", "build_info", "ops", "reference", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"pydcr.{name}")
    if name == "Embedder":
        return importlib.import_module("pydcr.embed").Embedder
    raise AttributeError(f"module 'pydcr' has no attribute {name!r}")
