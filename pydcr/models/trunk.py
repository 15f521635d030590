"""The Face-ResNet trunk: 27 convolutions with PReLU, no batch norm, a 512-d feature.

Stages for a 112 x 96 input (the paper's Face-ResNet):

    stem  conv 3->32, conv 32->64 (pad 0), max-pool       64 x 54 x 46
    2     1 residual unit                                 64 x 54 x 46
    3     conv 64->128 (pad 0), max-pool, 2 units        128 x 26 x 22
    4     conv 128->256 (pad 0), max-pool, 5 units       256 x 12 x 10
    5     conv 256->512 (pad 0), max-pool, 3 units       512 x  5 x  4
    fc    10240 -> 512: the feature v
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import nn

from .. import nn as fused_layers

#: (output channels of the stage's conv at width 1.0, residual units after it), stages 3-5.
STAGES = ((128, 2), (256, 5), (512, 3))
STEM = (32, 64)
STEM_UNITS = 1


def _channels(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _pooled(n: int) -> int:
    """Size after a 3x3 valid conv and a 2x2 max-pool with ceil mode (Caffe's pooling)."""
    return -(-(n - 2) // 2)


def feature_map_size(input_size: Sequence[int]) -> tuple[int, int]:
    """Spatial size of the last residual stage for an input of (h, w)."""
    h, w = input_size
    h, w = h - 2, w - 2  # the first stem conv; the second is folded into _pooled
    for _ in range(1 + len(STAGES)):
        h, w = _pooled(h), _pooled(w)
    if h < 1 or w < 1:
        raise ValueError(f"input_size {tuple(input_size)} is too small for the trunk (at least 36 x 36)")
    return h, w


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float images in [0, 255] to the network's input, (x - 127.5) / 128."""
    return (images.float() if images.dtype == torch.uint8 else images).sub(127.5).div(128.0)


def check_image_dtype(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point in [0, 255], got {images.dtype}")


class Trunk(nn.Module):
    """Face-ResNet: images N x 3 x H x W (uint8 or float in [0, 255]) -> features N x feature_dim.

    layers: where ConvPReLU and ResidualUnit come from: pydcr.nn (fused ops, the default) or
    pydcr.reference (eager nn.Conv2d / nn.PReLU / add, the twin with identical parameters).
    """

    def __init__(
        self,
        width: float = 1.0,
        feature_dim: int = 512,
        input_size: Sequence[int] = (112, 96),
        layers: ModuleType = fused_layers,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if int(feature_dim) < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if isinstance(input_size, int) or len(input_size) != 2:
            raise ValueError(f"input_size must be (height, width), got {input_size!r}")
        self.width = float(width)
        self.feature_dim = int(feature_dim)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        c1, c2 = (_channels(c, width) for c in STEM)
        ConvPReLU, ResidualUnit = layers.ConvPReLU, layers.ResidualUnit
        # Each max-pool follows a widening ConvPReLU and is fused into it (pool=True).
        body: list[nn.Module] = [ConvPReLU(3, c1, padding=0), ConvPReLU(c1, c2, padding=0, pool=True)]
        body += [ResidualUnit(c2) for _ in range(STEM_UNITS)]
        channels = c2
        for out, units in STAGES:
            out = _channels(out, width)
            body += [ConvPReLU(channels, out, padding=0, pool=True)]
            body += [ResidualUnit(out) for _ in range(units)]
            channels = out
        self.body = nn.Sequential(*body)
        h, w = feature_map_size(self.input_size)
        self.fc = nn.Linear(channels * h * w, self.feature_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, the fillers of the original Caffe model; PReLU
        slopes 0.25. (torch's default conv initialisation lets the signal fade over the 27 layers
        without batch norm: the features of different faces start out nearly equal.)"""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def eager_twin(self) -> "Trunk":
        """The same network built from eager layers (pydcr.reference), holding a copy of these weights."""
        from .. import reference

        twin = Trunk(self.width, self.feature_dim, self.input_size, layers=reference)
        twin.load_state_dict(self.state_dict())
        return twin.to(device=self.fc.weight.device, dtype=self.fc.weight.dtype).train(self.training)

    def check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected images N x 3 x H x W, got {shape}")
        check_image_dtype(images)
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"the trunk takes {self.input_size[0]} x {self.input_size[1]} images, got "
                f"{images.shape[-2]} x {images.shape[-1]}: resize or degrade them to the input size first"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        x = normalize(images)
        weight = self.fc.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)  # e.g. float64 images into a float32 model; autocast casts on its own
        return self.fc(self.body(x).flatten(1))


def key_from_v1(key: str) -> str:
    """A state-dict key of the trunk as format version 1 saved it, in today's numbering. Version 1
    held each max-pool as a module of its own in `body` (indices 2, 5, 9 and 16); the pools are
    now fused into the ConvPReLU before them, so later modules moved up."""
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "body":
        index = int(parts[1])
        parts[1] = str(index - sum(1 for pool in _v1_pool_indices() if pool < index))
    return ".".join(parts)


def _v1_pool_indices() -> tuple[int, ...]:
    """Where version 1 put the pools: after the stem's two convs, then after each stage's conv."""
    pools, stage_start = [2], 3 + STEM_UNITS
    for _, units in STAGES:
        pools.append(stage_start + 1)
        stage_start += 2 + units
    return tuple(pools)
