"""Saving and loading DCR models: safetensors weights with the model's JSON config in the header."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .._files import write_safetensors
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
    Weights with NaN or infinite values (a diverged run) are refused, as load() would refuse them.
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
    check_weights(tensors, f"cannot save {path}")  # load() would refuse the file
    if path.is_dir():
        raise IsADirectoryError(f"cannot save a model to {path}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, path, metadata)  # never a half-written model under the real name
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
    _check_fields(path, config)
    if config.get("format_version", 1) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer pydcr (format version {config['format_version']})")
    return config


def _check_fields(path: Path, config: dict) -> None:
    """ValueError naming the file and the first malformed field of its config."""
    missing = [k for k in ("width", "feature_dim", "input_size", "degrade", "branches") if k not in config]
    if missing:
        raise ValueError(f"{path}: its pydcr config lacks {', '.join(missing)}")

    def require(field, value, ok, want):
        if not ok:
            raise ValueError(f"{path}: config field {field} must be {want}, got {value!r}")

    def count(v, least=1):  # a JSON int: not a bool, not a float
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    version, width, dim = config.get("format_version", 1), config["width"], config["feature_dim"]
    require("format_version", version, count(version), "a positive int")
    require("width", width, isinstance(width, (int, float)) and not isinstance(width, bool)
            and 0 < width < float("inf"), "a positive number")
    require("feature_dim", dim, count(dim), "a positive int")
    size = config["input_size"]
    require("input_size", size, isinstance(size, list) and len(size) == 2 and all(map(count, size)),
            "[height, width] in pixels")
    require("degrade", config["degrade"], config["degrade"] in ("antialias", "plain"), "'antialias' or 'plain'")
    branches = config["branches"]
    require("branches", branches, isinstance(branches, dict), "an object {resolution: branch spec}")
    for key, spec in branches.items():
        field = f"branches.{key}"
        require("branches", key, key.isdigit() and int(key) > 0, "keyed by positive int resolutions")
        require(field, spec, isinstance(spec, dict) and "num_classes" in spec
                and set(spec) <= {"num_classes", "in_dim", "dim"}, "an object of num_classes, in_dim and dim")
        for name, value in spec.items():
            least = 0 if name == "num_classes" else 1  # 0 classes: a deployed pair
            require(f"{field}.{name}", value, count(value, least), f"an int >= {least}")
        require(f"{field}.in_dim", spec.get("in_dim", 512), spec.get("in_dim", 512) == dim,
                f"the config's feature_dim ({dim})")


def check_weights(tensors: dict[str, torch.Tensor], where: str) -> torch.dtype | None:
    """The one floating point type of a model's weights; a ValueError naming the first weight of
    another type, or with NaN or infinite values (a diverged run's)."""
    dtypes = Counter(value.dtype for value in tensors.values())
    dtype = dtypes.most_common(1)[0][0] if dtypes else None
    for key, value in tensors.items():
        if not value.is_floating_point() or value.dtype != dtype:
            raise ValueError(f"{where}: weight {key} is {value.dtype}; a model's weights are all of one "
                             f"floating point type (most of them are {dtype})")
    for key, value in tensors.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"{where}: weight {key} holds NaN or infinite values")
    return dtype


def build(config: dict) -> DCR:
    trunk = Trunk(width=config["width"], feature_dim=config["feature_dim"], input_size=config["input_size"])
    branches = {int(k): BranchPair(**spec) for k, spec in config["branches"].items()}
    model = DCR(trunk, branches, antialias=config["degrade"] == "antialias")
    model.provenance = dict(config.get("provenance", {}))
    return model


def load(path: str | os.PathLike, map_location: str | torch.device | None = None) -> DCR:
    """Rebuild the model saved at `path`, with its weights in the dtype they were saved in, on
    `map_location` (default CPU)."""
    config = read_config(path)
    try:
        # On the meta device first: an edited config (width 1000, say) allocates nothing before
        # the weights' shapes, read from the header, show that it does not describe them.
        with torch.device("meta"):
            expected = build(config).state_dict()
    except ValueError as err:  # e.g. an input_size too small for the trunk
        raise ValueError(f"{path}: its pydcr config does not describe a model: {err}") from None
    v1 = config.get("format_version", 1) < 2
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {_from_v1(key) if v1 else key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the weights (truncated or corrupt?): {err}") from None
    missing, unexpected = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing: {missing}, unexpected: {unexpected})")
    # load_state_dict would raise without the path on a wrong shape, and cast a wrong dtype silently.
    for key, shape in shapes.items():
        if shape != tuple(expected[key].shape):
            raise ValueError(f"{path}: weight {key} is {shape}, its config makes it "
                             f"{tuple(expected[key].shape)}: was the file or its config edited?")
    model = build(config)
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[_from_v1(key) if v1 else key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the weights (truncated or corrupt?): {err}") from None
    dtype = check_weights(tensors, str(path))
    if dtype is not None:
        model.to(dtype)  # the dtype it was saved in, float64 or float16 included
    model.load_state_dict(tensors)
    return model.to(map_location) if map_location is not None else model


def _from_v1(key: str) -> str:
    prefix = "trunk."
    return prefix + key_from_v1(key[len(prefix):]) if key.startswith(prefix) else key
