"""In-batch BM25: score every query sample against every document sample with one sparse product.

The co-augmentation reward ranks a pool of *expanded* documents for each *expanded* query, so
the texts change every step and no index can be reused. What does stay fixed is the corpus the
retriever will finally search: its number of documents, its average document length and the
document frequency of each term. Scoring with those statistics (not with the few hundred
in-batch documents) makes the training scores the ones evaluation will compute.

The formula is Lucene's BM25, the one ``bm25s`` (``method="lucene"``) and
:class:`searchrl.retrieval.bm25.BM25Retriever` use::

    score(q, d) = sum over query tokens t of  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

A word repeated in the query counts once per occurrence (as in Lucene and bm25s); ``|d|`` is
the token count of the expanded document. Tokens must come from
``searchrl.retrieval.bm25.BM25Analyzer().tokenize`` — the analysis the index uses.

Per batch: one ``documents x terms`` sparse matrix of saturated term frequencies, one
``queries x terms`` matrix of ``count * idf``, one product. No loop over document pairs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from searchrl.data.types import Document, document_text
from searchrl.errors import ConfigError, DataError, IndexFileError

STATISTICS_FORMAT = "searchrl.coaug.corpus-statistics"
STATISTICS_VERSION = 1

UnseenTerms = Literal["zero", "rare"]

_TOKEN_CACHE_LIMIT = 500_000
"""Analysed document texts :class:`InBatchBM25` keeps (a few times a large corpus; cleared when full)."""


@dataclass(frozen=True)
class CorpusStatistics:
    """What BM25 needs to know about the indexed corpus: ``N``, ``avgdl`` and ``df`` per term.

    Build it from the corpus once (:meth:`from_documents`, :meth:`from_tokens` or
    :meth:`from_retriever`), save it as JSON, and reuse it for every training step.

    >>> stats = CorpusStatistics.from_tokens([["vitamin", "bone"], ["bone", "bone", "fractur"]])
    >>> stats.num_documents, stats.average_length, stats.document_frequency["bone"]
    (2, 2.5, 2)
    """

    num_documents: int
    average_length: float
    document_frequency: Mapping[str, int] = field(repr=False)

    def __post_init__(self) -> None:
        if self.num_documents < 1 or not self.average_length > 0:
            raise DataError(
                f"corpus statistics need at least one non-empty document "
                f"(got {self.num_documents} documents, average length {self.average_length})",
                hint="build them from the indexed corpus, not from an empty or stop-word-only one",
            )

    @classmethod
    def from_tokens(cls, tokenized_corpus: Iterable[Sequence[str]]) -> "CorpusStatistics":
        """Count documents, tokens and per-term document frequencies of analysed documents."""
        document_frequency: dict[str, int] = {}
        num_documents = 0
        total_tokens = 0
        for tokens in tokenized_corpus:
            num_documents += 1
            total_tokens += len(tokens)
            for term in set(tokens):
                document_frequency[term] = document_frequency.get(term, 0) + 1
        average = total_tokens / num_documents if num_documents else 0.0
        return cls(num_documents, average, document_frequency)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        *,
        analyzer: Any = None,
        doc_expansions: Mapping[str, str] | None = None,
        chunk_size: int = 4096,
    ) -> "CorpusStatistics":
        """Statistics of ``document_text(doc, expansion)`` analysed with ``analyzer``.

        ``analyzer`` defaults to ``searchrl.retrieval.bm25.BM25Analyzer()``; pass the same one
        the evaluation index uses. Documents are tokenised in chunks so memory stays flat.
        """
        analyzer = analyzer if analyzer is not None else _default_analyzer()
        expansions = doc_expansions or {}

        def token_lists() -> Iterable[list[str]]:
            chunk: list[str] = []
            for doc in documents:
                chunk.append(document_text(doc, expansions.get(doc.id)))
                if len(chunk) >= chunk_size:
                    yield from analyzer.tokenize(chunk)
                    chunk = []
            if chunk:
                yield from analyzer.tokenize(chunk)

        return cls.from_tokens(token_lists())

    @classmethod
    def from_retriever(cls, retriever: Any) -> "CorpusStatistics":
        """Read the statistics of an indexed :class:`searchrl.retrieval.bm25.BM25Retriever`."""
        try:
            return cls(
                int(retriever.num_documents),
                float(retriever.average_document_length),
                dict(retriever.document_frequencies()),
            )
        except AttributeError as err:
            raise ConfigError(
                f"{type(retriever).__name__} does not expose BM25 corpus statistics ({err})",
                hint="pass an indexed BM25Retriever, or use CorpusStatistics.from_documents",
            ) from None

    def save(self, path: str | Path) -> None:
        """Write the statistics as JSON (never pickle)."""
        payload = {
            "format": STATISTICS_FORMAT,
            "version": STATISTICS_VERSION,
            "num_documents": self.num_documents,
            "average_length": self.average_length,
            "document_frequency": dict(self.document_frequency),
        }
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CorpusStatistics":
        """Read statistics written by :meth:`save`; a missing or malformed file raises ``IndexFileError``."""
        path = Path(path)
        hint = "rebuild it with CorpusStatistics.from_documents(...).save(path)"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexFileError("corpus statistics file not found", path=path, hint=hint) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IndexFileError(f"cannot read corpus statistics: {err}", path=path, hint=hint) from None
        if not isinstance(payload, dict) or payload.get("format") != STATISTICS_FORMAT:
            raise IndexFileError("not a corpus statistics file", path=path, hint=hint)
        if payload.get("version") != STATISTICS_VERSION:
            version = payload.get("version")
            raise IndexFileError(f"unsupported corpus statistics version {version!r}", path=path, hint=hint)
        try:
            frequencies = {str(t): int(n) for t, n in payload["document_frequency"].items()}
            return cls(int(payload["num_documents"]), float(payload["average_length"]), frequencies)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise IndexFileError(f"malformed corpus statistics ({err!r})", path=path, hint=hint) from None
        except DataError as err:
            raise IndexFileError(err.message, path=path, hint=hint) from None

    def idf(self, terms: Sequence[str], *, unseen: UnseenTerms = "zero") -> np.ndarray:
        """Lucene IDF of each term, ``log(1 + (N - df + 0.5) / (df + 0.5))``.

        ``unseen`` decides the weight of a term no corpus document contains. ``"zero"`` (CoAug's
        choice, the default) gives it 0: an expansion earns nothing for words the corpus has
        never seen, so a query and a document cannot be paid for agreeing on invented words.
        ``"rare"`` treats it as ``df = 1``, the rarest term evaluation could see once the corpus
        is indexed with its expansions.

        >>> stats = CorpusStatistics(10, 5.0, {"cell": 4})
        >>> [round(float(x), 4) for x in stats.idf(["cell", "unseen"])]
        [0.8938, 0.0]
        >>> [round(float(x), 4) for x in stats.idf(["cell", "unseen"], unseen="rare")]
        [0.8938, 1.9924]
        """
        if unseen not in ("zero", "rare"):
            raise ConfigError(f"unknown unseen-term rule {unseen!r}", hint="use 'zero' (CoAug) or 'rare'")
        get = self.document_frequency.get
        df = np.fromiter((get(t, 0) for t in terms), dtype=np.float64, count=len(terms))
        idf = np.log1p((self.num_documents - np.maximum(df, 1) + 0.5) / (np.maximum(df, 1) + 0.5))
        return np.where(df > 0, idf, 0.0) if unseen == "zero" else idf


class InBatchBM25:
    """Lucene BM25 scores of every query against every document of a training batch.

    Args:
        statistics: corpus statistics of the index evaluation will search.
        k1, b: BM25 parameters (Lucene defaults 1.2 and 0.75).
        analyzer: object with ``tokenize(texts) -> list[list[str]]`` used by :meth:`score`;
            defaults to ``searchrl.retrieval.bm25.BM25Analyzer()``.
        unseen: weight of query terms no corpus document contains (see :meth:`CorpusStatistics.idf`).

    >>> stats = CorpusStatistics(100, 4.0, {"vitamin": 5, "bone": 20, "heart": 10})
    >>> bm25 = InBatchBM25(stats)
    >>> queries = [["vitamin", "bone"], ["heart"]]
    >>> scores = bm25.score_tokens(queries, [["vitamin", "bone", "bone", "fractur"], ["heart"]])
    >>> scores.shape, int(scores[0].argmax()), int(scores[1].argmax()), float(scores[0, 1])
    ((2, 2), 0, 1, 0.0)
    """

    def __init__(
        self,
        statistics: CorpusStatistics,
        *,
        k1: float = 1.2,
        b: float = 0.75,
        analyzer: Any = None,
        unseen: UnseenTerms = "zero",
    ) -> None:
        if not (k1 >= 0 and 0 <= b <= 1):
            raise ConfigError(f"invalid BM25 parameters k1={k1}, b={b}", hint="need k1 >= 0 and 0 <= b <= 1")
        if unseen not in ("zero", "rare"):
            raise ConfigError(f"unknown unseen-term rule {unseen!r}", hint="use 'zero' (CoAug) or 'rare'")
        self.statistics = statistics
        self.unseen: UnseenTerms = unseen
        self.k1 = float(k1)
        self.b = float(b)
        self._analyzer = analyzer
        # Unexpanded documents (the background pool, the evaluation's corpus) come back every
        # step with the same text: analyse each text once.
        self._token_cache: dict[str, list[str]] = {}

    @property
    def analyzer(self) -> Any:
        if self._analyzer is None:
            self._analyzer = _default_analyzer()
        return self._analyzer

    def score(self, query_texts: Sequence[str], doc_texts: Sequence[str]) -> np.ndarray:
        """``[len(query_texts), len(doc_texts)]`` scores of raw texts (analysed here, documents once per text)."""
        return self.score_tokens(self.analyzer.tokenize(list(query_texts)), self._document_tokens(doc_texts))

    def _document_tokens(self, texts: Sequence[str]) -> list[list[str]]:
        cache = self._token_cache
        if len(cache) > _TOKEN_CACHE_LIMIT:
            cache.clear()  # expanded texts are new every step; keep memory bounded
        new = list(dict.fromkeys(t for t in texts if t not in cache))
        if new:
            cache.update(zip(new, self.analyzer.tokenize(new)))
        return [cache[t] for t in texts]

    def score_tokens(self, query_tokens: Sequence[Sequence[str]], doc_tokens: Sequence[Sequence[str]]) -> np.ndarray:
        """``[len(query_tokens), len(doc_tokens)]`` float64 scores of analysed token lists."""
        vocabulary, query_weights = self._query_weights(query_tokens)
        if not vocabulary or not doc_tokens:
            return np.zeros((len(query_tokens), len(doc_tokens)))
        term_counts, doc_lengths = _term_counts(doc_tokens, vocabulary)
        return self._scores(query_weights, term_counts, doc_lengths)

    def score_expanded_tokens(
        self,
        query_tokens: Sequence[Sequence[str]],
        base_doc_tokens: Sequence[Sequence[str]],
        expansion_tokens: Sequence[Sequence[str]],
        base_of_doc: Sequence[int] | np.ndarray,
    ) -> np.ndarray:
        """Scores of documents given as a shared base text plus a per-sample expansion.

        Document ``j`` is ``base_doc_tokens[base_of_doc[j]] + expansion_tokens[j]``; the result
        equals ``score_tokens(query_tokens, [base + expansion ...])`` but each base text is
        analysed and counted once, not once per sample. (The analysis works word by word, so
        tokenising ``base + " " + expansion`` gives the concatenated token lists.)

        >>> stats = CorpusStatistics(100, 4.0, {"vitamin": 5, "bone": 20})
        >>> bm25 = InBatchBM25(stats)
        >>> a = bm25.score_expanded_tokens([["vitamin"]], [["bone"]], [["vitamin"], []], [0, 0])
        >>> b = bm25.score_tokens([["vitamin"]], [["bone", "vitamin"], ["bone"]])
        >>> bool(np.allclose(a, b))
        True
        """
        base_of_doc = np.asarray(base_of_doc, dtype=np.int64)
        if base_of_doc.shape != (len(expansion_tokens),):
            raise DataError(
                f"base_of_doc has {base_of_doc.size} entries for {len(expansion_tokens)} expansions",
                hint="one base-document index per document sample",
            )
        if base_of_doc.size and (base_of_doc.min() < 0 or base_of_doc.max() >= len(base_doc_tokens)):
            raise DataError(
                f"base_of_doc must index the {len(base_doc_tokens)} base documents",
                hint="base_of_doc[j] is the position of sample j's base text in base_doc_tokens",
            )
        vocabulary, query_weights = self._query_weights(query_tokens)
        if not vocabulary or not expansion_tokens:
            return np.zeros((len(query_tokens), len(expansion_tokens)))
        base_counts, base_lengths = _term_counts(base_doc_tokens, vocabulary)
        expansion_counts, expansion_lengths = _term_counts(expansion_tokens, vocabulary)
        term_counts = (base_counts[base_of_doc] + expansion_counts).tocsr()
        return self._scores(query_weights, term_counts, base_lengths[base_of_doc] + expansion_lengths)

    def _query_weights(self, query_tokens: Sequence[Sequence[str]]) -> tuple[dict[str, int], np.ndarray]:
        """The batch vocabulary and the dense ``queries x terms`` matrix of ``count * idf``.

        Only terms that occur in some query can contribute, so the batch vocabulary is the
        query vocabulary; document tokens outside it only count towards document length.
        """
        vocabulary: dict[str, int] = {}
        add = vocabulary.setdefault
        term_ids = np.fromiter((add(t, len(vocabulary)) for t in chain.from_iterable(query_tokens)), dtype=np.int64)
        rows = np.repeat(np.arange(len(query_tokens)), _lengths(query_tokens))
        idf = self.statistics.idf(list(vocabulary), unseen=self.unseen)
        # csr_matrix sums duplicate (row, term) entries: a repeated query word counts again.
        weights = sp.csr_matrix((idf[term_ids], (rows, term_ids)), shape=(len(query_tokens), len(vocabulary)))
        return vocabulary, weights.toarray()

    def _scores(self, query_weights: np.ndarray, term_counts: sp.csr_matrix, doc_lengths: np.ndarray) -> np.ndarray:
        # Saturate each stored tf in place: tf / (tf + k1 * (1 - b + b * |d| / avgdl)).
        length_norm = self.k1 * (1.0 - self.b + self.b * doc_lengths / self.statistics.average_length)
        entry_doc = np.repeat(np.arange(term_counts.shape[0]), np.diff(term_counts.indptr))
        tf = term_counts.data
        term_counts.data = tf / (tf + length_norm[entry_doc])
        # (docs x terms) sparse @ (terms x queries) dense -> docs x queries, one product.
        return np.ascontiguousarray((term_counts @ query_weights.T).T)


def _term_counts(
    token_lists: Sequence[Sequence[str]], vocabulary: Mapping[str, int]
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``[len(token_lists), len(vocabulary)]`` term counts (tokens outside the vocabulary dropped) and lengths."""
    lengths = _lengths(token_lists)
    # map() over dict.get runs in C: this lookup is the only per-token work of a batch.
    flat_terms = np.fromiter(
        map(vocabulary.get, chain.from_iterable(token_lists), repeat(-1)), dtype=np.int64, count=int(lengths.sum())
    )
    rows = np.repeat(np.arange(len(token_lists)), lengths)
    known = flat_terms >= 0
    counts = sp.csr_matrix(
        (np.ones(int(known.sum())), (rows[known], flat_terms[known])), shape=(len(token_lists), len(vocabulary))
    )
    counts.sum_duplicates()
    return counts, lengths


def _lengths(token_lists: Sequence[Sequence[str]]) -> np.ndarray:
    return np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))


def _default_analyzer() -> Any:
    from searchrl.retrieval.bm25 import BM25Analyzer

    return BM25Analyzer()
