"""What the modules of a run compute in: a check that autocast was in force, not only asked for."""

from contextlib import contextmanager

import torch


@contextmanager
def output_dtypes():
    """The set of dtypes of every module output computed inside the block, filled as they run."""
    seen = set()

    def record(module, args, output):
        if isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()
