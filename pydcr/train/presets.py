"""Named training configurations: the paper's, and small ones that finish on a CPU."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch


@dataclass(frozen=True)
class TrunkConfig:
    """Step 1: the trunk on every image at 112 x 96 and degraded to each of `low_sizes`."""

    width: float = 1.0
    feature_dim: int = 512
    input_size: tuple[int, int] = (112, 96)
    low_sizes: tuple[int, ...] = (40, 6)
    batch_size: int = 256  # images per batch; each is seen at 1 + len(low_sizes) resolutions
    epochs: int = 30
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adamw" (converges in far fewer steps on small data)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.6, 0.85)  # fractions of the run where the lr drops
    gamma: float = 0.1
    beta: float = 0.008  # weight of the center loss (paper eq. 1)
    center_alpha: float = 0.5  # center update rate (Wen et al.)
    antialias: bool = True  # the bicubic convention of the degraded copies
    flip: bool = True  # random horizontal flips

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BranchConfig:
    """Step 2: one branch pair per low resolution on cached trunk features (trunk frozen)."""

    dim: int = 512
    batch_size: int = 256
    epochs: int = 40
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lam: float = 0.008  # weight of the center loss (paper eq. 5)
    alpha: float = 0.008  # weight of the HR-LR coupling (paper eq. 5)
    center_alpha: float = 0.5
    shared_centers: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)


PRESETS = {
    p.name: p
    for p in (
        Preset("paper", "the paper's setting: width 1.0, batch 256, 112x96 + 40x40 + 6x6 (for a GPU)"),
        Preset(
            "cpu",
            "a quarter-width trunk at the paper's 112 x 96 and 256-d branches (about 2 s a step on 2 CPU cores)",
            TrunkConfig(width=0.25, feature_dim=256, batch_size=64, epochs=12, optimizer="adamw", lr=1e-3),
            BranchConfig(dim=256, batch_size=128, epochs=30, optimizer="adamw", lr=1e-3),
        ),
        Preset(
            "small",
            "the cpu preset on 56 x 48 crops, 30 epochs: the LFW reproduction in well under an hour on 2 CPU cores",
            TrunkConfig(width=0.25, feature_dim=256, input_size=(56, 48), batch_size=64, epochs=30,
                        optimizer="adamw", lr=1e-3),
            BranchConfig(dim=256, batch_size=128, epochs=30, optimizer="adamw", lr=1e-3),
        ),
        Preset(
            "demo",
            "the bundled demo: a small trunk on 56 x 48 crops that trains on the demo faces in minutes on a CPU",
            TrunkConfig(width=0.25, feature_dim=128, input_size=(56, 48), batch_size=64, epochs=20,
                        optimizer="adamw", lr=1e-3),
            BranchConfig(dim=128, batch_size=128, epochs=30, optimizer="adamw", lr=1e-3),
        ),
    )
}


def make_optimizer(params, config: TrunkConfig | BranchConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}")


def get_preset(name: str, **trunk_overrides) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return replace(p, trunk=replace(p.trunk, **trunk_overrides)) if trunk_overrides else p
