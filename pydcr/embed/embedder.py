"""Embedder: features of many faces, streamed through a DCR model in batches."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._machine import use_amp
from ..data._progress import progress_bar
from ..models import DCR, Trunk, estimate_resolution
from ..models.dcr import positive_int
from .items import ItemSource
from .stream import CropBatch, batch_ranges, crop_batches

#: Head names: "trunk" (v), "hr<k>" (x through the HR branch of pair k), "lr" (z, each probe routed
#: to the pair nearest its resolution).
TRUNK, LR = "trunk", "lr"


def hr_head(resolution: int) -> str:
    return f"hr{int(resolution)}"


@dataclass
class EmbedResult:
    """Features of the good items, which items they are, and why the others were skipped.

    features: n x D float32 (CPU), row j belonging to input position index[j]. names: the input
    name of each row (path, or "#i" for in-memory images). failures: (name, reason) of each item
    that could not be embedded. resolutions: for probes, the trained resolution each row went
    through (else None).
    """

    features: torch.Tensor
    index: np.ndarray
    names: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    resolutions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class EmbeddedBatch:
    """One batch's features by head (float32, CPU), for writers that stream."""

    index: np.ndarray
    features: dict[str, torch.Tensor]
    routes: np.ndarray | None  # the pair each row of the "lr" head went through
    failures: list[tuple[int, str]]
    size: int  # input items covered, good and bad


class Embedder:
    """Embed galleries (HR branch), probes (LR branch) or trunk features of many faces.

    model: a :class:`pydcr.models.DCR` (or Trunk), or the path of a saved one. device: default
    CUDA when available. batch_size: faces per forward (default 256 on CUDA, 64 on CPU). amp:
    bfloat16 autocast (default on CUDA; off on the CPU, where it pays on processors with bfloat16
    arithmetic, AMX or AVX512-BF16, and may cost time on others). workers: threads that decode and
    align (default: half the cores, at most 8). On CUDA batches are pinned and copied
    asynchronously. The model is moved to the device, put in eval mode and converted to
    channels_last, the layout cuDNN's and oneDNN's convolutions run fastest in.

    Inputs (``items``): a list of image paths, of H x W x 3 uint8 RGB arrays or 3 x H x W tensors,
    an N x 3 x H x W tensor, a :class:`pydcr.data.PackedFaces`, a :class:`pydcr.data.FaceDataset`
    or an :class:`ItemSource` (taken as it is). Images that are not yet aligned crops are aligned
    with ``landmarks`` (one 5 x 2 array per item, or a mapping from path) or a ``detector``
    (:class:`pydcr.data.MTCNN`). Probes (embed_lr, embed_trunk) smaller than the model's input are
    native low-resolution crops, faces already: they are upsampled as they are, never aligned or
    searched for a face. An item that cannot be read or has no face is skipped and listed in the
    result's failures, never stopping the run.
    """

    def __init__(
        self,
        model: DCR | Trunk | str | os.PathLike,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        amp: bool | None = None,
        *,
        workers: int | None = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            from ..models import load

            model = load(Path(model))
        if isinstance(model, Trunk):
            model = DCR(model)
        if not isinstance(model, DCR):
            raise TypeError(f"model must be a pydcr DCR, a Trunk or a model file, got {type(model).__name__}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = int(batch_size) if batch_size is not None else (256 if self.device.type == "cuda" else 64)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.amp = use_amp(amp, self.device)
        if workers is not None and workers <= 0:
            raise ValueError(f"workers must be positive, got {workers}")
        self.workers = workers
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @property
    def crop_size(self) -> tuple[int, int]:
        return self.model.trunk.input_size

    # One-call API -----------------------------------------------------------------------------

    def embed_hr(self, items, resolution: int | None = None, *, flip: bool = False, progress: bool = False,
                 landmarks=None, detector=None) -> EmbedResult:
        """Gallery features x, as ``model.embed_hr`` (resolution: the pair; optional with one pair)."""
        if resolution is None:
            if len(self.model.resolutions) != 1:
                raise ValueError(f"this model has pairs for {self.model.resolutions}: name the resolution")
            resolution = self.model.resolutions[0]
        self.model.branch(resolution)  # unknown pair: KeyError now, not after the first batch
        source = self.source(items, landmarks=landmarks, detector=detector)
        return self._collect(source, hr_head(resolution), flip=flip, progress=progress)

    def embed_lr(self, items, size: int | None = None, *, flip: bool = False, progress: bool = False,
                 landmarks=None, detector=None) -> EmbedResult:
        """Probe features z, as ``model.embed_lr``: through the LR branch of the trained resolution
        nearest `size`, else the crop's native size (crops smaller than the model's input), else the
        resolution estimated from each face."""
        if size is not None:
            size = positive_int(size, "size")  # as model.embed_lr checks it
        self.model.nearest_resolution(size or 1)  # a model without pairs: fail now
        source = self.source(items, landmarks=landmarks, detector=detector, allow_small=True)
        return self._collect(source, LR, size=size, flip=flip, progress=progress)

    def embed_trunk(self, items, *, flip: bool = False, progress: bool = False,
                    landmarks=None, detector=None) -> EmbedResult:
        """Trunk features v (the trunk-alone baseline), as ``model.embed_trunk``: crops smaller than
        the model's input are native low-resolution probes, upsampled as for embed_lr."""
        source = self.source(items, landmarks=landmarks, detector=detector, allow_small=True)
        return self._collect(source, TRUNK, flip=flip, progress=progress)

    # Streaming --------------------------------------------------------------------------------

    def source(self, items, *, landmarks=None, detector=None, allow_small: bool = False) -> ItemSource:
        """`items` as an ItemSource of this model's crops; allow_small: take native low-resolution
        crops (probes). An ItemSource is taken as it is, when it suits."""
        if isinstance(items, ItemSource):
            if landmarks is not None or detector is not None:
                raise ValueError("an ItemSource brings its own landmarks and detector: give them to it, not here")
            if items.crop_size != self.crop_size:
                raise ValueError(f"the ItemSource makes {items.crop_size[0]}x{items.crop_size[1]} crops; the model "
                                 f"takes {self.crop_size[0]}x{self.crop_size[1]}")
            if items.allow_small and not allow_small:
                raise ValueError("the ItemSource takes small (low-resolution) crops, but the gallery branch takes "
                                 "full-size faces: make it without allow_small")
            return items
        if detector is True:
            from ..data import MTCNN

            detector = MTCNN(self.device, threads=None)
        return ItemSource(items, self.crop_size, landmarks=landmarks, detector=detector or None,
                          allow_small=allow_small)

    def stream(
        self,
        source: ItemSource,
        heads: Sequence[str],
        *,
        ranges: Iterable[tuple[int, int]] | None = None,
        size: int | None = None,
        flip: bool = False,
    ) -> Iterator[EmbeddedBatch]:
        """Features of `source` by head, batch by batch, in input order.

        ranges: the (start, stop) input ranges that form batches (default: consecutive batches of
        batch_size). Ranges fix which faces share a forward pass, so a rerun over the same ranges
        gives the same bits.
        """
        heads = list(heads)
        for head in heads:
            self._check_head(head)
        if size is not None:
            size = positive_int(size, "size")
        ranges = batch_ranges(0, len(source), self.batch_size) if ranges is None else ranges
        cuda = self.device.type == "cuda"
        batches = crop_batches(source, ranges, workers=self.workers, pin_memory=cuda,
                               antialias=self.model.antialias)
        previous = None
        for batch in batches:
            launched = self._launch(batch, heads, size, flip)
            if not cuda:  # the forward already ran
                yield self._finish(batch, *launched)
                continue
            # CUDA: hand back the previous batch while this one runs.
            if previous is not None:
                yield self._finish(*previous)
            previous = (batch, *launched)
        if previous is not None:
            yield self._finish(*previous)

    def _check_head(self, head: str) -> None:
        if head == TRUNK:
            return
        if head == LR:
            self.model.nearest_resolution(1)
        elif head.startswith("hr") and head[2:].isdigit():
            self.model.branch(int(head[2:]))
        else:
            raise ValueError(f"unknown head {head!r}: 'trunk', 'lr' or 'hr<resolution>'")

    @torch.inference_mode()
    def _launch(self, batch: CropBatch, heads: list[str], size: int | None, flip: bool):
        """Start the forward pass of a batch; on CUDA the results come back asynchronously."""
        if len(batch.index) == 0:
            return {}, None, None
        x = batch.images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        routes = self._routes(x, batch.native, size) if LR in heads else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            v = self.model.embed_trunk(x, flip=flip)
            out = {}
            for head in heads:
                if head == TRUNK:
                    out[head] = v
                elif head == LR:
                    out[head] = self._route_lr(v, routes)
                else:
                    out[head] = self.model.branch(int(head[2:])).hr(v)
        out = {k: f.float().to("cpu", non_blocking=True) for k, f in out.items()}
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        return out, routes, done

    def _routes(self, x: torch.Tensor, native: np.ndarray, size: int | None) -> np.ndarray:
        """The trained resolution each probe goes through: nearest to size, native size or estimate."""
        model = self.model
        if size is not None:
            return np.full(len(native), model.nearest_resolution(size), np.int64)
        k = native.copy()
        full = np.flatnonzero(k == 0)
        if len(full):
            k[full] = estimate_resolution(x[torch.from_numpy(full).to(x.device)], antialias=model.antialias).numpy()
        return np.array([model.nearest_resolution(int(r)) for r in k], np.int64)

    def _route_lr(self, v: torch.Tensor, routes: np.ndarray) -> torch.Tensor:
        unique = np.unique(routes)
        if len(unique) == 1:
            return self.model.branch(int(unique[0])).lr(v)
        parts, order = [], []
        for r in unique:
            idx = np.flatnonzero(routes == r)
            parts.append(self.model.branch(int(r)).lr(v[torch.from_numpy(idx).to(v.device)]))
            order.append(idx)
        out = torch.cat(parts)
        inverse = torch.from_numpy(np.argsort(np.concatenate(order))).to(v.device)
        return out[inverse]

    @staticmethod
    def _finish(batch: CropBatch, features: dict, routes, done) -> EmbeddedBatch:
        if done is not None:
            done.synchronize()
        return EmbeddedBatch(batch.index, features, routes, batch.failures, batch.size)

    def _collect(self, source: ItemSource, head: str, *, size: int | None = None, flip: bool = False,
                 progress: bool = False) -> EmbedResult:
        bar = progress_bar(len(source), 0, "embed", progress)
        features, index, routes, failures = [], [], [], []
        for b in self.stream(source, [head], size=size, flip=flip):
            if len(b.index):
                features.append(b.features[head])
                index.append(b.index)
                if b.routes is not None:
                    routes.append(b.routes)
            failures += [(source.names[i], reason) for i, reason in b.failures]
            bar.update(b.size)
        bar.close()
        dim = self.head_dim(head)
        index_all = np.concatenate(index) if index else np.zeros(0, np.int64)
        return EmbedResult(
            features=torch.cat(features) if features else torch.zeros(0, dim),
            index=index_all,
            names=[source.names[i] for i in index_all],
            failures=failures,
            resolutions=(np.concatenate(routes) if routes else np.zeros(0, np.int64)) if head == LR else None,
        )

    def head_dim(self, head: str) -> int:
        """Width of one head's features."""
        if head == TRUNK:
            return self.model.trunk.feature_dim
        if head == LR:
            return self.model.branch(self.model.resolutions[0]).dim
        return self.model.branch(int(head[2:])).dim
