"""BM25 (Lucene variant) over bm25s's precomputed score matrix.

bm25s computes every document's BM25 weight for every term it contains once, at indexing
time, as a sparse ``documents x terms`` matrix. Searching a batch of queries is then one
sparse product — ``query term counts @ weights.T`` — and a top-k per row: no Python loop
per document, and none per query beyond turning its text into tokens.

The analysis (lower case, words of two or more characters, stop words removed, Snowball
stemming) lives in :class:`BM25Analyzer`, which is public because training rewards must
tokenise expansions exactly as the index does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from searchrl.data.types import Document
from searchrl.errors import ConfigError, DataError, IndexFileError
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

PAYLOAD_DIR = "bm25s"
"""Sub-folder of a saved index holding bm25s's own file layout (loadable by ``bm25s.BM25.load``)."""
_ARRAY_FILES = {name: f"{name}.csc.index.npy" for name in ("data", "indices", "indptr")}
_VOCAB_FILE = "vocab.index.json"
_PARAMS_FILE = "params.index.json"
_ANALYZER_FILE = "analyzer.json"
PAYLOAD_FILES = tuple(
    f"{PAYLOAD_DIR}/{name}" for name in (*_ARRAY_FILES.values(), _VOCAB_FILE, _PARAMS_FILE, _ANALYZER_FILE)
)

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
"""Words of two or more letters/digits: the default of bm25s and scikit-learn."""

_STOPWORD_LISTS = {
    # language code -> name of the list in bm25s.stopwords
    "en": "STOPWORDS_EN",
    "english": "STOPWORDS_EN",
    "en_plus": "STOPWORDS_EN_PLUS",
    "de": "STOPWORDS_GERMAN",
    "german": "STOPWORDS_GERMAN",
    "nl": "STOPWORDS_DUTCH",
    "dutch": "STOPWORDS_DUTCH",
    "fr": "STOPWORDS_FRENCH",
    "french": "STOPWORDS_FRENCH",
    "es": "STOPWORDS_SPANISH",
    "spanish": "STOPWORDS_SPANISH",
    "pt": "STOPWORDS_PORTUGUESE",
    "portuguese": "STOPWORDS_PORTUGUESE",
    "it": "STOPWORDS_ITALIAN",
    "italian": "STOPWORDS_ITALIAN",
    "ru": "STOPWORDS_RUSSIAN",
    "russian": "STOPWORDS_RUSSIAN",
    "sv": "STOPWORDS_SWEDISH",
    "swedish": "STOPWORDS_SWEDISH",
    "no": "STOPWORDS_NORWEGIAN",
    "norwegian": "STOPWORDS_NORWEGIAN",
    "da": "STOPWORDS_DANISH",
    "danish": "STOPWORDS_DANISH",
    "tr": "STOPWORDS_TURKISH",
    "turkish": "STOPWORDS_TURKISH",
}

# Bound on the dense (queries x documents) score block materialised per batch of queries.
_MAX_SCORE_BLOCK = 1 << 24


class BM25Analyzer:
    """Text -> tokens, exactly as :class:`BM25Retriever` indexes documents and reads queries.

    Lower-cases, keeps words of two or more characters (``TOKEN_PATTERN``), drops stop words,
    then stems with a Snowball stemmer (PyStemmer) — the same pipeline as ``bm25s.tokenize``
    with a stemmer, and close to Elasticsearch's English analyzer.

    Args:
        stemmer: a Snowball language (``"english"``, ``"porter"``, ``"german"``...) or ``None``.
        stopwords: a language code (``"en"`` is Lucene's 33-word English list), a list of
            words, or ``None``.

    >>> BM25Analyzer().tokenize(["The studies of running mice", "a"])
    [['studi', 'run', 'mice'], []]
    """

    def __init__(self, stemmer: str | None = "english", stopwords: str | Sequence[str] | None = "en") -> None:
        self.stemmer = stemmer or None
        self.stopwords = stopwords if isinstance(stopwords, str) or stopwords is None else list(stopwords)
        self._split = re.compile(TOKEN_PATTERN).findall
        self._stopword_set = _stopword_set(stopwords)
        self._stem_words = _stem_function(self.stemmer)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """One token list per text (possibly empty), in text order."""
        if isinstance(texts, str):
            raise ConfigError("tokenize() takes a list of texts, got a single string", hint="wrap it: [text]")
        stop = self._stopword_set
        tokenized = []
        for text in texts:
            words = [w for w in self._split(text.lower()) if w not in stop]
            tokenized.append(self._stem_words(words) if self._stem_words else words)
        return tokenized

    def to_dict(self) -> dict[str, Any]:
        """The settings, JSON-serialisable; ``BM25Analyzer(**analyzer.to_dict())`` rebuilds it."""
        return {"stemmer": self.stemmer, "stopwords": self.stopwords}

    def __repr__(self) -> str:
        return f"BM25Analyzer(stemmer={self.stemmer!r}, stopwords={self.stopwords!r})"


def _stopword_set(stopwords: str | Sequence[str] | None) -> frozenset[str]:
    if stopwords is None or stopwords is False:
        return frozenset()
    if isinstance(stopwords, str):
        list_name = _STOPWORD_LISTS.get(stopwords.lower())
        if list_name is None:
            raise ConfigError(
                f"unknown stop word list {stopwords!r}",
                hint=f"use one of {sorted(_STOPWORD_LISTS)}, a list of words, or None",
            )
        import bm25s.stopwords

        return frozenset(getattr(bm25s.stopwords, list_name))
    return frozenset(w.lower() for w in stopwords)


def _stem_function(stemmer: str | None):
    if stemmer is None:
        return None
    import Stemmer

    if stemmer not in Stemmer.algorithms():
        raise ConfigError(f"unknown stemmer {stemmer!r}", hint=f"use None or one of {Stemmer.algorithms()}")
    # PyStemmer keeps its own cache of recent words, so repeated words cost a dict lookup.
    return Stemmer.Stemmer(stemmer).stemWords


class BM25Retriever(Retriever):
    """Lucene BM25 (``k1``, ``b``) with :class:`BM25Analyzer` analysis.

    ``search`` returns only documents that share at least one term with the query, so an
    empty query, or one made only of stop words or terms absent from the corpus, gets an
    empty hit list.

    >>> from searchrl.data import Document
    >>> docs = [Document("d1", "Vitamin D deficiency and bone fractures"), Document("d2", "Aspirin and the heart")]
    >>> BM25Retriever().index(docs, show_progress=False).search(["vitamin deficiencies"], k=5)[0][0][0]
    'd1'
    """

    name = "bm25"

    def __init__(
        self, k1: float = 1.2, b: float = 0.75, stemmer: str | None = "english", stopwords: str | Sequence[str] | None = "en"
    ) -> None:
        if not (k1 >= 0 and 0 <= b <= 1):
            raise ConfigError(f"invalid BM25 parameters k1={k1}, b={b}", hint="need k1 >= 0 and 0 <= b <= 1")
        self.k1 = float(k1)
        self.b = float(b)
        self.analyzer = BM25Analyzer(stemmer=stemmer, stopwords=stopwords)
        self._doc_ids: list[str] = []
        self._vocab: dict[str, int] | None = None  # token -> row of _term_weights
        self._term_weights: sp.csr_matrix | None = None  # BM25 weight of each term in each document
        self._average_document_length = 0.0

    # -- indexing ------------------------------------------------------------------------

    def index(
        self,
        documents: Iterable[Document],
        doc_expansions: Mapping[str, str] | None = None,
        *,
        show_progress: bool = True,
    ) -> "BM25Retriever":
        """Tokenise ``document_text(doc, expansion)`` for every document and build the weights."""
        import bm25s

        doc_ids, texts = documents_to_texts(documents, doc_expansions)
        corpus_tokens: list[list[str]] = []
        chunk = 2048
        with progress_bar("Tokenising documents", len(texts), unit="doc", disable=None if show_progress else True) as advance:
            for start in range(0, len(texts), chunk):
                corpus_tokens.extend(self.analyzer.tokenize(texts[start : start + chunk]))
                advance(min(chunk, len(texts) - start))
        if not any(corpus_tokens):
            raise DataError(
                f"none of the {len(doc_ids)} documents contains an indexable word",
                hint="documents are empty or made only of stop words",
            )
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        bm25.index(corpus_tokens, create_empty_token=False, show_progress=False)
        scores = bm25.scores
        self._set_index(
            dict(bm25.vocab_dict),
            scores["data"],
            scores["indices"],
            scores["indptr"],
            doc_ids,
            float(np.mean([len(t) for t in corpus_tokens])),
        )
        return self

    def _set_index(
        self,
        vocab: dict[str, int],
        data: np.ndarray,
        indices: np.ndarray,
        indptr: np.ndarray,
        doc_ids: list[str],
        average_document_length: float,
    ) -> None:
        self._vocab = vocab
        self._doc_ids = list(doc_ids)
        self._average_document_length = average_document_length
        # bm25s stores documents x terms in CSC form; the same three arrays read as CSR are
        # terms x documents, which is what the query product needs (no copy).
        self._term_weights = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, len(doc_ids)))

    # -- corpus statistics (used by training rewards) -------------------------------------

    @property
    def doc_ids(self) -> list[str]:
        return list(self._doc_ids)

    @property
    def num_documents(self) -> int:
        """Number of indexed documents (``N`` in the IDF)."""
        return len(self._doc_ids)

    @property
    def average_document_length(self) -> float:
        """Mean number of tokens per indexed document (``avgdl`` in BM25)."""
        return self._average_document_length

    @property
    def vocabulary(self) -> dict[str, int]:
        """``{token: column}`` of the indexed corpus (tokens are analyzer output, i.e. stems)."""
        self._require_index()
        return dict(self._vocab)

    def document_frequencies(self) -> dict[str, int]:
        """``{token: number of indexed documents containing it}``."""
        self._require_index()
        counts = np.diff(self._term_weights.indptr)
        return {token: int(counts[column]) for token, column in self._vocab.items()}

    def idf(self, tokens: Sequence[str]) -> np.ndarray:
        """Lucene IDF ``log(1 + (N - df + 0.5) / (df + 0.5))`` of each (analysed) token.

        A token absent from the corpus has ``df = 0`` and so gets the largest IDF, which is
        what in-batch scoring of new expansion words against corpus statistics should see.

        >>> from searchrl.data import Document
        >>> r = BM25Retriever().index([Document("a", "cell"), Document("b", "cell growth")], show_progress=False)
        >>> [round(float(x), 3) for x in r.idf(["cell", "growth", "unseen"])]
        [0.182, 0.693, 1.792]
        """
        self._require_index()
        counts = np.diff(self._term_weights.indptr)
        vocab = self._vocab
        df = np.array([counts[vocab[t]] if t in vocab else 0 for t in tokens], dtype=np.int64)
        return lucene_idf(df, self.num_documents).astype(np.float32)

    # -- search -------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int = 10, *, show_progress: bool = False) -> list[list[Hit]]:
        """Top-``k`` documents per query by BM25 score; only documents with a positive score."""
        check_search_args(queries, k)
        return self.search_tokens(self.analyzer.tokenize(list(queries)), k=k, show_progress=show_progress)

    def search_tokens(
        self, query_tokens: Sequence[Sequence[str]], k: int = 10, *, show_progress: bool = False
    ) -> list[list[Hit]]:
        """Like :meth:`search` for queries already analysed with :attr:`analyzer`."""
        self._require_index()
        check_search_args(query_tokens, k)
        query_terms = self._query_term_matrix(query_tokens)
        n_queries, n_docs = len(query_tokens), self.num_documents
        rows_per_block = max(1, _MAX_SCORE_BLOCK // max(n_docs, 1))
        results: list[list[Hit]] = []
        doc_ids = self._doc_ids
        with progress_bar("BM25 search", n_queries, unit="query", disable=None if show_progress else True) as advance:
            for start in range(0, n_queries, rows_per_block):
                block = (query_terms[start : start + rows_per_block] @ self._term_weights).toarray()
                indices, values = top_k_rows(block, k)
                for row_indices, row_values in zip(indices.tolist(), values.tolist()):
                    results.append([(doc_ids[i], s) for i, s in zip(row_indices, row_values) if s > 0])
                advance(block.shape[0])
        return results

    def _query_term_matrix(self, query_tokens: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """``queries x terms`` counts; a repeated query word counts again, as in bm25s and Lucene."""
        vocab = self._vocab
        rows: list[int] = []
        columns: list[int] = []
        for row, tokens in enumerate(query_tokens):
            known = [vocab[t] for t in tokens if t in vocab]
            rows.extend([row] * len(known))
            columns.extend(known)
        data = np.ones(len(columns), dtype=np.float32)
        # csr_matrix sums duplicate (row, column) entries, which turns repeats into counts.
        return sp.csr_matrix((data, (rows, columns)), shape=(len(query_tokens), self._term_weights.shape[0]))

    def _require_index(self) -> None:
        if self._term_weights is None:
            raise IndexFileError("this BM25 retriever has no index yet", hint="call .index(documents) or load_retriever(dir)")

    # -- persistence --------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"k1": self.k1, "b": self.b, **self.analyzer.to_dict()}

    def write_index(self, directory: Path) -> None:
        """``retriever.json`` plus the weights in bm25s's layout in ``bm25s/`` (``.npy`` without pickle, JSON).

        ``bm25s/analyzer.json`` repeats the analysis settings, which loading compares with the
        manifest: queries must be analysed exactly as the documents were.
        """
        import bm25s

        self._require_index()
        payload = Path(directory) / PAYLOAD_DIR
        payload.mkdir(parents=True, exist_ok=True)
        weights = self._term_weights
        for name, array in (("data", weights.data), ("indices", weights.indices), ("indptr", weights.indptr)):
            np.save(payload / _ARRAY_FILES[name], array, allow_pickle=False)
        (payload / _VOCAB_FILE).write_text(json.dumps(self._vocab, ensure_ascii=False), encoding="utf-8")
        bm25s_params = {
            "k1": self.k1, "b": self.b, "delta": 0.5, "method": "lucene", "idf_method": "lucene",
            "dtype": "float32", "int_dtype": "int32", "num_docs": self.num_documents,
            "version": bm25s.__version__, "backend": "numpy",
        }  # fmt: skip
        (payload / _PARAMS_FILE).write_text(json.dumps(bm25s_params, indent=4), encoding="utf-8")
        (payload / _ANALYZER_FILE).write_text(json.dumps(self.analyzer.to_dict()), encoding="utf-8")
        params = {**self.params(), "average_document_length": self._average_document_length}
        write_manifest(directory, self.name, params, self._doc_ids, PAYLOAD_FILES)

    @classmethod
    def load(cls, directory: str | Path) -> "BM25Retriever":
        """Read an index written by :meth:`save`; problems raise :class:`IndexFileError`.

        Checksums are verified first; then every array is validated (types, shapes, a monotone
        ``indptr``, document and term indices in range, finite non-negative weights), so even an
        index crafted with matching checksums can neither crash the process nor mislead silently.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, expected_kind=cls.name, payload=PAYLOAD_FILES)
        params = dict(manifest["params"])
        average_document_length = params.pop("average_document_length", None)
        try:
            retriever = cls(**params)
        except (TypeError, ConfigError) as err:
            raise IndexFileError(f"invalid BM25 parameters in the manifest: {err}", path=directory, hint=REBUILD_HINT) from None
        payload = directory / PAYLOAD_DIR
        doc_ids = manifest["doc_ids"]

        built_with = _read_json(payload / _ANALYZER_FILE)
        if built_with != retriever.analyzer.to_dict():
            raise IndexFileError(
                f"the index was built with the analyzer {built_with} but the manifest asks for "
                f"{retriever.analyzer.to_dict()}: queries would not be analysed like the documents",
                path=directory,
                hint=REBUILD_HINT,
            )
        bm25s_params = _read_json(payload / _PARAMS_FILE)
        if not isinstance(bm25s_params, dict) or bm25s_params.get("num_docs") != len(doc_ids):
            found = bm25s_params.get("num_docs") if isinstance(bm25s_params, dict) else None
            raise IndexFileError(
                f"index holds {found} documents but the manifest lists {len(doc_ids)}",
                path=directory,
                hint=REBUILD_HINT,
            )
        if (bm25s_params.get("k1"), bm25s_params.get("b")) != (retriever.k1, retriever.b):
            raise IndexFileError(
                f"the weights were computed with k1={bm25s_params.get('k1')}, b={bm25s_params.get('b')} but the "
                f"manifest says k1={retriever.k1}, b={retriever.b}",
                path=directory,
                hint=REBUILD_HINT,
            )
        if (
            isinstance(average_document_length, bool)
            or not isinstance(average_document_length, (int, float))
            or not np.isfinite(average_document_length)
            or average_document_length < 0
        ):
            raise IndexFileError(
                f"invalid average_document_length {average_document_length!r} in the manifest",
                path=directory,
                hint=REBUILD_HINT,
            )
        arrays = {name: _read_array(payload / file) for name, file in _ARRAY_FILES.items()}
        vocab = _read_json(payload / _VOCAB_FILE)
        data, indices, indptr = check_weight_arrays(
            arrays["data"], arrays["indices"], arrays["indptr"], vocab, len(doc_ids), path=payload
        )
        retriever._set_index(vocab, data, indices, indptr, doc_ids, float(average_document_length))
        return retriever


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IndexFileError(f"cannot read the BM25 index file: {err}", path=path, hint=REBUILD_HINT) from None


def _read_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise IndexFileError(f"cannot read the BM25 index array: {err}", path=path, hint=REBUILD_HINT) from None


def check_weight_arrays(
    data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, vocab: object, num_documents: int, *, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the ``terms x documents`` CSR arrays of a loaded index; returns them ready for scipy.

    scipy trusts these arrays: an index beyond the document count reads outside memory (a
    segfault, or garbage scores). Raises :class:`IndexFileError` naming the first problem.
    """

    def refuse(problem: str) -> IndexFileError:
        return IndexFileError(f"invalid BM25 index: {problem}", path=path, hint=REBUILD_HINT)

    for name, array, kinds, expected in (
        ("data", data, "f", "floating-point"),
        ("indices", indices, "iu", "integer"),
        ("indptr", indptr, "iu", "integer"),
    ):
        if array.ndim != 1:
            raise refuse(f"{name} must be one-dimensional, found shape {array.shape}")
        if array.dtype.kind not in kinds:
            raise refuse(f"{name} has type {array.dtype}, expected an {expected} type")
    if not isinstance(vocab, dict) or not all(
        isinstance(token, str) and isinstance(column, int) and not isinstance(column, bool)
        for token, column in vocab.items()
    ):
        raise refuse("the vocabulary must map each token to an integer row")
    n_terms = len(vocab)
    columns = np.fromiter(vocab.values(), dtype=np.int64, count=n_terms)
    if not np.array_equal(np.sort(columns), np.arange(n_terms)):
        raise refuse(f"the vocabulary must number its {n_terms} terms 0 to {n_terms - 1}, each once")
    if len(indptr) != n_terms + 1:
        raise refuse(f"indptr has {len(indptr)} entries for {n_terms} terms (expected {n_terms + 1})")
    if len(indices) != len(data):
        raise refuse(f"indices has {len(indices)} entries but data has {len(data)}")
    if int(indptr[0]) != 0 or int(indptr[-1]) != len(indices):
        raise refuse(f"indptr must start at 0 and end at {len(indices)}, found {int(indptr[0])} and {int(indptr[-1])}")
    if np.any(np.diff(indptr.astype(np.int64)) < 0):
        raise refuse("indptr decreases")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= num_documents):
        raise refuse(
            f"document index out of range: found {int(indices.min())} to {int(indices.max())} "
            f"for {num_documents} documents"
        )
    if not np.isfinite(data).all():
        raise refuse("weights that are not finite (NaN or infinity)")
    if np.any(data < 0):
        raise refuse("negative weights (BM25 weights are never negative)")
    index_type = np.int32 if max(num_documents, len(indices)) < np.iinfo(np.int32).max else np.int64
    return data.astype(np.float32, copy=False), indices.astype(index_type, copy=False), indptr.astype(index_type, copy=False)


def lucene_idf(document_frequency: np.ndarray, num_documents: int) -> np.ndarray:
    """Lucene's BM25 IDF, vectorised: ``log(1 + (N - df + 0.5) / (df + 0.5))``."""
    df = np.asarray(document_frequency, dtype=np.float64)
    return np.log1p((num_documents - df + 0.5) / (df + 0.5))

