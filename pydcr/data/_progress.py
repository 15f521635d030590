"""Progress bars (tqdm), imported only when one is shown."""

from __future__ import annotations

import sys


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=desc, file=sys.stderr)
