"""A progress bar for training loops (tqdm), silent when disabled."""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

from tqdm.auto import tqdm


class Progress:
    """tqdm with figures beside the count. The figures come from a function, called at most every
    `interval` seconds: reading a CUDA tensor waits for the GPU, and a wait at every step would
    leave the GPU idle while the host queues the next step's kernels."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, initial: int = 0, interval: float = 0.5):
        self._bar = tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True)
        self._interval = interval
        self._shown = float("-inf")

    def update(self, metrics: Callable[[], dict[str, float]] | None = None) -> None:
        """One step done; `metrics` gives the figures to show (not called while the bar is disabled)."""
        self._bar.update(1)
        if metrics is None or self._bar.disable:
            return
        now = monotonic()
        if now - self._shown >= self._interval:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in metrics().items()}, refresh=False)
            self._shown = now

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
