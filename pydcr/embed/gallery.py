"""Gallery files: features of many faces in one safetensors file, written chunk by chunk.

Tensors: ``features.<head>`` (n x D, float16 or float32; one per head: ``hr<k>`` for each
branch pair, or ``trunk``), ``index`` (n int64: each row's position in the input list) and
``labels`` (n int64 identity labels, -1 when unknown). Metadata key ``pydcr.gallery``: JSON with
the model's identity, the heads and the settings the features were made with, the rows' paths,
the identity names, the input's fingerprint (and a stamp of its files' sizes and modification
times) and the (path, reason) of each input that could not be embedded.

Writing: the input is cut into chunks of consecutive items; each finished chunk is a small file
in ``OUT.parts/``, and the chunks are concatenated into OUT at the end. A rerun with the same
settings skips the chunks already written, so an interrupted run resumes; batches never cross a
chunk, so the resumed file is bit-identical to an uninterrupted run. :func:`complete_gallery`
finds a finished file that a run with the same settings would write again. A shard (one process of
several) writes the chunks of its contiguous share of the input to its own file;
:func:`merge_shards` joins the shards in input order into the same file a single process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .._files import write_safetensors, write_text
from ..data._progress import progress_bar
from ..data.align import ALIGNMENT_VERSION
from .embedder import TRUNK, Embedder, hr_head
from .identity import model_identity
from .items import ItemSource
from .stream import batch_ranges
from .tables import concat, is_complete, read_header

FORMAT, VERSION, META_KEY = "pydcr.gallery", 1, "pydcr.gallery"
PLAN_FILE = "plan.json"  # in a run's work folder (GALLERY.parts): the settings the chunks were made with
DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Shard:
    """Process `rank` of `world`, taking a contiguous run of whole chunks of the input."""

    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard rank must be in [0, {self.world}), got {self.rank}")

    def chunks(self, count: int) -> range:
        return range(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def path(self, out: Path) -> Path:
        """Where this shard of a gallery `out` is written."""
        return out.with_name(f"{out.stem}.shard{self.rank:03d}-of-{self.world:03d}{out.suffix}")


class Gallery:
    """A gallery file, read lazily: metadata at once, features by slices (memory-mapped)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such gallery file: {self.path}")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                shapes = {}  # (dtype, shape) from the header: features are checked without being read
                for key in f.keys():
                    tensor = f.get_slice(key)
                    shapes[key] = tensor.get_dtype(), tensor.get_shape()
                rows = {k: f.get_tensor(k).numpy() for k in ("index", "labels")
                        if META_KEY in meta and _is_rows(shapes.get(k))}
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{self.path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
        if META_KEY not in meta:
            raise ValueError(f"{self.path} is a safetensors file but not a pydcr gallery")
        try:
            self.meta = json.loads(meta[META_KEY])
        except ValueError:
            raise ValueError(f"{self.path}: its gallery metadata is not valid JSON; {_EDITED}") from None
        if not isinstance(self.meta, dict):
            raise ValueError(f"{self.path}: its gallery metadata is not a JSON object; {_EDITED}")
        version = self.meta.get("version", 0)
        if self.meta.get("format") != FORMAT or not isinstance(version, int) or version > VERSION:
            raise ValueError(f"{self.path}: unsupported gallery format {self.meta.get('format')} "
                             f"version {self.meta.get('version')}")
        self._check(shapes)
        self.index, self.labels = rows["index"], rows["labels"]

    def _check(self, shapes: dict[str, tuple[str, list[int]]]) -> None:
        """ValueError naming the file and the first thing in it that disagrees with the format (a
        hand-edited or damaged file), rather than a KeyError or a wrong match at search time."""
        def corrupt(what: str) -> ValueError:
            return ValueError(f"{self.path}: {what}; {_EDITED}")

        missing = [k for k in ("model", "heads", "paths", "classes", "failures") if k not in self.meta]
        if missing:
            raise corrupt(f"its metadata lacks {', '.join(missing)}")
        if not isinstance(self.meta["model"], str):
            raise corrupt("metadata field model is not a model identity")
        for key in ("heads", "paths", "classes"):
            if not isinstance(self.meta[key], list) or not all(isinstance(v, str) for v in self.meta[key]):
                raise corrupt(f"metadata field {key} is not a list of names")
        failures = self.meta["failures"]
        if not isinstance(failures, list) or not all(isinstance(f, list) and len(f) == 2 for f in failures):
            raise corrupt("metadata field failures is not a list of [path, reason]")
        for name in ("index", "labels"):
            if name not in shapes:
                raise corrupt(f"it holds no {name} tensor")
            if not _is_rows(shapes[name]):
                raise corrupt(f"its {name} tensor is {_shape(shapes[name])}, not one int64 per row")
        n = shapes["index"][1][0]
        if shapes["labels"][1][0] != n:
            raise corrupt(f"it holds {shapes['labels'][1][0]} labels for {n} rows (index)")
        if len(self.meta["paths"]) != n:
            raise corrupt(f"its metadata lists {len(self.meta['paths'])} paths for {n} rows (index)")
        widths = {}
        for head in self.meta["heads"]:
            dtype, shape = shapes.get(f"features.{head}", (None, None))
            if shape is None:
                raise corrupt(f"its metadata lists head {head}, but it holds no features.{head}")
            if dtype not in ("F16", "F32") or len(shape) != 2 or shape[0] != n:
                raise corrupt(f"features.{head} is {_shape((dtype, shape))}, expected float16 or float32 "
                              f"[{n}, width]: a row per index entry")
            if head.startswith("hr"):  # the HR features of a model's pairs: all pairs share one dim
                widths[head] = shape[1]
        if len(set(widths.values())) > 1:
            listed = ", ".join(f"features.{h} {w}" for h, w in widths.items())
            raise corrupt(f"its branch pairs' features differ in width ({listed}): a model's pairs share one dim")
        self.dims = {head: shapes[f"features.{head}"][1][1] for head in self.meta["heads"]}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def heads(self) -> list[str]:
        return list(self.meta["heads"])

    @property
    def paths(self) -> list[str]:
        return self.meta["paths"]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [tuple(f) for f in self.meta["failures"]]

    def identity(self, row: int) -> str:
        label = int(self.labels[row])
        return self.classes[label] if 0 <= label < len(self.classes) else ""

    def features(self, head: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of one head's features, as stored (float16 or float32)."""
        if head not in self.heads:
            raise KeyError(f"{self.path} has features for {self.heads}, not {head}")
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice(f"features.{head}")[start : len(self) if stop is None else stop]


_EDITED = "the gallery file was edited or damaged: embed it again"


def _is_rows(entry: tuple[str, list[int]] | None) -> bool:
    """Whether a header entry (dtype, shape) is an index or labels tensor: int64, one per row."""
    return entry is not None and entry[0] == "I64" and len(entry[1]) == 1


def _shape(entry: tuple[str, list[int]]) -> str:
    dtype, shape = entry
    return f"{dtype} [{', '.join(map(str, shape))}]"


# ----------------------------------------------------------------------------------------------
# Writing


def default_heads(embedder: Embedder) -> list[str]:
    """Every branch pair's HR features (a probe is matched through its nearest pair), or the trunk's."""
    resolutions = embedder.model.resolutions
    return [hr_head(k) for k in resolutions] if resolutions else [TRUNK]


def embed_gallery(
    embedder: Embedder,
    source: ItemSource,
    out: str | os.PathLike,
    *,
    heads: Sequence[str] | None = None,
    dtype: str = "float16",
    chunk_size: int = 4096,
    shard: Shard | None = None,
    flip: bool = False,
    description: dict | None = None,
    resume: bool = True,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    allow_empty: bool = True,
) -> Path:
    """Embed `source` into the gallery file `out` (or, for a shard, into ``shard.path(out)``).

    heads: default every pair's HR branch (or the trunk for a model without pairs). chunk_size:
    input items per chunk, the unit of resuming. description: JSON-able facts kept in the metadata
    as `about` for the reader only (e.g. the input's path): a resume, a rerun of a finished run
    and a merge do not compare them, so the same input reached by another path still goes
    together. on_chunk(c) is called after chunk c is safely written. Without `allow_empty`, a run
    that embeds no face raises :class:`NothingEmbedded` (holding the skipped inputs and why) and
    leaves a file already at the target as it was.
    Returns the path written.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    target, heads, meta, chunks = _plan(embedder, source, out, heads, dtype, chunk_size, shard, flip)
    stamp = _files_stamp(source)  # before the run: a file changed during it makes the next run embed again
    n = len(source)
    plan = {**meta, "shard": [shard.rank, shard.world] if shard else None}
    work = _work_folder(target, plan, resume)
    done = {c for c in chunks if is_complete(_chunk_path(work, c))}  # a damaged chunk is embedded again
    first = chunks.start * chunk_size
    stop = min(chunks.stop * chunk_size, n)
    initial = sum(min((c + 1) * chunk_size, n) - c * chunk_size for c in done)
    bar = progress_bar(max(0, stop - first), initial, "embed", progress)
    for c in chunks:
        if c in done:
            continue
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, n)
        _write_chunk(embedder, source, heads, dtype, flip, lo, hi, _chunk_path(work, c), bar)
        if on_chunk is not None:
            on_chunk(c)
    bar.close()
    parts = [_chunk_path(work, c) for c in chunks]
    if not parts:  # more shards than chunks: this one holds no rows, but still a valid file
        parts = [work / "empty.safetensors"]
        _write_chunk(embedder, source, heads, dtype, flip, n, n, parts[0], bar)
    joined = _joined_meta(parts)
    if not allow_empty and not joined["paths"]:
        _remove_work_folder(work)
        raise NothingEmbedded(target, [tuple(f) for f in joined["failures"]])
    final = {**_finished_meta(meta, shard, chunks, stamp), "about": description or {}, **joined}
    concat(parts, target, {META_KEY: json.dumps(final)})
    _remove_work_folder(work)
    return target


class NothingEmbedded(ValueError):
    """An embedding run in which every input was skipped; `skipped` holds (path, reason) for each."""

    def __init__(self, out: Path, skipped: list[tuple[str, str]]) -> None:
        super().__init__(f"no face could be embedded: every one of {len(skipped)} inputs was skipped; {out} "
                         "not written")
        self.skipped = skipped


def complete_gallery(
    embedder: Embedder,
    source: ItemSource,
    out: str | os.PathLike,
    *,
    heads: Sequence[str] | None = None,
    dtype: str = "float16",
    chunk_size: int = 4096,
    shard: Shard | None = None,
    flip: bool = False,
    description: dict | None = None,
) -> Gallery | None:
    """The gallery file that :func:`embed_gallery` with these arguments would write (for a shard,
    ``shard.path(out)``), when it exists and is finished: made by the same model, with the same
    heads and settings (dtype, flip, chunk and batch size, amp), from the same input (items,
    labels, landmarks, detector) whose files have not changed since (sizes and modification
    times). Else None, also for inputs that are not files (arrays, tensors), which have no stamp.
    description is taken as embed_gallery takes it, and not compared."""
    target, heads, meta, chunks = _plan(embedder, source, out, heads, dtype, chunk_size, shard, flip)
    if not target.is_file():
        return None
    try:
        gallery = Gallery(target)
    except ValueError:  # not a gallery, or damaged: not finished
        return None
    stamp = _files_stamp(source)
    if stamp is None:
        return None
    want = json.loads(json.dumps(_finished_meta(meta, shard, chunks, stamp)))
    return gallery if _compared(gallery.meta) == _compared(want) else None


def _plan(embedder: Embedder, source: ItemSource, out, heads, dtype, chunk_size, shard, flip):
    """What a run with these arguments writes: (the file, its heads, its metadata less rows and
    files' stamp, this process's range of chunks)."""
    heads = list(heads) if heads else default_heads(embedder)
    target = shard.path(Path(out)) if shard else Path(out)
    meta = _gallery_meta(embedder, source, heads, dtype, flip, chunk_size)
    count = max(1, -(-len(source) // chunk_size))
    return target, heads, meta, shard.chunks(count) if shard else range(count)


def _finished_meta(meta: dict, shard: Shard | None, chunks: range, stamp: str | None) -> dict:
    """A finished file's metadata less its rows (paths, failures). The input files' stamp is here
    only, not in the resume plan nor in what shards must share: a file touched between an
    interruption and the resume, or shards read from copies of the data, still go together."""
    meta = {**meta, "input": {**meta["input"], "files": stamp}}
    if shard is None:
        return meta
    return {**meta, "shard": {"rank": shard.rank, "world": shard.world, "chunks": [chunks.start, chunks.stop]}}


def _files_stamp(source: ItemSource) -> str | None:
    """A digest of the size and modification time of each file the input is read from; None for
    inputs held in memory."""
    files = source.files()
    if files is None:
        return None
    h = hashlib.sha256()
    for path in files:
        try:
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
        except OSError:  # missing: listed as a failure; a file that appears later changes the stamp
            h.update(b"-\0")
    return h.hexdigest()


def _gallery_meta(embedder: Embedder, source: ItemSource, heads, dtype, flip, chunk_size) -> dict:
    h = hashlib.sha256()
    for name in source.names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")  # a file name need not be UTF-8
    if source.labels is not None:
        h.update(np.ascontiguousarray(source.labels, np.int64).tobytes())
    for i in range(len(source)):  # how each item is aligned decides its features too
        points = source.landmarks_of(i)
        h.update(b"-" if points is None else np.asarray(points, np.float32).tobytes())
    h.update(f"detector:{type(source.detector).__name__ if source.detector is not None else None}".encode())
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_identity(embedder.model),
        "heads": heads,
        "dtype": dtype,
        "flip": bool(flip),
        "amp": bool(embedder.amp),
        "batch_size": embedder.batch_size,  # batches never cross a chunk: the two decide each feature's bits
        "chunk_size": chunk_size,
        "crop_size": list(embedder.crop_size),
        "alignment": ALIGNMENT_VERSION,  # the crops of images aligned here: a resume never mixes two
        "input": {"count": len(source), "fingerprint": h.hexdigest()},
        "classes": source.classes,
    }


def work_folder(target: str | os.PathLike) -> Path:
    """Where a run writing the gallery `target` keeps its finished chunks; a ValueError when a folder
    of that name holds files but no plan: a run did not make it, and starting over would delete it."""
    target = Path(target)
    work = target.with_name(target.name + ".parts")
    if work.is_dir() and not (work / PLAN_FILE).is_file() and any(work.iterdir()):
        raise ValueError(f"{work} exists and is not the work folder of a gallery run (it holds no "
                         f"{PLAN_FILE}): move it away or write {target.name} under another name")
    return work


def _work_folder(target: Path, plan: dict, resume: bool) -> Path:
    work = work_folder(target)
    plan_file = work / PLAN_FILE
    text = json.dumps(plan, sort_keys=True)
    if work.is_dir():
        same = plan_file.is_file() and _compared(_read_json(plan_file)) == _compared(json.loads(text))
        if resume and same:
            return work
        if resume and plan_file.is_file():
            print(f"pydcr embed: {work} holds a run with other settings; starting over", file=sys.stderr)
        _remove_work_folder(work)
    work.mkdir(parents=True)
    write_text(plan_file, text)
    return work


def _remove_work_folder(work: Path) -> None:
    """Delete a run's work folder (flat: chunks and the plan), the plan last, so that a deletion cut
    short leaves a folder still known as a run's."""
    for path in work.iterdir():
        if path.name != PLAN_FILE:
            path.unlink()
    (work / PLAN_FILE).unlink(missing_ok=True)
    work.rmdir()


def _chunk_path(work: Path, chunk: int) -> Path:
    return work / f"chunk-{chunk:08d}.safetensors"


def _write_chunk(embedder, source, heads, dtype, flip, lo, hi, path, bar) -> None:
    features = {h: [] for h in heads}
    index, failures = [], []
    for b in embedder.stream(source, heads, ranges=batch_ranges(lo, hi, embedder.batch_size), flip=flip):
        if len(b.index):
            for h in heads:
                features[h].append(b.features[h].to(DTYPES[dtype]))
            index.append(b.index)
        failures += [(source.names[i], reason) for i, reason in b.failures]
        bar.update(b.size)
    rows = np.concatenate(index) if index else np.zeros(0, np.int64)
    labels = source.labels[rows] if source.labels is not None else np.full(len(rows), -1, np.int64)
    dims = {h: embedder.head_dim(h) for h in heads}
    tensors = {f"features.{h}": torch.cat(f) if f else torch.zeros(0, dims[h], dtype=DTYPES[dtype])
               for h, f in features.items()}
    tensors["index"] = torch.from_numpy(rows.astype(np.int64))
    tensors["labels"] = torch.from_numpy(np.asarray(labels, np.int64))
    meta = {"paths": [source.names[i] for i in rows], "failures": failures}
    write_safetensors(tensors, path, {META_KEY: json.dumps(meta)})  # atomic: a crash leaves no half chunk


def _joined_meta(parts: Sequence[Path]) -> dict:
    paths, failures = [], []
    for p in parts:
        meta = json.loads(read_header(p)[1][META_KEY])
        paths += meta["paths"]
        failures += meta["failures"]
    return {"paths": paths, "failures": failures}


def merge_shards(shards: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join the shard files of one run, in input order, into the gallery `out`."""
    galleries = [Gallery(p) for p in shards]
    if not galleries:
        raise ValueError("no shard files to merge")
    for g in galleries:
        if "shard" not in g.meta:
            raise ValueError(f"{g.path} is a whole gallery, not a shard")
    world = galleries[0].meta["shard"]["world"]
    common = _without_rows(galleries[0].meta)
    for g in galleries[1:]:
        if _without_rows(g.meta) != common or g.meta["shard"]["world"] != world:
            raise ValueError(f"{g.path} and {galleries[0].path} come from different runs (model, input or settings)")
    ranks = sorted(g.meta["shard"]["rank"] for g in galleries)
    if ranks != list(range(world)):
        raise ValueError(f"a run of {world} shards needs ranks 0..{world - 1} once each, got {ranks}")
    galleries.sort(key=lambda g: g.meta["shard"]["rank"])
    paths = [p for g in galleries for p in g.paths]
    failures = [f for g in galleries for f in g.meta["failures"]]
    # the stamp of rank 0's input files: shards may have read copies of the data
    stamped = {**common["input"], "files": galleries[0].meta["input"].get("files")} if "input" in common else None
    final = {**common, **({"input": stamped} if stamped else {}), "about": galleries[0].meta.get("about", {}),
             "paths": paths, "failures": failures}
    out = Path(out)
    concat([g.path for g in galleries], out, {META_KEY: json.dumps(final)})
    return out


def _without_rows(meta: dict) -> dict:
    """What the shards of one run share: all but their rows, their place, their input files' stamp
    and the facts about where they read it."""
    shared = {k: v for k, v in _compared(meta).items() if k != "shard"}
    if "input" in shared:
        shared["input"] = {k: v for k, v in shared["input"].items() if k != "files"}
    return shared


def _compared(meta: dict | None) -> dict | None:
    """What decides whether two runs' files go together: the metadata less its rows and the facts
    for the reader (`about`; files of earlier versions kept them in `input`, which now holds only
    the count, the fingerprint and the files' stamp)."""
    if not isinstance(meta, dict):
        return None
    kept = {k: v for k, v in meta.items() if k not in ("paths", "failures", "about")}
    if isinstance(kept.get("input"), dict):
        kept["input"] = {k: v for k, v in kept["input"].items() if k in ("count", "fingerprint", "files")}
    return kept


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
