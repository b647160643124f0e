"""Dense retrieval: sentence-transformers embeddings, exact inner-product search, cached encodings.

Documents are encoded once and kept on disk in an :class:`EmbeddingCache`, keyed by the
encoder's identity, the passage prefix, the maximum sequence length and the text itself. Re-
indexing the same corpus — or the same corpus with expansions added to some documents —
encodes only texts it has not seen. Search is an exact matrix product over the (normalised)
document matrix followed by a top-k per query.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from searchrl.data.types import Document
from searchrl.errors import ConfigError, IndexFileError, ModelError
from searchrl.progress import progress_bar
from searchrl.retrieval.base import (
    REBUILD_HINT,
    Hit,
    Retriever,
    check_search_args,
    documents_to_texts,
    read_manifest,
    top_k_rows,
    write_manifest,
)

from searchrl.resolver import DEFAULT_ENCODER, resolve_model

EMBEDDINGS_FILE = "embeddings.npy"

# Bound on the dense (queries x documents) score block materialised per batch of queries.
_MAX_SCORE_BLOCK = 1 << 24
# Texts encoded between two cache writes: an interrupted indexing run keeps what it encoded.
_CACHE_FLUSH_TEXTS = 2048


def resolve_encoder(name: str | Path) -> Path:
    """Local folder of the sentence-transformers model ``name`` (a Hub id, an alias or a path)."""
    return Path(resolve_model(str(name), kind="sentence-transformer"))


_fingerprints: dict[tuple, str] = {}


def encoder_fingerprint(folder: str | Path) -> str:
    """A hash of every file in a model folder: the same weights give the same cache entries.

    Hashing content rather than the folder's name means a model fine-tuned into the same
    output folder gets fresh embeddings, while a copy moved elsewhere reuses the cache.
    Memoised per process on the files' sizes and modification times.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    stamp = (str(folder.resolve()),) + tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _fingerprints:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _fingerprints[stamp] = digest.hexdigest()
    return _fingerprints[stamp]


class EmbeddingCache:
    """Text embeddings on disk: ``.npy`` shards, each with a JSON list of its rows' keys.

    One folder per encoder setup (``namespace``: model fingerprint, prefix, max length) under
    ``directory``; ``namespace.json`` describes it. A shard is written as ``<name>.npy`` then
    ``<name>.json`` (atomically renamed), so a shard counts only once complete and parallel
    writers never overwrite each other. The key of a text is the SHA-256 of the namespace
    and the text, i.e. of (model identity, prefix, max_seq_length, text).
    """

    def __init__(self, directory: str | Path, namespace: Mapping[str, Any]) -> None:
        self.namespace = dict(namespace)
        namespace_json = json.dumps(self.namespace, sort_keys=True)
        self.namespace_id = hashlib.sha256(namespace_json.encode()).hexdigest()[:24]
        self.directory = Path(directory) / self.namespace_id
        self._rows: dict[str, tuple[Path, int]] | None = None  # key -> (shard file, row)

    def key(self, text: str) -> str:
        return hashlib.sha256((self.namespace_id + "\0" + text).encode("utf-8")).hexdigest()

    def _scan(self) -> dict[str, tuple[Path, int]]:
        if self._rows is None:
            self._rows = {}
            if self.directory.is_dir():
                for keys_file in sorted(self.directory.glob("shard-*.json")):
                    self._add_shard_rows(keys_file)
        return self._rows

    def _add_shard_rows(self, keys_file: Path) -> None:
        array_file = keys_file.with_suffix(".npy")
        try:
            keys = json.loads(keys_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return  # an unreadable shard is only a cache miss: its texts are encoded again
        if isinstance(keys, list) and array_file.is_file():
            for row, key in enumerate(keys):
                self._rows[key] = (array_file, row)

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(found, embeddings)``: a boolean mask over ``keys`` and the rows of the found ones."""
        rows = self._scan()
        found = np.array([key in rows for key in keys], dtype=bool)
        if not found.any():
            return found, None
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            if found[position]:
                shard, row = rows[key]
                by_shard.setdefault(shard, []).append((position, row))
        out: np.ndarray | None = None
        slot_of_position = np.cumsum(found) - 1
        for shard, pairs in by_shard.items():
            try:
                array = np.load(shard, mmap_mode="r", allow_pickle=False)
                positions, shard_rows = map(np.array, zip(*pairs))
                values = np.asarray(array[shard_rows], dtype=np.float32)
            except (OSError, ValueError, IndexError):
                # A damaged shard: forget its rows, so those texts are encoded again.
                self._rows = {k: v for k, v in rows.items() if v[0] != shard}
                return self.get(keys)
            if out is None:
                out = np.empty((int(found.sum()), values.shape[1]), dtype=np.float32)
            out[slot_of_position[positions]] = values
        return found, out

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Store one new shard with ``embeddings[i]`` under ``keys[i]``."""
        if len(keys) == 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "namespace.json"
        if not meta.exists():
            meta.write_text(json.dumps(self.namespace, indent=2, sort_keys=True), encoding="utf-8")
        name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
        array_file = self.directory / f"{name}.npy"
        keys_file = self.directory / f"{name}.json"
        with open(self.directory / f"{name}.npy.tmp", "wb") as handle:
            np.save(handle, np.ascontiguousarray(embeddings, dtype=np.float32), allow_pickle=False)
        os.replace(self.directory / f"{name}.npy.tmp", array_file)
        (self.directory / f"{name}.json.tmp").write_text(json.dumps(list(keys)), encoding="utf-8")
        os.replace(self.directory / f"{name}.json.tmp", keys_file)
        rows = self._scan()
        for row, key in enumerate(keys):
            rows[key] = (array_file, row)


class DenseRetriever(Retriever):
    """Cosine (normalised inner-product) search over sentence-transformers embeddings.

    Args:
        model: a model name (resolved to a local folder by :func:`searchrl.resolver.resolve_model`)
            or the path of a sentence-transformers folder.
        query_prefix, passage_prefix: strings put in front of queries / documents before
            encoding, e.g. ``"query: "`` and ``"passage: "`` for e5 models.
        batch_size: texts per forward pass.
        cache_dir: where document embeddings are cached (default
            ``searchrl.paths.cache_dir() / "embeddings"``); ``False`` disables the cache.
        normalize: L2-normalise embeddings, so inner product is cosine similarity.
        max_seq_length: truncate inputs to this many tokens (default: the model's own).
        device: torch device for encoding (default: sentence-transformers' choice).

    After :meth:`index`, ``last_index_stats`` says how many texts were encoded and how many
    came from the cache.
    """

    name = "dense"

    def __init__(
        self,
        model: str | Path = DEFAULT_ENCODER,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = 64,
        cache_dir: str | Path | bool | None = None,
        normalize: bool = True,
        max_seq_length: int | None = None,
        device: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if max_seq_length is not None and max_seq_length < 1:
            raise ConfigError(f"max_seq_length must be positive, got {max_seq_length}")
        self.model = str(model)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = int(batch_size)
        self.cache_dir = cache_dir
        self.normalize = bool(normalize)
        self.max_seq_length = max_seq_length
        self.device = device
        self._encoder = None
        self._fingerprint: str | None = None
        self._index_fingerprint: str | None = None  # encoder fingerprint the loaded index was built with
        self._embeddings: np.ndarray | None = None
        self._doc_ids: list[str] = []
        self.last_index_stats: dict[str, int] = {}

    # -- the encoder --------------------------------------------------------------------

    @property
    def encoder(self):
        """The ``SentenceTransformer``, loaded on first use."""
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            folder = resolve_encoder(self.model)
            try:
                encoder = SentenceTransformer(str(folder), device=self.device)
            except (OSError, ValueError) as err:
                raise ModelError(
                    f"cannot load sentence-transformers model: {err}",
                    path=folder,
                    hint="the folder must be a sentence-transformers model (modules.json) or a transformers encoder",
                ) from None
            if self.max_seq_length is not None:
                encoder.max_seq_length = self.max_seq_length
            self._fingerprint = encoder_fingerprint(folder)
            self._encoder = encoder
        return self._encoder

    @property
    def fingerprint(self) -> str:
        """Content hash of the encoder's folder (see :func:`encoder_fingerprint`)."""
        self.encoder  # noqa: B018 - loading sets the fingerprint
        return self._fingerprint

    def _embedding_cache(self) -> EmbeddingCache | None:
        if self.cache_dir is False:
            return None
        from searchrl.paths import cache_dir

        directory = Path(self.cache_dir) if self.cache_dir not in (None, True) else cache_dir() / "embeddings"
        namespace = {
            "model": self.fingerprint,
            "prefix": self.passage_prefix,
            "max_seq_length": self.encoder.max_seq_length,
        }
        return EmbeddingCache(directory, namespace)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """Raw (unnormalised) float32 embeddings, one row per text."""
        vectors = self.encoder.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query embeddings as used by :meth:`search` (prefixed, normalised if ``normalize``)."""
        vectors = self._encode([self.query_prefix + q for q in queries])
        return _normalise_rows(vectors) if self.normalize else vectors

    def encode_passages(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Document embeddings (prefixed, normalised if ``normalize``), through the cache."""
        unique_texts = list(dict.fromkeys(self.passage_prefix + t for t in texts))
        cache = self._embedding_cache()
        keys = [cache.key(t) for t in unique_texts] if cache is not None else []
        found, cached = cache.get(keys) if cache is not None else (np.zeros(len(unique_texts), dtype=bool), None)
        missing = np.flatnonzero(~found)
        dimension = cached.shape[1] if cached is not None else None
        vectors: np.ndarray | None = None
        if cached is not None:
            vectors = np.empty((len(unique_texts), dimension), dtype=np.float32)
            vectors[found] = cached
        with progress_bar("Encoding documents", len(missing), unit="doc", disable=None if show_progress else True) as advance:
            for start in range(0, len(missing), _CACHE_FLUSH_TEXTS):
                chunk = missing[start : start + _CACHE_FLUSH_TEXTS]
                encoded = self._encode([unique_texts[i] for i in chunk])
                if vectors is None:
                    vectors = np.empty((len(unique_texts), encoded.shape[1]), dtype=np.float32)
                vectors[chunk] = encoded
                if cache is not None:
                    cache.put([keys[i] for i in chunk], encoded)
                advance(len(chunk))
        self.last_index_stats = {"texts": len(texts), "encoded": int(len(missing)), "cached": int(found.sum())}
        if vectors is None:  # no texts at all
            return np.zeros((0, 0), dtype=np.float32)
        row_of_text = {text: row for row, text in enumerate(unique_texts)}
        rows = np.array([row_of_text[self.passage_prefix + t] for t in texts], dtype=np.int64)
        out = vectors[rows]
        return _normalise_rows(out) if self.normalize else out

    # -- index and search -----------------------------------------------------------------

    def index(
        self,
        documents: Iterable[Document],
        doc_expansions: Mapping[str, str] | None = None,
        *,
        show_progress: bool = True,
    ) -> "DenseRetriever":
        """Encode ``document_text(doc, expansion)`` of every document (cached texts are reused)."""
        doc_ids, texts = documents_to_texts(documents, doc_expansions)
        self._embeddings = self.encode_passages(texts, show_progress=show_progress)
        self._doc_ids = doc_ids
        self._index_fingerprint = self.fingerprint
        return self

    @property
    def doc_ids(self) -> list[str]:
        return list(self._doc_ids)

    @property
    def embeddings(self) -> np.ndarray:
        """The ``documents x dimension`` matrix searched by inner product."""
        self._require_index()
        return self._embeddings

    def search(self, queries: Sequence[str], k: int = 10, *, show_progress: bool = False) -> list[list[Hit]]:
        """Top-``k`` documents per query by inner product (cosine when ``normalize``)."""
        check_search_args(queries, k)
        self._require_index()
        if self._index_fingerprint is not None and self.fingerprint != self._index_fingerprint:
            raise IndexFileError(
                f"this index was built with a different version of the encoder {self.model!r}",
                hint="rebuild the index, or point `model` at the encoder it was built with",
            )
        n_docs = len(self._doc_ids)
        dimension = self.encoder.get_sentence_embedding_dimension()
        if dimension is not None and dimension != self._embeddings.shape[1]:
            raise IndexFileError(
                f"the index holds {self._embeddings.shape[1]}-dimensional embeddings but the encoder "
                f"{self.model!r} makes {dimension}-dimensional ones",
                hint="rebuild the index, or point `model` at the encoder it was built with",
            )
        rows_per_block = max(1, _MAX_SCORE_BLOCK // n_docs)
        results: list[list[Hit]] = []
        doc_ids = self._doc_ids
        with progress_bar("Dense search", len(queries), unit="query", disable=None if show_progress else True) as advance:
            for start in range(0, len(queries), rows_per_block):
                block_queries = list(queries[start : start + rows_per_block])
                scores = self.encode_queries(block_queries) @ self._embeddings.T
                indices, values = top_k_rows(scores, k)
                for row_indices, row_values in zip(indices.tolist(), values.tolist()):
                    results.append([(doc_ids[i], s) for i, s in zip(row_indices, row_values)])
                advance(len(block_queries))
        return results

    def _require_index(self) -> None:
        if self._embeddings is None:
            raise IndexFileError("this dense retriever has no index yet", hint="call .index(documents) or load_retriever(dir)")

    # -- persistence --------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        cache_dir = self.cache_dir if isinstance(self.cache_dir, bool) or self.cache_dir is None else str(self.cache_dir)
        return {
            "model": self.model,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "batch_size": self.batch_size,
            "cache_dir": cache_dir,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
            "device": self.device,
        }

    def write_index(self, directory: Path) -> None:
        """``retriever.json`` plus ``embeddings.npy`` (float32, saved without pickle)."""
        self._require_index()
        np.save(Path(directory) / EMBEDDINGS_FILE, self._embeddings, allow_pickle=False)
        params = {**self.params(), "encoder_fingerprint": self._index_fingerprint}
        write_manifest(directory, self.name, params, self._doc_ids, [EMBEDDINGS_FILE])

    @classmethod
    def load(cls, directory: str | Path) -> "DenseRetriever":
        """Read an index written by :meth:`save`. The encoder itself is loaded on the first search.

        The embeddings must match their checksum, be a finite floating-point matrix with one row
        per document; anything else raises :class:`IndexFileError`.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, expected_kind=cls.name, payload=[EMBEDDINGS_FILE])
        params = dict(manifest["params"])
        index_fingerprint = params.pop("encoder_fingerprint", None)
        try:
            retriever = cls(**params)
        except (TypeError, ConfigError) as err:
            raise IndexFileError(f"invalid dense parameters in the manifest: {err}", path=directory, hint=REBUILD_HINT) from None
        path = directory / EMBEDDINGS_FILE
        try:
            embeddings = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise IndexFileError(f"cannot read the document embeddings: {err}", path=path, hint=REBUILD_HINT) from None
        n_docs = len(manifest["doc_ids"])
        if embeddings.dtype.kind != "f":
            raise IndexFileError(
                f"embeddings have type {embeddings.dtype}, expected a floating-point type", path=path, hint=REBUILD_HINT
            )
        if embeddings.ndim != 2 or embeddings.shape[0] != n_docs or embeddings.shape[1] < 1:
            raise IndexFileError(
                f"embeddings of shape {embeddings.shape} do not match the {n_docs} documents in the manifest",
                path=path,
                hint=REBUILD_HINT,
            )
        if not np.isfinite(embeddings).all():
            raise IndexFileError("embeddings that are not finite (NaN or infinity)", path=path, hint=REBUILD_HINT)
        retriever._embeddings = embeddings.astype(np.float32, copy=False)
        retriever._doc_ids = list(manifest["doc_ids"])
        retriever._index_fingerprint = index_fingerprint
        return retriever


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
