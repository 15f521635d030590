"""Checkpoints that let an interrupted run resume where it stopped, and a stop flag for signals."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from .._files import atomic_write, naming_write_errors


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a run killed mid-write keeps its previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # through a Python file: torch.save to a name reports a full disk as "unexpected pos"
    with atomic_write(path) as tmp, naming_write_errors(path), open(tmp, "wb") as f:
        torch.save(state, f)


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be read (a truncated file, say): an unusable input, not a bug."""


class OtherRunError(ValueError):
    """A checkpoint of a run with other settings than the one asked to resume it."""


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated file: say which, don't start over silently
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]  # one line: torch's may run on
        raise CorruptCheckpointError(f"cannot read checkpoint {path} ({reason}); delete it to start the run "
                                     "afresh") from err


def check_same_run(out_dir: Path, saved: dict, wanted: dict) -> None:
    """An OtherRunError naming the settings that differ between a checkpoint's run (`saved`)
    and the one asked to resume it (`wanted`): resuming would train another run's weights on, or not fit them."""
    differ = [f"{key} {_plain(saved[key])} vs {_plain(value)}" for key, value in wanted.items()
              if key in saved and _plain(saved[key]) != _plain(value)]  # a key older checkpoints lack: no say
    if differ:
        raise OtherRunError(f"{out_dir} holds a run with other settings ({', '.join(differ)}); use another --out "
                            "or delete it")


def _plain(value):
    """Tuples as lists: a setting reads the same however it was stored."""
    return list(value) if isinstance(value, tuple) else value


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
