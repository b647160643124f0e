"""The one interface every retriever implements, and the pieces they share.

Besides :class:`Retriever` this module holds what BM25, dense and hybrid retrieval have in
common: the ``retriever.json`` manifest every saved index starts with, checks on the
arguments of ``search``, and a batched top-k over a score matrix.

A saved index can be trusted as far as its manifest: the manifest records the SHA-256 of every
payload file and of its own content, and a load refuses any mismatch, so a damaged or edited
index is an :class:`IndexFileError` rather than wrong results. Saving builds the new index in a
temporary sibling folder and swaps it in whole, so a kill never leaves half an index behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from searchrl.data.types import Document, Run, document_text
from searchrl.errors import ConfigError, DataError, IndexFileError

Hit = tuple[str, float]
"""``(doc_id, score)``; a search returns one list of hits per query, best first."""

RetrieverKind = Literal["bm25", "dense", "hybrid"]
"""The retriever kinds, one vocabulary for every command and config: BM25 (sparse), a
sentence-transformers encoder (dense), or both fused by reciprocal rank (hybrid)."""

RETRIEVER_KIND_NAMES: tuple[str, ...] = get_args(RetrieverKind)

MANIFEST_NAME = "retriever.json"
"""The file every saved index directory starts with:
``{"kind", "version", "params", "doc_ids", "files": {path: sha256}, "checksum"}``."""

FORMAT_VERSION = 2
"""Bumped whenever the on-disk layout of any retriever changes incompatibly (2: checksums)."""

MANIFEST_KEYS = ("kind", "version", "params", "doc_ids", "files", "checksum")

REBUILD_HINT = "rebuild it with `searchrl index` (or Retriever.index(...).save(directory))"


class Retriever(ABC):
    """Index a corpus once, then batch-search it.

    Subclasses implement :meth:`index`, :meth:`search`, :meth:`write_index` and :meth:`load`.
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

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` in safe formats (JSON, .npy, safetensors; never pickle).

        The index is written to a temporary sibling folder and then swapped in as a whole, so an
        existing index at ``directory`` is replaced entirely or not at all. ``directory`` must be
        new, empty or an index folder; a file or a folder of other files is refused.
        """
        with staged_directory(directory) as staging:
            self.write_index(staging)

    def write_index(self, directory: Path) -> None:
        """Write the payload files and, last, the manifest into the new, empty folder ``directory``.

        Called by :meth:`save`, which makes the result appear atomically.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

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


def _is_index_folder(directory: Path) -> bool:
    return (directory / MANIFEST_NAME).is_file()


def check_index_target(directory: str | Path) -> None:
    """Refuse to save an index over a file, or over a folder that holds something other than an index.

    A new folder, an empty one, or an index folder (it has ``retriever.json``) are fine: saving
    replaces an existing index as a whole.
    """
    directory = Path(directory)
    if directory.is_file():
        raise ConfigError("is a file; an index is saved to a folder", path=directory, hint="give a new folder name")
    if directory.is_dir() and not _is_index_folder(directory) and any(directory.iterdir()):
        raise ConfigError(
            "is a folder of other files, not an index; saving would replace it",
            path=directory,
            hint="give a new or empty folder (an existing index folder is replaced as a whole)",
        )


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so a rename publishes complete data."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_folder(Path(folder))


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on some platforms
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - nor flushed
        pass
    finally:
        os.close(descriptor)


def _previous_index_aside(directory: Path) -> list[Path]:
    """Old indexes that an interrupted swap left beside ``directory`` (newest first)."""
    aside = [p for p in directory.parent.glob(f".{directory.name}.old-*") if _is_index_folder(p)]
    return sorted(aside, key=lambda p: p.stat().st_mtime, reverse=True)


def replace_directory(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``, replacing what is there, by renames only.

    Without an old folder this is one atomic rename. With one, the old folder is first renamed
    aside (``.<name>.old-<id>``), the new one renamed in, and only then the old one deleted: a
    kill leaves either the old index, or the complete new one, or (between the two renames) the
    old one aside, which loading the missing index points to.
    """
    if not target.exists():
        os.rename(new, target)
        _fsync_folder(target.parent)
        return
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _fsync_folder(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(directory: str | Path) -> Iterator[Path]:
    """An empty temporary folder beside ``directory``; when the block ends normally it replaces it.

    When the block raises (or the process dies), ``directory`` is untouched; the temporary
    folder is removed, or after a kill left as ``.<name>.new-*`` (removed by the next save
    once it is an hour old).
    """
    directory = Path(os.path.abspath(directory))  # "." or "idx/.." name a folder whose parent holds the staging
    check_index_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        yield staging
        _fsync_tree(staging)
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in _previous_index_aside(directory):  # a complete new index makes older ones garbage
        shutil.rmtree(old, ignore_errors=True)


_STALE_SECONDS = 3600


def _remove_stale_staging(directory: Path) -> None:
    import time

    for leftover in directory.parent.glob(f".{directory.name}.new-*"):
        try:
            if time.time() - leftover.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's content without its ``checksum`` field (canonical JSON)."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_inside(directory: Path, relative: object, what: str) -> Path:
    """``directory / relative`` for a relative path that stays strictly inside ``directory``.

    Absolute paths, ``..``, empty names and links leading out (or to ``directory`` itself) raise
    :class:`IndexFileError`: a manifest must not make a load read files elsewhere.
    """
    text = relative if isinstance(relative, str) else None
    parts = Path(text).parts if text else ()
    root = directory.resolve()
    if not parts or Path(text).is_absolute() or ".." in parts:
        raise IndexFileError(f"{what} {relative!r} points outside the index folder", path=directory, hint=REBUILD_HINT)
    resolved = (directory / text).resolve()
    if resolved == root or root not in resolved.parents:
        raise IndexFileError(f"{what} {relative!r} points outside the index folder", path=directory, hint=REBUILD_HINT)
    return directory / text


def write_manifest(
    directory: Path, kind: str, params: dict[str, Any], doc_ids: Sequence[str], files: Sequence[str] = ()
) -> None:
    """Write ``retriever.json`` last, with the SHA-256 of each payload file and of itself.

    ``files`` are the payload files' paths relative to ``directory`` (``/``-separated).
    """
    directory = Path(directory)
    manifest: dict[str, Any] = {
        "kind": kind,
        "version": FORMAT_VERSION,
        "params": params,
        "doc_ids": list(doc_ids),
        "files": {name: file_sha256(directory / name) for name in files},
    }
    manifest["checksum"] = manifest_checksum(manifest)
    tmp = directory / (MANIFEST_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, ensure_ascii=False))
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(directory / MANIFEST_NAME)


def read_manifest(
    directory: str | Path, expected_kind: str | None = None, *, payload: Sequence[str] | None = None
) -> dict[str, Any]:
    """Read and validate ``directory/retriever.json``; every problem is an :class:`IndexFileError`.

    The manifest's own checksum is always verified, and its ``doc_ids`` must be unique strings.
    With ``payload`` (the files the caller is about to read), those files must be listed and
    every listed file must match its checksum (see :func:`verify_payload`).
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if directory.exists() and not directory.is_dir():
        raise IndexFileError("is a file, not an index folder", path=directory, hint=REBUILD_HINT)
    if not directory.is_dir():
        aside = _previous_index_aside(directory) if directory.parent.is_dir() else []
        if aside:
            raise IndexFileError(
                f"index directory not found; an interrupted re-index left the previous index at {aside[0]}",
                path=directory,
                hint=f"rename {aside[0].name} back to {directory.name}, or {REBUILD_HINT}",
            )
        raise IndexFileError("index directory not found", path=directory, hint=REBUILD_HINT)
    if not path.is_file():
        raise IndexFileError(f"not an index directory: {MANIFEST_NAME} is missing", path=directory, hint=REBUILD_HINT)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFileError(f"corrupt index manifest: {err}", path=path, hint=REBUILD_HINT) from None
    if not isinstance(manifest, dict):
        raise IndexFileError("corrupt index manifest: not a JSON object", path=path, hint=REBUILD_HINT)
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFileError(
            f"index format version {manifest.get('version')!r} is not supported (this searchrl reads {FORMAT_VERSION})",
            path=path,
            hint=REBUILD_HINT,
        )
    if not set(MANIFEST_KEYS) <= set(manifest):
        raise IndexFileError(
            f"corrupt index manifest: expected keys {', '.join(MANIFEST_KEYS)}", path=path, hint=REBUILD_HINT
        )
    if manifest["checksum"] != manifest_checksum(manifest):
        raise IndexFileError(
            "the index manifest does not match its checksum: it was edited or damaged after the index was written",
            path=path,
            hint=REBUILD_HINT,
        )
    if expected_kind is not None and manifest["kind"] != expected_kind:
        raise IndexFileError(
            f"this is a {manifest['kind']!r} index, not {expected_kind!r}",
            path=path,
            hint="open it with searchrl.retrieval.load_retriever(directory)",
        )
    if not isinstance(manifest["params"], dict) or not isinstance(manifest["files"], dict):
        raise IndexFileError("corrupt index manifest: params and files must be objects", path=path, hint=REBUILD_HINT)
    _check_doc_ids(manifest["doc_ids"], path)
    if payload is not None:
        verify_payload(directory, manifest, payload)
    return manifest


def _check_doc_ids(doc_ids: object, path: Path) -> None:
    if not isinstance(doc_ids, list) or not all(isinstance(doc_id, str) for doc_id in doc_ids):
        raise IndexFileError("corrupt index manifest: doc_ids must be a list of strings", path=path, hint=REBUILD_HINT)
    if len(set(doc_ids)) != len(doc_ids):
        seen: set[str] = set()
        duplicate = next(doc_id for doc_id in doc_ids if doc_id in seen or seen.add(doc_id))
        raise IndexFileError(f"the manifest lists duplicate document id {duplicate!r}", path=path, hint=REBUILD_HINT)


def verify_payload(directory: Path, manifest: Mapping[str, Any], required: Sequence[str]) -> None:
    """Check that each ``required`` file is listed in the manifest and every listed file matches its SHA-256."""
    directory = Path(directory)
    files = manifest["files"]
    for name in required:
        if name not in files:
            raise IndexFileError(f"the manifest has no checksum for {name}", path=directory / MANIFEST_NAME, hint=REBUILD_HINT)
    for name, expected in files.items():
        path = path_inside(directory, name, "payload file")
        if not path.is_file():
            raise IndexFileError("index file is missing", path=path, hint=REBUILD_HINT)
        if not isinstance(expected, str) or file_sha256(path) != expected:
            raise IndexFileError(
                f"{name} does not match its checksum in the manifest: the index was changed or damaged after it was written",
                path=path,
                hint=REBUILD_HINT,
            )
