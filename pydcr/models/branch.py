"""The coupled branch pair of one low resolution: an HR branch and an LR branch on the trunk feature."""

from __future__ import annotations

import torch
from torch import nn


class Branch(nn.Module):
    """FC in_dim -> dim (the feature), then PReLU and an FC classifier used only in training."""

    def __init__(self, in_dim: int, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, dim)
        # The classifier is dropped at deployment (num_classes = 0).
        self.act = nn.PReLU(dim) if num_classes else None
        self.classifier = nn.Linear(dim, num_classes) if num_classes else None

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.fc(v)

    def logits(self, feature: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("this branch has no classifier (it was built or saved for deployment)")
        return self.classifier(self.act(feature))


class BranchPair(nn.Module):
    """HR branch (gallery feature x) and LR branch (probe feature z) for one low resolution."""

    def __init__(self, num_classes: int, in_dim: int = 512, dim: int = 512):
        super().__init__()
        if num_classes < 0 or in_dim <= 0 or dim <= 0:
            raise ValueError(f"bad BranchPair sizes: num_classes={num_classes}, in_dim={in_dim}, dim={dim}")
        self.num_classes, self.in_dim, self.dim = int(num_classes), int(in_dim), int(dim)
        self.hr_branch = Branch(in_dim, dim, num_classes)
        self.lr_branch = Branch(in_dim, dim, num_classes)
        # Both feature layers start as the same map, so x and z start out comparable; the
        # coupling term of the CM loss keeps them close while each adapts to its resolution.
        self.lr_branch.fc.load_state_dict(self.hr_branch.fc.state_dict())

    def hr(self, v: torch.Tensor) -> torch.Tensor:
        """Feature x of a high-resolution image's trunk feature v."""
        return self.hr_branch(v)

    def lr(self, v: torch.Tensor) -> torch.Tensor:
        """Feature z of a low-resolution image's trunk feature v."""
        return self.lr_branch(v)

    def without_classifiers(self) -> "BranchPair":
        """A deployment copy: the same feature layers, no classifiers (about 2 MB at 512-d)."""
        pair = BranchPair(0, self.in_dim, self.dim)
        pair.hr_branch.fc.load_state_dict(self.hr_branch.fc.state_dict())
        pair.lr_branch.fc.load_state_dict(self.lr_branch.fc.state_dict())
        weight = self.hr_branch.fc.weight
        return pair.to(device=weight.device, dtype=weight.dtype)
