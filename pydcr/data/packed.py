"""Packed faces: the aligned crops of a dataset in one memory-mapped file, checked on every read.

Layout (little-endian)::

    header   b"PYDCRPK1", u32 n, n bytes of JSON (the packing settings and a fingerprint of the plan)
    records  one per source image, in dataset order:
             b"REC1", u32 status (0 packed, 1 skipped), u64 item, u64 n, u32 crc32, 10 x f32 landmarks,
             u32 0, then n payload bytes (the encoded crop, or why the image was skipped, UTF-8)
    index    an uncompressed .npz: offsets, lengths, crc32s, labels, landmarks of the packed records,
             and a JSON block (settings, identity names, source paths, skipped images)
    footer   b"PYDCRIX1", u64 index offset, u64 index length, u32 crc32 of the index, u32 0

Records are written in order to ``OUT.partial``; an interrupted pack resumes after its last whole
record, and the file is renamed to OUT only once the index and footer are written. A file without
a valid footer (truncated, or not a pack) is refused when opened; a record whose bytes do not match
its checksum raises :class:`CorruptPackError` naming the record and its source image.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .._files import naming_write_errors
from ._progress import progress_bar
from .align import ALIGNMENT_VERSION, align
from .datasets import FaceDataset, identity_names

MAGIC, RECORD_MAGIC, FOOTER_MAGIC = b"PYDCRPK1", b"REC1", b"PYDCRIX1"
RECORD = struct.Struct("<4sIQQI10fI")
FOOTER = struct.Struct("<8sQQII")
FORMATS = ("jpeg", "png", "raw")
PACKED, SKIPPED = 0, 1


class CorruptPackError(ValueError):
    """A pack file that is truncated, damaged or not a pack at all."""


@dataclass(frozen=True)
class PackSettings:
    format: str = "jpeg"
    quality: int = 90  # JPEG quality; LFW packs to about 50 MB at 112 x 96
    size: tuple[int, int] = (112, 96)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0 <= self.quality <= 100:
            raise ValueError(f"quality must be in [0, 100], got {self.quality}")


# ----------------------------------------------------------------------------------------------
# Writing


def pack(
    dataset: FaceDataset,
    out: str | os.PathLike,
    *,
    format: str = "jpeg",
    quality: int = 90,
    workers: int | None = None,
    detector=None,
    resume: bool = True,
    progress: bool = True,
    allow_empty: bool = True,
) -> Path:
    """Align every image of `dataset` and write the crops to one pack file at `out`.

    Crops are dataset.size, encoded as JPEG (at `quality`), PNG or raw uint8 pixels. Images without
    landmarks are detected with `detector` (a :class:`pydcr.data.MTCNN`; its face nearest the image
    centre) when given, else skipped; unreadable images and images without a face are skipped too,
    and listed in the pack with the reason. `workers` threads decode, align and encode (default: one
    per CPU core). With `resume`, an earlier interrupted run on the same plan is continued.
    Without `allow_empty`, a run that packs no face raises :class:`NothingPacked` (holding the
    skipped images and why) and leaves a file already at `out` as it was.
    """
    settings = PackSettings(format, int(quality), dataset.size)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    fingerprint = plan_fingerprint(dataset, settings, detector is not None)
    done = _resume_point(partial, fingerprint) if resume else None
    # a full disk names the file; the partial pack stays, for a rerun to resume
    with naming_write_errors(partial), open(partial, "r+b" if done is not None else "w+b") as f:
        if done is None:
            _write_header(f, settings, fingerprint)
            done = []
        f.seek(0, os.SEEK_END)
        work = _ItemPacker(dataset, settings, detector)
        bar = progress_bar(len(dataset), len(done), "pack", progress)
        for result in _ordered(work, range(len(done), len(dataset)), workers):
            done.append(_write_record(f, *result))
            bar.update(1)
        bar.close()
        if not allow_empty and all(r.status != PACKED for r in done):
            nothing = NothingPacked(out, [(dataset.paths[r.item], _reason(f, r)) for r in done])
        else:
            nothing = None
            _write_index(f, dataset, settings, done)
            f.flush()
            os.fsync(f.fileno())
    if nothing is not None:
        partial.unlink()
        raise nothing
    os.replace(partial, out)
    return out


class NothingPacked(ValueError):
    """A pack run in which every image was skipped; `skipped` holds (path, reason) for each."""

    def __init__(self, out: Path, skipped: list[tuple[str, str]]) -> None:
        super().__init__(f"no face could be packed: every one of {len(skipped)} images was skipped; {out} not written")
        self.skipped = skipped


def plan_fingerprint(dataset: FaceDataset, settings: PackSettings, detect: bool = False) -> str:
    """A digest of everything that decides a pack's bytes, so a resume never mixes two plans (the
    alignment's version and whether a detector finds unlisted faces included: a pack begun
    otherwise starts over)."""
    h = hashlib.sha256(json.dumps([settings.format, settings.quality, list(settings.size), dataset.classes,
                                   ALIGNMENT_VERSION, bool(detect)]).encode())
    for path, label in zip(dataset.paths, dataset.labels.tolist()):
        h.update(f"{path}\0{label}\0".encode("utf-8", "surrogateescape"))  # file names need not be UTF-8
    if dataset.landmarks is not None:
        for path in dataset.paths:
            points = dataset.landmarks.get(path)
            h.update(b"-" if points is None else np.asarray(points, np.float32).tobytes())
    return h.hexdigest()


@dataclass
class _Record:
    status: int
    item: int
    offset: int  # of the payload
    length: int
    crc: int
    landmarks: np.ndarray


class _ItemPacker:
    """Read, locate, align and encode one dataset item (thread-safe; the detector runs one at a time)."""

    def __init__(self, dataset: FaceDataset, settings: PackSettings, detector) -> None:
        self.dataset, self.settings, self.detector = dataset, settings, detector
        self.lock = threading.Lock()

    def __call__(self, item: int) -> tuple[int, int, bytes, np.ndarray]:
        nan = np.full((5, 2), np.nan, np.float32)
        try:
            image = self.dataset.image(item)
        except (OSError, ValueError) as err:
            return SKIPPED, item, f"unreadable: {err}".encode("utf-8", "backslashreplace"), nan
        points = self.dataset.landmarks_of(item)
        if points is None:
            if self.detector is None:
                return SKIPPED, item, b"no landmarks", nan
            points = self._detect(image)
            if points is None:
                return SKIPPED, item, b"no face found", nan
        try:
            crop = align(image, points, self.settings.size)
        except ValueError as err:  # degenerate landmarks: skipped and listed, as an unreadable image is
            return SKIPPED, item, f"bad landmarks: {err}".encode("utf-8", "backslashreplace"), nan
        return PACKED, item, encode(crop, self.settings), np.asarray(points, np.float32)

    def _detect(self, image: np.ndarray) -> np.ndarray | None:
        from .mtcnn import central_face

        with self.lock:
            boxes, _, points = self.detector.detect(image)
        face = central_face(boxes, image.shape)
        return None if face is None else points[face]


def encode(crop: np.ndarray, settings: PackSettings) -> bytes:
    """The payload of an h x w x 3 RGB crop."""
    if settings.format == "raw":
        return np.ascontiguousarray(crop).tobytes()
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, settings.quality]) if settings.format == "jpeg" else (".png", [])
    ok, data = cv2.imencode(ext, bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {settings.format} crop")
    return data.tobytes()


def _ordered(fn: Callable, items: range, workers: int | None) -> Iterator:
    """fn over items on a thread pool, results in order, with a bounded number in flight."""
    workers = os.cpu_count() or 1 if workers is None else max(1, workers)
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_header(f, settings: PackSettings, fingerprint: str) -> None:
    meta = json.dumps({"version": 1, **_settings_json(settings), "fingerprint": fingerprint}).encode()
    f.write(MAGIC + struct.pack("<I", len(meta)) + meta)


def _settings_json(settings: PackSettings) -> dict:
    return {"format": settings.format, "quality": settings.quality, "size": list(settings.size)}


def _write_record(f, status: int, item: int, payload: bytes, landmarks: np.ndarray) -> _Record:
    crc = zlib.crc32(payload)
    f.write(RECORD.pack(RECORD_MAGIC, status, item, len(payload), crc, *landmarks.reshape(-1).tolist(), 0))
    offset = f.tell()
    f.write(payload)
    return _Record(status, item, offset, len(payload), crc, landmarks)


def _resume_point(partial: Path, fingerprint: str) -> list[_Record] | None:
    """The whole records of an interrupted pack of the same plan (the file cut after them), or None."""
    if not partial.is_file():
        return None
    with open(partial, "r+b") as f:
        try:
            header = _read_header(f.read(1 << 16) if partial.stat().st_size else b"", partial)
        except CorruptPackError:
            return None
        if header.get("fingerprint") != fingerprint:
            return None
        size = partial.stat().st_size
        f.seek(len(MAGIC) + 4 + header["_length"])
        records: list[_Record] = []
        while True:
            start = f.tell()
            raw = f.read(RECORD.size)
            if len(raw) < RECORD.size:
                break
            magic, status, item, length, crc, *rest = RECORD.unpack(raw)
            if magic != RECORD_MAGIC or item != len(records) or length > size - f.tell():
                break  # torn or damaged: the records end here (a garbage length is not read)
            payload = f.read(length)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            records.append(
                _Record(status, item, start + RECORD.size, length, crc, np.array(rest[:10], np.float32).reshape(5, 2))
            )
        end = records[-1].offset + records[-1].length if records else len(MAGIC) + 4 + header["_length"]
        f.truncate(end)
    return records


def _write_index(f, dataset: FaceDataset, settings: PackSettings, records: list[_Record]) -> None:
    packed = [r for r in records if r.status == PACKED]
    meta = {
        "version": 1,
        **_settings_json(settings),
        "classes": dataset.classes,
        "paths": [dataset.paths[r.item] for r in packed],
        "source": str(dataset.image_root),
        "skipped": [[dataset.paths[r.item], _reason(f, r)] for r in records if r.status == SKIPPED],
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        offsets=np.array([r.offset for r in packed], dtype=np.uint64),
        lengths=np.array([r.length for r in packed], dtype=np.uint64),
        crcs=np.array([r.crc for r in packed], dtype=np.uint32),
        labels=dataset.labels[[r.item for r in packed]].astype(np.int64),
        landmarks=np.array([r.landmarks for r in packed], dtype=np.float32).reshape(-1, 5, 2),
    )
    index = buffer.getvalue()
    f.seek(0, os.SEEK_END)
    offset = f.tell()
    f.write(index)
    f.write(FOOTER.pack(FOOTER_MAGIC, offset, len(index), zlib.crc32(index), 0))


def _reason(f, record: _Record) -> str:
    here = f.tell()
    f.seek(record.offset)
    reason = f.read(record.length).decode("utf-8", "replace")
    f.seek(here)
    return reason


def _read_header(data: bytes, path: Path) -> dict:
    if data[: len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
        raise CorruptPackError(f"{path} is not a pydcr pack (bad magic)")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + n])
    except ValueError:
        raise CorruptPackError(f"{path}: damaged pack header") from None
    return {**header, "_length": n}


# ----------------------------------------------------------------------------------------------
# Reading


class PackedFaces:
    """The crops of a pack file, memory-mapped: ``faces[i]`` is (h x w x 3 uint8 RGB crop, label).

    Opening checks the footer and the index checksum, so a truncated or damaged file is refused
    with :class:`CorruptPackError`; every read checks its record's CRC-32. Safe to share with
    DataLoader workers (each process maps the file itself).

    Attributes: paths (source image of each crop, relative to the packed dataset's root), labels,
    classes (identity names), landmarks (N x 5 x 2, in the source image), size (h, w), format.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._map: mmap.mmap | None = None
        index = self._read_index()
        meta = json.loads(index["meta"].tobytes())
        self.format: str = meta["format"]
        self.size: tuple[int, int] = tuple(meta["size"])
        self.classes: list[str] = meta["classes"]
        self.paths: list[str] = meta["paths"]
        self.skipped: list[tuple[str, str]] = [tuple(s) for s in meta["skipped"]]
        self.source: str = meta["source"]
        self.offsets, self.lengths, self.crcs = index["offsets"], index["lengths"], index["crcs"]
        self.labels, self.landmarks = index["labels"], index["landmarks"]

    def _read_index(self) -> dict[str, np.ndarray]:
        data = self._mapped()
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise CorruptPackError(f"{self.path} is not a pydcr pack (bad magic)")
        magic, offset, length, crc, _ = (
            FOOTER.unpack_from(data, len(data) - FOOTER.size) if len(data) >= len(MAGIC) + FOOTER.size else (b"",) * 5
        )
        if magic != FOOTER_MAGIC or offset + length + FOOTER.size != len(data):
            raise CorruptPackError(f"{self.path} is truncated or damaged: no index footer at its end")
        index = data[offset : offset + length]
        if zlib.crc32(index) != crc:
            raise CorruptPackError(f"{self.path}: the index is damaged (checksum mismatch)")
        with np.load(io.BytesIO(index), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise CorruptPackError(f"{self.path} is empty, not a pydcr pack")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def __getstate__(self) -> dict:  # worker processes map the file again
        return {**self.__dict__, "_map": None}

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.image(index), int(self.labels[index])

    @property
    def identities(self) -> list[str | None]:
        """The identity name of each face (None for the unlabelled faces of a flat folder)."""
        return identity_names(self.classes, self.labels)

    def record(self, index: int) -> memoryview:
        """The checked payload bytes of one crop."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a pack of {len(self)} faces")
        index %= len(self)
        start, length = int(self.offsets[index]), int(self.lengths[index])
        data = self._mapped()
        head = RECORD.unpack_from(data, start - RECORD.size) if start >= RECORD.size else None
        payload = memoryview(data)[start : start + length]
        if head is None or head[0] != RECORD_MAGIC or head[3] != length or zlib.crc32(payload) != self.crcs[index]:
            raise CorruptPackError(f"{self.path}: record {index} ({self.paths[index]}) is damaged (checksum mismatch)")
        return payload

    def image(self, index: int) -> np.ndarray:
        """One crop, h x w x 3 uint8 RGB."""
        payload = self.record(index)
        if self.format == "raw":
            return np.frombuffer(payload, dtype=np.uint8).reshape(*self.size, 3).copy()
        bgr = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CorruptPackError(f"{self.path}: record {index} ({self.paths[index]}) does not decode")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def images(self, indices) -> np.ndarray:
        """Several crops as one N x h x w x 3 array."""
        indices = list(indices)
        out = np.empty((len(indices), *self.size, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = self.image(i)
        return out

    def verify(self) -> list[int]:
        """Indices of the records that fail their checksum (empty for a sound pack)."""
        bad = []
        for i in range(len(self)):
            try:
                self.record(i)
            except CorruptPackError:
                bad.append(i)
        return bad

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> PackedFaces:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
