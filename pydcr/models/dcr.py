"""DCR: the trunk plus one coupled branch pair per trained low resolution, and resolution routing."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import ops
from .branch import BranchPair
from .resolution import estimate_resolution, native_resolution
from .trunk import Trunk, check_image_dtype


def positive_int(value, name: str = "resolution") -> int:
    """`value` as a resolution: a positive int (an integral float such as 8.0 too), else ValueError."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value > 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class DCR(nn.Module):
    """Deep Coupled ResNet.

    Gallery images are embedded with ``embed_hr`` (trunk + HR branch), probes with ``embed_lr``
    (trunk + the LR branch of the trained resolution nearest to the probe's). ``antialias`` names the
    bicubic convention the model was trained with; probes are upsampled with it.
    """

    def __init__(self, trunk: Trunk, branches: Mapping[int, BranchPair] | None = None, *, antialias: bool = True):
        super().__init__()
        self.trunk = trunk
        self.antialias = bool(antialias)
        self.branches = nn.ModuleDict()
        for k, pair in (branches or {}).items():
            self.add_branch(k, pair)

    # Branch pairs -----------------------------------------------------------------------------

    @property
    def resolutions(self) -> list[int]:
        return sorted(int(k) for k in self.branches)

    def add_branch(self, resolution: int, pair: BranchPair) -> None:
        """Add (or replace) the pair of `resolution`, moved to the trunk's dtype and device."""
        key = str(positive_int(resolution))
        if pair.in_dim != self.trunk.feature_dim:
            raise ValueError(f"branch pair takes {pair.in_dim}-d features, the trunk gives {self.trunk.feature_dim}")
        # embed_lr routes each probe to its own pair into one output: all pairs give one feature size.
        dims = {p.dim for k, p in self.branches.items() if k != key}
        if dims and pair.dim not in dims:
            raise ValueError(f"branch pair gives {pair.dim}-d features, the model's other pairs give {dims.pop()}-d: "
                             "all pairs of a model must share one dim")
        weight = next(self.trunk.parameters())
        self.branches[key] = pair.to(device=weight.device, dtype=weight.dtype)

    def remove_branch(self, resolution: int) -> BranchPair:
        return self.branches.pop(self._key(resolution))

    def branch(self, resolution: int) -> BranchPair:
        return self.branches[self._key(resolution)]

    def _key(self, resolution: int) -> str:
        key = str(positive_int(resolution))
        if key not in self.branches:
            raise KeyError(f"no branch pair for resolution {resolution}; trained: {self.resolutions}")
        return key

    def nearest_resolution(self, k: int) -> int:
        """The trained resolution closest to k (the lower one on a tie)."""
        if not self.branches:
            raise RuntimeError("this model has no branch pairs: use embed_trunk, or add a pair first")
        return min(self.resolutions, key=lambda r: (abs(r - k), r))

    # Embedding --------------------------------------------------------------------------------

    def embed_trunk(self, images: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
        """Trunk feature v (the paper's "trunk network" baseline); with flip, plus the mirrored image's.

        images: faces at the trunk's input size, or native low-resolution probe crops (smaller;
        upsampled here with the model's bicubic convention, as for embed_lr).
        """
        images, _ = self._at_input_size(images)
        return self._trunk_features(images, flip)

    def embed_hr(self, images: torch.Tensor, resolution: int | None = None, *, flip: bool = False) -> torch.Tensor:
        """Gallery features x from full-size images, through the HR branch of `resolution`'s pair.

        Each pair has its own HR branch: match gallery and probes through the same pair.
        resolution may be left out when the model has a single pair.
        """
        if not self.branches:
            raise RuntimeError("this model has no branch pairs: use embed_trunk, or add a pair first")
        if resolution is None:
            if len(self.branches) != 1:
                raise ValueError(f"this model has pairs for {self.resolutions}: name the resolution to embed for")
            resolution = self.resolutions[0]
        return self._branch_features(self._trunk_features(images, flip), resolution, hr=True)

    def embed_lr(self, images: torch.Tensor, size: int | None = None, *, flip: bool = False) -> torch.Tensor:
        """Probe features z through the LR branch of the trained resolution nearest the probe's.

        images: either native low-resolution crops (smaller than the trunk's input; upsampled here)
        or faces already brought to the input size. The probe's resolution is `size` when given,
        else the crops' own size, else estimated from content (estimate_resolution) per image.
        """
        if size is not None:
            size = positive_int(size, "size")
        images, native = self._at_input_size(images)
        if native is not None or size is not None:
            k = size if size is not None else native
            return self._branch_features(self._trunk_features(images, flip), self.nearest_resolution(k), hr=False)
        # Per-image estimate: route each group of images to its branch.
        routes = [self.nearest_resolution(int(k)) for k in estimate_resolution(images, antialias=self.antialias)]
        v = self._trunk_features(images, flip)
        out = v.new_empty(v.shape[0], self.branch(self.resolutions[0]).dim)
        for r in set(routes):
            idx = torch.tensor([i for i, ri in enumerate(routes) if ri == r], device=v.device)
            out[idx] = self._branch_features(v[idx], r, hr=False)
        return out

    def _at_input_size(self, images: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """Images at the trunk's input size, and their native resolution when they came as smaller
        (low-resolution probe) crops; None when they already were at the input size."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected images N x 3 x H x W, got {shape}")
        h, w = images.shape[-2:]
        input_h, input_w = self.trunk.input_size
        if (h, w) == (input_h, input_w):
            return images, None
        if h > input_h or w > input_w:
            raise ValueError(f"images are {h}x{w}, larger than the model's {input_h}x{input_w} input: "
                             "align them to the input size (then `size` names their resolution) or give low-resolution crops")
        check_image_dtype(images)  # before resize, whose kernel would reject it less clearly
        native = native_resolution(h, w)
        return ops.resize(images, self.trunk.input_size, antialias=self.antialias), native

    def _trunk_features(self, images: torch.Tensor, flip: bool) -> torch.Tensor:
        v = self.trunk(images)
        if flip:
            v = v + self.trunk(images.flip(-1))
        return v

    def _branch_features(self, v: torch.Tensor, resolution: int, *, hr: bool) -> torch.Tensor:
        pair = self.branch(resolution)
        return pair.hr(v) if hr else pair.lr(v)
