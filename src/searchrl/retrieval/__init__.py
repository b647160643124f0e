"""Retrievers behind one interface: BM25, dense (sentence-transformers) and hybrid (rank fusion).

>>> from searchrl.data import Document
>>> retriever = build_retriever("bm25").index([Document("d1", "Apollo 13 oxygen tank")], show_progress=False)
>>> retriever.search(["oxygen"], k=3)[0][0][0]
'd1'

Every retriever saves to a directory holding ``retriever.json`` and safe payload files;
:func:`load_retriever` reads any of them back.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from searchrl.errors import ConfigError, IndexFileError
from searchrl.retrieval.base import (
    MANIFEST_NAME,
    REBUILD_HINT,
    RETRIEVER_KIND_NAMES,
    Hit,
    Retriever,
    RetrieverKind,
    read_manifest,
)
from searchrl.retrieval.bm25 import BM25Analyzer, BM25Retriever
from searchrl.retrieval.dense import DEFAULT_ENCODER, DenseRetriever, EmbeddingCache
from searchrl.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion

RETRIEVER_KINDS: dict[str, type[Retriever]] = {
    "bm25": BM25Retriever,
    "dense": DenseRetriever,
    "hybrid": HybridRetriever,
}

__all__ = [
    "BM25Analyzer",
    "BM25Retriever",
    "DenseRetriever",
    "EmbeddingCache",
    "Hit",
    "HybridRetriever",
    "RETRIEVER_KINDS",
    "RETRIEVER_KIND_NAMES",
    "RetrieverKind",
    "Retriever",
    "build_retriever",
    "load_retriever",
    "reciprocal_rank_fusion",
]


def _accepted_options(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


def build_retriever(kind: str, *, model: str | Path | None = None, **options: Any) -> Retriever:
    """A new, empty retriever of ``kind`` (``"bm25"``, ``"dense"`` or ``"hybrid"``).

    ``model`` names the dense encoder (default :data:`DEFAULT_ENCODER`). ``options`` are the
    constructor arguments of the retriever; for ``"hybrid"`` (BM25 + dense fused by RRF)
    each option goes to whichever part takes it: ``k1``/``b``/``stemmer``/``stopwords`` to
    BM25, ``query_prefix``/``batch_size``/... to dense, ``rrf_k``/``depth`` to the fusion.

    >>> build_retriever("bm25", k1=0.9).k1
    0.9
    """
    kind = kind.lower()
    if kind not in RETRIEVER_KINDS:
        raise ConfigError(f"unknown retriever kind {kind!r}", hint=f"use one of {sorted(RETRIEVER_KINDS)}")
    accepted = {
        "bm25": _accepted_options(BM25Retriever),
        "dense": _accepted_options(DenseRetriever) - {"model"},
        "hybrid": {"rrf_k", "depth"},
    }
    if kind == "bm25" and model is not None:
        raise ConfigError("a bm25 retriever takes no model", hint="use kind 'dense' or 'hybrid' for an encoder")
    allowed = accepted[kind] if kind != "hybrid" else set().union(*accepted.values())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) for a {kind} retriever: {', '.join(unknown)}", hint=f"accepted: {sorted(allowed)}")
    if kind == "bm25":
        return BM25Retriever(**options)
    model = model if model is not None else DEFAULT_ENCODER
    if kind == "dense":
        return DenseRetriever(model=model, **options)
    pick = lambda part: {k: v for k, v in options.items() if k in accepted[part]}  # noqa: E731
    return HybridRetriever(
        [BM25Retriever(**pick("bm25")), DenseRetriever(model=model, **pick("dense"))], **pick("hybrid")
    )


def load_retriever(directory: str | Path) -> Retriever:
    """Open an index saved by ``Retriever.save``; dispatches on ``kind`` in ``retriever.json``.

    A missing, incomplete or corrupt index raises :class:`~searchrl.errors.IndexFileError`.
    """
    manifest = read_manifest(directory)
    cls = RETRIEVER_KINDS.get(str(manifest["kind"]))
    if cls is None:
        raise IndexFileError(
            f"unknown retriever kind {manifest['kind']!r}",
            path=Path(directory) / MANIFEST_NAME,
            hint=REBUILD_HINT,
        )
    return cls.load(directory)
