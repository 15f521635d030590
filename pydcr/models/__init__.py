"""The DCR network: Face-ResNet trunk, coupled branch pairs, routing, save and load."""

from .branch import Branch, BranchPair
from .dcr import DCR
from .resolution import estimate_resolution, native_resolution
from .serialization import load, save
from .trunk import Trunk

__all__ = ["Branch", "BranchPair", "DCR", "Trunk", "estimate_resolution", "load", "native_resolution", "save"]
