"""A progress bar for training loops (tqdm), silent when disabled."""

from __future__ import annotations

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total: int, desc: str, *, enabled: bool = True, initial: int = 0):
        self._bar = tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True)

    def update(self, **metrics) -> None:
        self._bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
        self._bar.update(1)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
