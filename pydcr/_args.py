"""Argument normalisation shared by the ops and their references."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Size2 = int | Sequence[int]


def pair(name: str, value: Size2) -> list[int]:
    """An int or an (h, w) pair of ints, as a list of two ints."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return [int(v) for v in value]
    raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
