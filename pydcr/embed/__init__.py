"""Batch embedding of galleries and probes, gallery files, and cosine search.

:class:`Embedder` streams faces (paths, arrays, tensors, packs, datasets) through a DCR model in
batches, decoding and aligning in background threads; :func:`embed_gallery` writes a gallery file
chunk by chunk (resumable, shardable across processes) and :func:`merge_shards` joins shards;
:func:`topk` is exact cosine top-k search (or faiss).
"""

from .embedder import EmbeddedBatch, Embedder, EmbedResult
from .gallery import Gallery, Shard, complete_gallery, embed_gallery, merge_shards
from .identity import model_identity
from .items import BadItem, ItemSource
from .search import ExactIndex, FaissIndex, make_index, topk

__all__ = [
    "BadItem",
    "EmbedResult",
    "EmbeddedBatch",
    "Embedder",
    "ExactIndex",
    "FaissIndex",
    "Gallery",
    "ItemSource",
    "Shard",
    "complete_gallery",
    "embed_gallery",
    "make_index",
    "merge_shards",
    "model_identity",
    "topk",
]
