"""Cheap dev evaluation of an expansion policy while it trains, with the training scorer.

Evaluating on the whole corpus means expanding every document with the current policy — hours
on a CPU. During training the question is only "is the policy getting better?", so the dev
evaluation ranks a fixed *candidate slice* of the corpus: every document relevant to a dev
query, the unexpanded-BM25 top ``candidate_depth`` of each dev query (the hard part of the
ranking), and random documents up to ``candidate_docs``. ``candidate_docs=None`` uses the whole
corpus. ``expand_depth`` makes the document side cheaper still without hiding anything: only the
union of each dev query's unexpanded top-``expand_depth`` documents is expanded, every other
ranked document stays unexpanded (relevant documents are *not* added to that set, so the
evaluation never expands a document because it is relevant). :meth:`DevEvaluator.describe`
states in one line what is evaluated.

Queries are expanded in ``query``/``coaug`` mode and the slice's documents in
``document``/``coaug`` mode, greedily, with the same :class:`~searchrl.augment.ExpansionPolicy`
prompts and parser as training; texts are joined with :func:`~searchrl.data.query_text` /
:func:`~searchrl.data.document_text`, and scored with :class:`BatchScorer` — BM25 with the full
corpus's statistics, or dense cosine — exactly as the training reward scores them. Numbers are
therefore comparable across steps of one run (and with the unexpanded baseline on the same
slice), not with full-corpus evaluations: use ``searchrl augment`` + ``searchrl eval`` for those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from searchrl.augment import ExpansionPolicy
from searchrl.coaug.bm25 import CorpusStatistics, InBatchBM25
from searchrl.coaug.reward import cosine_score_matrix
from searchrl.data.types import Document, Qrels, document_text, judged_queries, query_text
from searchrl.errors import ConfigError

Mode = Literal["query", "document", "coaug"]


class BatchScorer:
    """Scores expanded query texts against expanded document texts: BM25 (corpus IDF) or cosine.

    ``retriever="bm25"`` uses :class:`~searchrl.coaug.bm25.InBatchBM25` with ``statistics``
    of the indexed (unexpanded) corpus; ``"dense"`` encodes with a
    :class:`~searchrl.retrieval.dense.DenseRetriever` (no embedding cache: texts change every step).

    >>> stats = CorpusStatistics.from_documents([Document("d1", "vitamin d and bone"), Document("d2", "heart")])
    >>> scorer = BatchScorer("bm25", statistics=stats)
    >>> scorer.score(["bone vitamin"], ["vitamin d and bone", "heart"]).argmax()
    np.int64(0)

    ``query_repeat`` is how many times an expanded query holds the original query
    (:func:`~searchrl.data.query_text`); every expanded query the reward and dev evaluation
    score is joined by :meth:`query_text`, so both weight the query alike.

    >>> BatchScorer("bm25", statistics=stats, query_repeat=2).query_text("bone", "calcium")
    'bone bone calcium'
    """

    def __init__(
        self,
        retriever: Literal["bm25", "dense"],
        *,
        statistics: CorpusStatistics | None = None,
        encoder: str | None = None,
        k1: float = 1.2,
        b: float = 0.75,
        unseen: str = "zero",
        device: str | None = None,
        query_repeat: int = 1,
    ) -> None:
        self.retriever = retriever
        if query_repeat < 1:
            raise ConfigError(f"query_repeat must be at least 1, got {query_repeat}")
        self.query_repeat = query_repeat
        if retriever == "bm25":
            if statistics is None:
                raise ConfigError("BM25 scoring needs corpus statistics")
            self.bm25 = InBatchBM25(statistics, k1=k1, b=b, unseen=unseen)
        elif retriever == "dense":
            from searchrl.retrieval.dense import DenseRetriever
            from searchrl.resolver import DEFAULT_ENCODER

            self.dense = DenseRetriever(encoder or DEFAULT_ENCODER, cache_dir=False, device=device)
        else:
            raise ConfigError(f"unknown retriever {retriever!r}", hint="use bm25 or dense")

    def query_text(self, query: str, expansion: str | None = None) -> str:
        """``query`` with its ``expansion``, the query weighted by :attr:`query_repeat`."""
        return query_text(query, expansion, repeat=self.query_repeat)

    def score(self, query_texts: Sequence[str], doc_texts: Sequence[str]) -> np.ndarray:
        """``[len(query_texts), len(doc_texts)]`` scores, higher = more relevant."""
        if self.retriever == "bm25":
            return self.bm25.score(list(query_texts), list(doc_texts))
        return cosine_score_matrix(self.dense.encode_queries(list(query_texts)), self.dense.encode_passages(list(doc_texts)))


def top_documents_per_query(
    corpus: Mapping[str, Document], queries: Mapping[str, str], scorer: BatchScorer, depth: int, *, chunk: int = 256
) -> dict[str, list[str]]:
    """``{query_id: its top-depth document ids, best first}`` under the unexpanded retriever.

    The one top-k of the co-augmentation: hard negatives, the background pool, skipped solved
    queries and the dev evaluation's candidate slice all come from it.

    Documents that share no term with the query (score 0 under BM25) are left out, as a
    retriever would not return them.
    """
    doc_ids = list(corpus)
    texts = [document_text(corpus[d]) for d in doc_ids]
    query_ids = list(queries)
    depth = min(depth, len(doc_ids))
    ranked: dict[str, list[str]] = {}
    for start in range(0, len(query_ids), chunk):
        part = query_ids[start : start + chunk]
        scores = scorer.score([query_text(queries[q]) for q in part], texts)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        for row, query_id in enumerate(part):
            ranked[query_id] = [doc_ids[j] for j in top[row] if scores[row, j] > 0 or scorer.retriever == "dense"]
    return ranked


def top_documents(
    corpus: Mapping[str, Document], queries: Mapping[str, str], scorer: BatchScorer, depth: int
) -> list[str]:
    """Union of each query's top-``depth`` documents under the unexpanded retriever, in corpus order."""
    if depth <= 0 or not queries or not corpus:
        return []
    chosen = {doc_id for docs in top_documents_per_query(corpus, queries, scorer, depth).values() for doc_id in docs}
    return [doc_id for doc_id in corpus if doc_id in chosen]


def select_candidates(
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    qrels: Qrels,
    scorer: BatchScorer,
    *,
    candidate_docs: int | None,
    candidate_depth: int = 20,
    seed: int = 0,
) -> list[str]:
    """The evaluation slice: relevant documents, each query's top ``candidate_depth``, random fill.

    With ``candidate_docs=None`` the whole corpus, in corpus order. The top documents come from
    unexpanded BM25/cosine over the whole corpus, so the slice holds the documents that compete
    with the relevant ones.
    """
    if candidate_docs is None:
        return list(corpus)
    chosen: dict[str, None] = {}
    for query_id in queries:
        for doc_id, grade in qrels.get(query_id, {}).items():
            if grade > 0 and doc_id in corpus:
                chosen[doc_id] = None
    if candidate_depth > 0 and queries:
        for ranked in top_documents_per_query(corpus, queries, scorer, candidate_depth).values():
            for doc_id in ranked:
                if len(chosen) >= candidate_docs:
                    break
                chosen[doc_id] = None
    rest = [d for d in corpus if d not in chosen]
    rng = np.random.default_rng(seed)
    fill = max(0, candidate_docs - len(chosen))
    for index in sorted(rng.choice(len(rest), size=min(fill, len(rest)), replace=False)):
        chosen[rest[index]] = None
    return list(chosen)


@dataclass
class DevEvaluator:
    """Dev nDCG@10 of a policy on a fixed query subset and candidate slice (see module docstring).

    Call :meth:`baseline` for the unexpanded retriever, :meth:`evaluate_engine` with any
    :class:`~searchrl.llm.engine.GenerationEngine`, or use the instance as the evaluation
    function of :class:`searchrl.training.DevEvaluationCallback` (``evaluator(model, tokenizer, step)``).
    """

    corpus: Mapping[str, Document]
    queries: dict[str, str]
    qrels: Qrels
    candidate_ids: list[str]
    scorer: BatchScorer
    policy: ExpansionPolicy
    mode: Mode = "coaug"
    batch_size: int = 16
    measures: tuple[str, ...] = ("ndcg@10", "recall@10", "mrr@10")
    expanded_ids: list[str] | None = None
    """Documents expanded in ``document``/``coaug`` mode (``None``: every candidate)."""
    total_queries: int | None = None
    """Judged dev queries the ``queries`` were sampled from (for :meth:`describe`)."""

    @classmethod
    def build(
        cls,
        corpus: Mapping[str, Document],
        queries: Mapping[str, str],
        qrels: Qrels,
        scorer: BatchScorer,
        policy: ExpansionPolicy,
        *,
        mode: Mode = "coaug",
        max_queries: int | None = None,
        candidate_docs: int | None = 500,
        candidate_depth: int = 20,
        expand_depth: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> "DevEvaluator":
        """Pick ``max_queries`` judged dev queries (seeded), the candidate slice and the documents to expand."""
        judged = judged_queries(queries, qrels)
        if not judged:
            raise ConfigError("the dev split has no query with a relevant document", hint="check dev qrels")
        total = len(judged)
        if max_queries is not None and max_queries < len(judged):
            rng = np.random.default_rng(seed)
            judged = [judged[i] for i in sorted(rng.choice(len(judged), size=max_queries, replace=False))]
        dev_queries = {q: queries[q] for q in judged}
        dev_qrels = {q: dict(qrels[q]) for q in judged}
        candidates = select_candidates(
            corpus, dev_queries, dev_qrels, scorer, candidate_docs=candidate_docs, candidate_depth=candidate_depth, seed=seed
        )
        expanded = None
        if expand_depth is not None and mode in ("document", "coaug"):
            in_slice = set(candidates)
            expanded = [d for d in top_documents(corpus, dev_queries, scorer, expand_depth) if d in in_slice]
        return cls(
            corpus, dev_queries, dev_qrels, candidates, scorer, policy, mode, batch_size,
            expanded_ids=expanded, total_queries=total,
        )

    def describe(self, *, expand_depth: int | None = None) -> str:
        """One line saying what is evaluated: queries, ranked documents, what is expanded.

        ``expand_depth`` only names the depth in the text (the set itself is :attr:`expanded_ids`).
        """
        ranked = len(self.candidate_ids)
        whole = ranked == len(self.corpus)
        retriever = "BM25 with the whole corpus's statistics" if self.scorer.retriever == "bm25" else "dense cosine"
        of = f" (a seeded sample of {self.total_queries})" if self.total_queries and self.total_queries > len(self.queries) else ""
        parts = [
            f"{len(self.queries)} dev queries{of}",
            f"ranking {'the whole corpus, ' if whole else 'a candidate slice of '}{ranked:,} documents, {retriever}",
        ]
        if self.mode in ("query", "coaug"):
            parts.append("queries expanded")
        if self.mode in ("document", "coaug"):
            expanded = ranked if self.expanded_ids is None else len(self.expanded_ids)
            if self.expanded_ids is None:
                parts.append(f"all {expanded:,} ranked documents expanded")
            else:
                depth = f"top-{expand_depth}" if expand_depth else "top"
                parts.append(
                    f"{expanded:,} documents expanded (the union of each dev query's unexpanded {depth}; "
                    "every other document unexpanded)"
                )
        return "; ".join(parts)

    # -- scoring -------------------------------------------------------------------------
    def _rank(self, query_expansions: Mapping[str, str], doc_expansions: Mapping[str, str]) -> dict[str, float]:
        from searchrl.metrics import evaluate_run

        query_ids = list(self.queries)
        q_texts = [self.scorer.query_text(self.queries[q], query_expansions.get(q)) for q in query_ids]
        d_texts = [document_text(self.corpus[d], doc_expansions.get(d)) for d in self.candidate_ids]
        scores = self.scorer.score(q_texts, d_texts)
        depth = min(100, len(self.candidate_ids))
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        # A document sharing no term with the query (BM25 score 0) is not retrieved, as in
        # `searchrl eval`: ranking such documents by tie order would pay for nothing.
        keep_zero = self.scorer.retriever == "dense"
        run = {
            q: {self.candidate_ids[j]: float(scores[row, j]) for j in top[row] if keep_zero or scores[row, j] > 0}
            for row, q in enumerate(query_ids)
        }
        aggregate, _ = evaluate_run(self.qrels, run, self.measures)
        return aggregate

    def baseline(self) -> dict[str, float]:
        """The retriever without any expansion, on the same queries and slice."""
        return self._rank({}, {})

    def evaluate_engine(self, engine: Any) -> dict[str, float]:
        """Expand (greedy) with ``engine`` under this policy, score, and return the metrics.

        Adds, per expanded side (``query_`` / ``doc_``): ``empty_rate`` (share of expansions that
        came out empty), ``format_ok_rate`` (share of well-formed completions) and
        ``expansion_words`` (mean words per expansion).
        """
        from searchrl.augment import augment_items

        metrics: dict[str, float] = {}
        query_expansions: dict[str, str] = {}
        doc_expansions: dict[str, str] = {}

        def record(prefix: str, parsed: Mapping[str, Any]) -> None:
            values = list(parsed.values())
            metrics[f"{prefix}_empty_rate"] = float(np.mean([not p.text for p in values])) if values else 0.0
            metrics[f"{prefix}_format_ok_rate"] = float(np.mean([p.ok for p in values])) if values else 0.0
            metrics[f"{prefix}_expansion_words"] = float(np.mean([len(p.text.split()) for p in values])) if values else 0.0

        if self.mode in ("query", "coaug"):
            parsed = augment_items(engine, self.policy, "query", self.queries, batch_size=self.batch_size, show_progress=False)
            query_expansions = {q: p.text for q, p in parsed.items()}
            record("query", parsed)
        if self.mode in ("document", "coaug"):
            ids = self.candidate_ids if self.expanded_ids is None else self.expanded_ids
            items = {d: document_text(self.corpus[d]) for d in ids}
            parsed = augment_items(engine, self.policy, "document", items, batch_size=self.batch_size, show_progress=False)
            doc_expansions = {d: p.text for d, p in parsed.items()}
            record("doc", parsed)
        metrics.update(self._rank(query_expansions, doc_expansions))
        return metrics

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        """Evaluate the in-memory policy being trained (no reload from disk)."""
        from searchrl.llm.transformers_engine import TransformersEngine
        from searchrl.training.trainer import merged_lora

        engine = TransformersEngine.from_model(model, tokenizer, batch_size=self.batch_size)
        with merged_lora(model):  # as a saved checkpoint is loaded for evaluation (and faster)
            return self.evaluate_engine(engine)


__all__ = ["BatchScorer", "DevEvaluator", "select_candidates", "top_documents", "top_documents_per_query"]
