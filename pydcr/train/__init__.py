"""Two-step DCR training: the trunk on multi-resolution faces, then one branch pair per resolution."""

from .branch import train_branch_pair, train_branches, trunk_features
from .presets import PRESETS, BranchConfig, Preset, TrunkConfig, get_preset
from .trunk import TrunkRun, train_trunk

__all__ = [
    "PRESETS", "BranchConfig", "Preset", "TrunkConfig", "TrunkRun", "get_preset",
    "train_branch_pair", "train_branches", "train_trunk", "trunk_features",
]
