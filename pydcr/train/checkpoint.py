"""Checkpoints that let an interrupted run resume where it stopped, and a stop flag for signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a run killed mid-write keeps its previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated file: say which, don't start over silently
        raise RuntimeError(f"cannot read checkpoint {path} ({err}); delete it to start the run afresh") from err


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag the training loop checks after each step.

    The loop then saves a checkpoint and returns; a second signal stops at once.
    """

    def __init__(self):
        self.stop = False
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
