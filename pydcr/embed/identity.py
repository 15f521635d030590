"""A model's identity: a digest of its architecture config and every weight, so a gallery can be
checked against the model that embeds its probes."""

from __future__ import annotations

import hashlib
import json

import torch

from ..models import DCR
from ..models.serialization import config_of


def model_identity(model: DCR) -> str:
    """sha256 over the config (without provenance, which does not change features) and the weights."""
    config = {k: v for k, v in config_of(model).items() if k != "provenance"}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu", memory_format=torch.contiguous_format).contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
