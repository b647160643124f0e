"""The one interface every retriever implements, and the pieces they share.

Besides :class:`Retriever` this module holds what BM25, dense and hybrid retrieval have in
common: the ``retriever.json`` manifest every saved index starts with, checks on the
arguments of ``search``, and a batched top-k over a score matrix.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from searchrl.data.types import Document, Run, document_text
from searchrl.errors import ConfigError, DataError, IndexFileError

Hit = tuple[str, float]
"""``(doc_id, score)``; a search returns one list of hits per query, best first."""

MANIFEST_NAME = "retriever.json"
"""The file every saved index directory starts with: ``{"kind", "version", "params", "doc_ids"}``."""

FORMAT_VERSION = 1
"""Bumped whenever the on-disk layout of any retriever changes incompatibly."""

REBUILD_HINT = "rebuild it with `searchrl index` (or Retriever.index(...).save(directory))"


class Retriever(ABC):
    """Index a corpus once, then batch-search it.

    Subclasses implement :meth:`index`, :meth:`search`, :meth:`save` and :meth:`load`.
    ``doc_expansions`` appends an expansion string to each document's text before
    indexing (see :func:`searchrl.data.document_text`); query expansions are applied by the
    caller with :func:`searchrl.data.query_text` so every retriever sees the same strings.

    Every ``search`` returns at most ``k`` hits per query and never more than the corpus
    holds; a retriever may return fewer when fewer documents match (BM25 returns only
    documents sharing at least one term with the query).
    """

    name: str = "retriever"

    @abstractmethod
    def index(
        self,
        documents: Iterable[Document],
        doc_expansions: Mapping[str, str] | None = None,
        *,
        show_progress: bool = True,
    ) -> "Retriever":
        """Build the index; returns ``self`` so ``Retriever(...).index(docs)`` reads naturally."""

    @abstractmethod
    def search(self, queries: Sequence[str], k: int = 10, *, show_progress: bool = False) -> list[list[Hit]]:
        """Top-``k`` ``(doc_id, score)`` lists, best first, one per query."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` in safe formats (JSON, .npy, safetensors; never pickle)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> "Retriever":
        """Read an index written by :meth:`save`."""

    @property
    @abstractmethod
    def doc_ids(self) -> list[str]:
        """Ids of the indexed documents, in index order."""

    def run(self, queries: Mapping[str, str], k: int = 100, *, show_progress: bool = False) -> Run:
        """Search ``{query_id: text}`` and return a TREC-style run ``{query_id: {doc_id: score}}``."""
        ids = list(queries)
        results = self.search([queries[i] for i in ids], k=k, show_progress=show_progress)
        return {qid: dict(hits) for qid, hits in zip(ids, results)}


# ----------------------------------------------------------------------------------------
# Helpers shared by the implementations


def documents_to_texts(
    documents: Iterable[Document], doc_expansions: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """``(doc_ids, texts)`` for indexing: each text is :func:`document_text` with its expansion.

    Duplicate ids and an empty corpus raise :class:`DataError` (a second copy would silently
    shadow the first).
    Expansions whose id is not among the documents are reported with a warning: usually the
    expansion file belongs to another corpus.
    """
    doc_ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    expansions = doc_expansions or {}
    for doc in documents:
        if doc.id in seen:
            raise DataError(f"duplicate document id {doc.id!r}", hint="document ids must be unique in a corpus")
        seen.add(doc.id)
        doc_ids.append(doc.id)
        texts.append(document_text(doc, expansions.get(doc.id)))
    if not doc_ids:
        raise DataError("no documents to index", hint="check the corpus file is not empty")
    unmatched = len(set(expansions) - seen)
    if unmatched:
        import warnings

        warnings.warn(
            f"{unmatched} of {len(expansions)} document expansions name ids that are not in the corpus "
            "and were ignored (is the expansion file for this corpus?)",
            stacklevel=3,
        )
    return doc_ids, texts


def check_search_args(queries: Sequence[str], k: int) -> None:
    """Reject a bare string (it would be searched letter by letter) and a non-positive ``k``."""
    if isinstance(queries, str):
        raise ConfigError("search() takes a list of queries, got a single string", hint="wrap it: [query]")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (queries x documents), the ``k`` best columns, best first.

    Returns ``(indices, values)``, both of shape ``(rows, min(k, columns))``. Uses
    ``argpartition`` (linear time) and sorts only the ``k`` survivors, by score and then by
    column index, so equal scores come out in a reproducible order.

    >>> top_k_rows(np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]]), 2)[0].tolist()
    [[1, 2], [0, 2]]
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0:
        empty = np.zeros((n_rows, 0))
        return empty.astype(np.int64), empty.astype(scores.dtype)
    if k < n_cols:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    # lexsort: last key is primary -> descending score, then ascending column index.
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    indices = np.take_along_axis(candidates, order, axis=1)
    return indices, np.take_along_axis(candidate_scores, order, axis=1)


def check_index_target(directory: str | Path) -> None:
    """Refuse to save an index over a file, or over a folder that holds something other than an index.

    A new folder, an empty one, or an index folder (it has ``retriever.json``) are fine: saving
    replaces an existing index as a whole.
    """
    directory = Path(directory)
    if directory.is_file():
        raise ConfigError("is a file; an index is saved to a folder", path=directory, hint="give a new folder name")
    if directory.is_dir() and not (directory / MANIFEST_NAME).is_file() and any(directory.iterdir()):
        raise ConfigError(
            "is a folder of other files, not an index; saving would replace it",
            path=directory,
            hint="give a new or empty folder (an existing index folder is replaced as a whole)",
        )


def write_manifest(directory: Path, kind: str, params: dict[str, Any], doc_ids: Sequence[str]) -> None:
    """Write ``retriever.json`` last, so a directory with a manifest holds a complete index."""
    manifest = {"kind": kind, "version": FORMAT_VERSION, "params": params, "doc_ids": list(doc_ids)}
    tmp = directory / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    tmp.replace(directory / MANIFEST_NAME)


def read_manifest(directory: str | Path, expected_kind: str | None = None) -> dict[str, Any]:
    """Read and validate ``directory/retriever.json``; every problem is an :class:`IndexFileError`."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise IndexFileError("index directory not found", path=directory, hint=REBUILD_HINT)
    if not path.is_file():
        raise IndexFileError(f"not an index directory: {MANIFEST_NAME} is missing", path=directory, hint=REBUILD_HINT)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFileError(f"corrupt index manifest: {err}", path=path, hint=REBUILD_HINT) from None
    if not isinstance(manifest, dict) or not {"kind", "version", "params", "doc_ids"} <= set(manifest):
        raise IndexFileError(
            "corrupt index manifest: expected keys kind, version, params, doc_ids", path=path, hint=REBUILD_HINT
        )
    if manifest["version"] != FORMAT_VERSION:
        raise IndexFileError(
            f"index format version {manifest['version']!r} is not supported (this searchrl reads {FORMAT_VERSION})",
            path=path,
            hint=REBUILD_HINT,
        )
    if expected_kind is not None and manifest["kind"] != expected_kind:
        raise IndexFileError(
            f"this is a {manifest['kind']!r} index, not {expected_kind!r}",
            path=path,
            hint="open it with searchrl.retrieval.load_retriever(directory)",
        )
    if not isinstance(manifest["params"], dict) or not isinstance(manifest["doc_ids"], list):
        raise IndexFileError("corrupt index manifest: params must be an object, doc_ids a list", path=path)
    return manifest
