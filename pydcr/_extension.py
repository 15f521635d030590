"""Loads the compiled extension and reports how it was built.

``pydcr._C`` holds the op schemas and CPU kernels and loads under any torch from the stable-ABI
target on; ``pydcr._C_cuda`` holds the CUDA kernels and is loaded only under a CUDA build of torch.
A load failure is turned into an ImportError that says what the build needs and how to rebuild.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

try:
    from . import _build_config
except ImportError:  # a source tree that was never built
    _build_config = None

_REBUILD = (
    "Rebuild pydcr against the installed torch: from the pydcr source folder run "
    "`pip install --no-build-isolation --force-reinstall --no-deps .`"
)


def _torch_release(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _load(module: str):
    built = getattr(_build_config, "TORCH_VERSION", "an unknown torch")
    target = getattr(_build_config, "TORCH_TARGET", None)
    if target is not None and _torch_release(torch.__version__) < _torch_release(target):
        raise ImportError(
            f"pydcr was built against torch {built} for torch >= {target}, but torch {torch.__version__} "
            f"is running. Upgrade torch to {target} or newer. {_REBUILD}"
        )
    try:
        return importlib.import_module(f"pydcr.{module}")
    except ModuleNotFoundError as err:
        if err.name != f"pydcr.{module}":
            raise
        raise ImportError(
            f"pydcr.{module} is not built: this pydcr was imported from {Path(__file__).parent}, which has no "
            "compiled extension. Install pydcr (`pip install .`) and import it from outside the source folder, "
            "or use an editable install (`pip install --no-build-isolation -e .`)."
        ) from err
    except (ImportError, OSError) as err:
        raise ImportError(
            f"pydcr's compiled extension pydcr.{module} cannot be loaded by torch {torch.__version__} "
            f"(it was built against torch {built}, stable ABI target {target}): {err}. {_REBUILD}"
        ) from err


_C = _load("_C")
_BUILD = _C.build_info()
_C_cuda = _load("_C_cuda") if (_BUILD["cuda"] and torch.version.cuda) else None


def build_info() -> dict:
    """How pydcr was built, and what it runs with.

    Keys: ``version``, ``torch`` and ``torch_built`` (both: torch compiled against), ``torch_running``,
    ``torch_abi_target`` (oldest torch the stable ABI build loads under), ``cuda`` (CUDA kernels
    compiled), ``cuda_version``, ``cuda_archs``, ``cuda_loaded`` (CUDA kernels registered in this
    process), ``cuda_available`` (a GPU is usable now), ``openmp`` (torch's intra-op thread pool,
    which the CPU kernels run on, is OpenMP), ``cpu_threads`` and ``compiler``.
    """
    info = dict(_BUILD)
    info["torch"] = info["torch_built"]  # the name the build contract gives it
    info["torch_running"] = torch.__version__
    info["cuda_loaded"] = _C_cuda is not None
    info["cuda_available"] = torch.cuda.is_available()
    info["openmp"] = torch.backends.openmp.is_available()
    info["cpu_threads"] = torch.get_num_threads()
    return info
