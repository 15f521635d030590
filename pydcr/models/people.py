"""The people a model trained on, kept in its provenance without their names.

A model file travels; the names of the people it was trained on should not travel with it as a
list. The provenance keeps a salted digest of each name instead (``people``: the salt and the
digests), which is enough to tell whether a given person is among them (`pydcr eval lfw` warns
when the pairs it evaluates hold people the model trained on) but does not list them. It hides
nothing from whoever can guess the names: with a list of candidates, each can be tested.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

__all__ = ["people_record", "trained_on"]


def _digest(salt: str, name: str) -> str:
    # surrogateescape: a name read from a folder whose name is not UTF-8 keeps its raw bytes
    return hashlib.sha256(f"{salt}\0{name}".encode("utf-8", "surrogateescape")).hexdigest()[:24]


def people_record(names: Iterable[str], earlier: dict | None = None) -> dict:
    """The provenance entry for training on `names`, added to an `earlier` entry (its salt kept)."""
    salt = earlier["salt"] if earlier else secrets.token_hex(8)
    digests = set(earlier["digests"]) if earlier else set()
    digests.update(_digest(salt, str(name)) for name in names)
    return {"salt": salt, "digests": sorted(digests)}


def trained_on(provenance: dict | None, names: Iterable[str]) -> list[str]:
    """Those of `names` the provenance records the model trained on, sorted; [] when it records none."""
    record = (provenance or {}).get("people")
    if not record:
        return []
    digests = set(record["digests"])
    return sorted({name for name in names if _digest(record["salt"], name) in digests})
