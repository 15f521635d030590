"""Per-epoch training figures: JSON lines, and TensorBoard events when asked for."""

from __future__ import annotations

import json
from pathlib import Path


def summary_writer_class():
    """torch's TensorBoard SummaryWriter, or an ImportError that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard logging needs the tensorboard package: "
                          "pip install 'pydcr[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def _epoch(line: str) -> float:
    """The epoch a line logs; infinity (dropped) for a blank line or one cut off by a kill mid-write."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class MetricsLog:
    """Appends one JSON line per epoch to out_dir/metrics.jsonl and, with ``tensorboard=True``, writes
    the same figures as TensorBoard scalars under out_dir/tensorboard (global step = epoch), so that
    ``tensorboard --logdir RUN_DIR`` follows a run. A resumed run appends to both; ``after_epoch``
    (the epochs its checkpoint holds) first drops the lines of later epochs, written by a run
    stopped before it could checkpoint them, which it trains again, and any line a kill cut off. A
    disabled log (the processes other than rank 0 of a distributed run) writes nothing."""

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = False, enabled: bool = True,
                 after_epoch: int | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if enabled and after_epoch is not None and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if _epoch(line) <= after_epoch]
            if len(kept) != len(lines):
                self.path.write_text("".join(kept))
        if tensorboard and enabled:
            self._writer = summary_writer_class()(str(Path(out_dir) / "tensorboard"))

    def write(self, metrics: dict[str, float]) -> None:
        """One epoch's figures; metrics["epoch"] (1-based) is the step they are plotted at."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._writer is not None:
            for name, value in metrics.items():
                if name != "epoch":
                    self._writer.add_scalar(f"trunk/{name}", value, metrics["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
