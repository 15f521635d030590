"""Saving and loading DCR models: safetensors weights with the model's JSON config in the header."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .branch import BranchPair
from .dcr import DCR
from .trunk import Trunk, key_from_v1

FORMAT = "pydcr.dcr"
#: 2: the trunk's max-pools are fused into the ConvPReLU before them (their modules are gone
#: from `trunk.body`); version 1 files load with their keys renumbered.
FORMAT_VERSION = 2
ARCHITECTURE = "face-resnet-27"


def config_of(model: DCR) -> dict:
    """The JSON-able description that rebuilds `model`'s architecture."""
    t = model.trunk
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "width": t.width,
        "feature_dim": t.feature_dim,
        "input_size": list(t.input_size),
        "degrade": "antialias" if model.antialias else "plain",
        "branches": {
            str(k): {"num_classes": p.num_classes, "in_dim": p.in_dim, "dim": p.dim}
            for k, p in ((k, model.branch(k)) for k in model.resolutions)
        },
        "provenance": dict(getattr(model, "provenance", {}) or {}),
    }


def save(model: DCR | Trunk, path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write `model` (a DCR, or a bare Trunk) to one .safetensors file and return its path.

    provenance (data, epochs, command, ...) is merged into model.provenance and stored with it.
    """
    if isinstance(model, Trunk):
        model = DCR(model)
    if not isinstance(model, DCR):
        raise TypeError(f"save() takes a pydcr DCR or Trunk, got {type(model).__name__}")
    config = config_of(model)
    config["provenance"].update(provenance or {})
    try:
        metadata = {"pydcr": json.dumps(config)}
    except TypeError as err:
        raise TypeError(f"provenance must hold JSON values (str, number, bool, list, dict): {err}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save a model to {path}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # never leave a half-written model under the real name
    model.provenance = config["provenance"]  # only once saved: a failed save changes nothing
    return path


def read_config(path: str | os.PathLike) -> dict:
    """The config stored in a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    if "pydcr" not in meta:
        raise ValueError(f"{path} is a safetensors file but not a pydcr model (no pydcr config in its header)")
    try:
        config = json.loads(meta["pydcr"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its pydcr config is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its pydcr config is not a JSON object")
    if config.get("format") != FORMAT or config.get("architecture") != ARCHITECTURE:
        raise ValueError(
            f"{path} holds a {config.get('format')} / {config.get('architecture')} model; this pydcr reads "
            f"{FORMAT} / {ARCHITECTURE}"
        )
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer pydcr (format version {config['format_version']})")
    missing = [k for k in ("width", "feature_dim", "input_size", "degrade", "branches") if k not in config]
    if missing:
        raise ValueError(f"{path}: its pydcr config lacks {', '.join(missing)}")
    return config


def build(config: dict) -> DCR:
    trunk = Trunk(width=config["width"], feature_dim=config["feature_dim"], input_size=config["input_size"])
    branches = {int(k): BranchPair(**spec) for k, spec in config["branches"].items()}
    model = DCR(trunk, branches, antialias=config["degrade"] == "antialias")
    model.provenance = dict(config.get("provenance", {}))
    return model


def load(path: str | os.PathLike, map_location: str | torch.device | None = None) -> DCR:
    """Rebuild the model saved at `path`, with its weights, on `map_location` (default CPU)."""
    config = read_config(path)
    model = build(config)
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the weights (truncated or corrupt?): {err}") from None
    if int(config.get("format_version", 1)) < 2:
        tensors = {_from_v1(key): value for key, value in tensors.items()}
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: weight {key} holds NaN or infinite values")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing: {missing}, unexpected: {unexpected})")
    return model.to(map_location) if map_location is not None else model


def _from_v1(key: str) -> str:
    prefix = "trunk."
    return prefix + key_from_v1(key[len(prefix):]) if key.startswith(prefix) else key
