"""Per-step prompt batches for co-augmentation ("composite sampling").

A step takes ``queries_per_step`` training queries. Each query brings a group of
``group_size`` prompts: the query itself, ``relevant_per_query`` of its relevant documents,
``hard_negatives`` documents a retriever ranked high that are not relevant to it, and random
negatives — documents relevant to no query in the qrels — to fill the group. The in-batch
pool every query is ranked against is all documents of all groups.

``background`` adds, for each query of the step, its top-``background`` documents under the
unexpanded retriever over the whole corpus (``background_candidates``) as *unexpanded*
documents that are in every pool. With a handful of in-batch documents the ranking is too easy
(every sample ranks its own document first and the rewards of a group tie); against the
documents that really compete with the relevant ones, an expansion that moves a relevant
document up or down changes its reward, as it changes the evaluation's nDCG. Background
documents are never expanded (no prompt, one sample each) and never duplicate an in-batch
document.

``mode`` decides which prompts the policy expands: ``"coaug"`` both sides, ``"query"`` only
queries (documents enter the pool as they are), ``"document"`` only documents (queries are
used as they are). The items are the same in every mode; only ``BatchItem.expand`` differs.

Batches are deterministic given ``seed`` and the step number, and can be built in any order
(``build(step)`` needs no earlier step), so a resumed run sees the batches it would have seen.
Each epoch is a fresh permutation of the training queries cut into full steps; the queries
left over at the end of an epoch's permutation are skipped in that epoch only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from searchrl.data.types import Document, Qrels, document_text
from searchrl.errors import ConfigError, DataError

Mode = Literal["query", "document", "coaug"]
Role = Literal["query", "document"]
Kind = Literal["query", "relevant", "hard_negative", "random_negative", "background"]

MODES = ("query", "document", "coaug")


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One prompt of a step: a query or a document, and whether the policy expands it.

    Attributes:
        role: ``"query"`` or ``"document"``.
        kind: ``"query"``, ``"relevant"`` (relevant to its group's query), ``"hard_negative"``,
            ``"random_negative"`` or ``"background"`` (an unexpanded competitor in every pool).
        item_id: the query id or document id.
        text: the text to expand (``document_text(doc)`` for documents).
        group: index of the query group (0 .. queries_per_step - 1) the item belongs to.
        expand: ``True`` if the policy generates expansions for it in this mode; ``False``
            if it enters the pool unexpanded (as a single sample).
    """

    role: Role
    kind: Kind
    item_id: str
    text: str
    group: int
    expand: bool


@dataclass(frozen=True)
class CoAugBatch:
    """The prompts of one training step and the relevance between its queries and documents.

    ``items`` are in group order (each group: its query, then its documents).
    ``relevance[i, j]`` is the qrels grade of ``documents[j]`` for ``queries[i]`` (0 = not
    relevant), looked up for every pair, not only within a group.
    """

    step: int
    mode: Mode
    items: tuple[BatchItem, ...]
    relevance: np.ndarray

    @property
    def queries(self) -> list[BatchItem]:
        """Query items, in the order of ``relevance`` rows."""
        return [item for item in self.items if item.role == "query"]

    @property
    def documents(self) -> list[BatchItem]:
        """Document items, in the order of ``relevance`` columns."""
        return [item for item in self.items if item.role == "document"]

    @property
    def prompts(self) -> list[BatchItem]:
        """The items the policy generates for in this mode."""
        return [item for item in self.items if item.expand]

    def sample_layout(self, samples_per_prompt: int) -> tuple[np.ndarray, np.ndarray]:
        """``(query_prompt_of_sample, doc_prompt_of_sample)`` for the reward.

        Assumes samples are laid out query by query (rows of ``relevance``) and document by
        document (columns), with ``samples_per_prompt`` samples for an expanded item and a
        single one (its own text) for an unexpanded item.
        """
        if samples_per_prompt < 1:
            raise ConfigError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")

        def layout(items: list[BatchItem]) -> np.ndarray:
            counts = [samples_per_prompt if item.expand else 1 for item in items]
            return np.repeat(np.arange(len(items)), counts)

        return layout(self.queries), layout(self.documents)


class CoAugBatchBuilder:
    """Assembles the prompt batch of each training step.

    Args:
        corpus: ``{doc_id: Document}`` of the indexed corpus.
        queries: ``{query_id: text}`` of the training split.
        qrels: training qrels; a query needs at least one document with grade > 0 to be used.
            Documents with a positive grade for *any* query never serve as random negatives.
        mode: ``"coaug"``, ``"query"`` or ``"document"`` (which side the policy expands).
        queries_per_step: query groups per step (CoAug: 32).
        group_size: prompts per group, the query included (CoAug: 16).
        relevant_per_query: relevant documents per group (CoAug: 5).
        relevant_with_replacement: draw relevant documents with replacement (CoAug's choice:
            always ``relevant_per_query`` of them, repeats possible) or without (at most as many
            as the query has; the group is filled with random negatives).
        hard_negatives: documents per group taken from ``hard_negative_candidates``.
        hard_negative_candidates: ``{query_id: [doc ids]}``, e.g. a retriever's top results;
            documents relevant to that query are skipped. Groups with too few candidates are
            filled with random negatives.
        background: unexpanded documents per query added to every pool (0: none).
        background_corpus: every corpus document not in the step joins the pool unexpanded
            (the query side is then ranked over the whole corpus, as evaluation ranks it).
        background_candidates: ``{query_id: [doc ids]}``, best first (a retriever's top results
            over the whole corpus, relevant documents included: they keep their grade).
        seed: the seed every draw derives from.

    >>> from searchrl.data import Document
    >>> corpus = {f"d{i}": Document(f"d{i}", f"text {i}") for i in range(10)}
    >>> builder = CoAugBatchBuilder(corpus, {"q1": "a claim"}, {"q1": {"d0": 1}},
    ...                             queries_per_step=1, group_size=4, relevant_per_query=1)
    >>> batch = builder.build(0)
    >>> [(item.kind, item.item_id) for item in batch.items][:2], batch.relevance.shape
    ([('query', 'q1'), ('relevant', 'd0')], (1, 3))
    """

    def __init__(
        self,
        corpus: Mapping[str, Document],
        queries: Mapping[str, str],
        qrels: Qrels,
        *,
        mode: Mode = "coaug",
        queries_per_step: int = 32,
        group_size: int = 16,
        relevant_per_query: int = 5,
        relevant_with_replacement: bool = True,
        hard_negatives: int = 0,
        hard_negative_candidates: Mapping[str, Sequence[str]] | None = None,
        background: int = 0,
        background_candidates: Mapping[str, Sequence[str]] | None = None,
        background_corpus: bool = False,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown co-augmentation mode {mode!r}", hint=f"use one of {MODES}")
        if queries_per_step < 1 or relevant_per_query < 1 or hard_negatives < 0:
            raise ConfigError(
                "queries_per_step and relevant_per_query must be >= 1 and hard_negatives >= 0 "
                f"(got {queries_per_step}, {relevant_per_query}, {hard_negatives})"
            )
        if group_size < 1 + relevant_per_query + hard_negatives:
            raise ConfigError(
                f"group_size {group_size} cannot hold the query, {relevant_per_query} relevant documents "
                f"and {hard_negatives} hard negatives",
                hint=f"set group_size >= {1 + relevant_per_query + hard_negatives}",
            )
        if background < 0:
            raise ConfigError(f"background must be >= 0, got {background}")
        if background and background_candidates is None:
            raise ConfigError(
                f"background={background} needs background_candidates",
                hint="pass {query_id: [doc ids]} from a retriever's top results, or set background=0",
            )
        if hard_negatives and hard_negative_candidates is None:
            raise ConfigError(
                f"hard_negatives={hard_negatives} needs hard_negative_candidates",
                hint="pass {query_id: [doc ids]} from a retriever's top results, or set hard_negatives=0",
            )
        self.corpus = corpus
        self.queries = queries
        self.qrels = qrels
        self.mode: Mode = mode
        self.queries_per_step = queries_per_step
        self.group_size = group_size
        self.relevant_per_query = relevant_per_query
        self.relevant_with_replacement = relevant_with_replacement
        self.hard_negatives = hard_negatives
        self.hard_negative_candidates = hard_negative_candidates or {}
        self.background = background
        self.background_candidates = background_candidates or {}
        self.background_corpus = background_corpus
        self.seed = seed

        self._relevant = self._relevant_documents()
        self.training_query_ids: list[str] = [qid for qid in queries if qid in self._relevant]
        """Queries with at least one relevant document, in the order of ``queries``."""
        self.skipped_query_ids: list[str] = [qid for qid in queries if qid not in self._relevant]
        """Queries left out because the qrels give them no relevant document."""
        if len(self.training_query_ids) < queries_per_step:
            raise ConfigError(
                f"{len(self.training_query_ids)} training queries have a relevant document, "
                f"fewer than queries_per_step={queries_per_step}",
                hint="lower queries_per_step or check that the qrels match the queries",
            )
        relevant_to_any = {doc_id for grades in qrels.values() for doc_id, grade in grades.items() if grade > 0}
        self._random_pool = np.array(sorted(doc_id for doc_id in corpus if doc_id not in relevant_to_any), dtype=object)
        most_random = group_size - 1 - (relevant_per_query if relevant_with_replacement else 1)
        if len(self._random_pool) < most_random:
            raise ConfigError(
                f"only {len(self._random_pool)} documents are relevant to no query, "
                f"but a group may need {most_random} random negatives",
                hint="lower group_size",
            )

    @property
    def steps_per_epoch(self) -> int:
        """Full steps in one pass over the training queries."""
        return len(self.training_query_ids) // self.queries_per_step

    def epoch_order(self, epoch: int) -> list[str]:
        """The training queries in the order epoch ``epoch`` visits them."""
        rng = np.random.default_rng([self.seed, 0, epoch])
        return [self.training_query_ids[i] for i in rng.permutation(len(self.training_query_ids))]

    def build(self, step: int) -> CoAugBatch:
        """The batch of step ``step`` (0-based); same seed and step, same batch."""
        if step < 0:
            raise ConfigError(f"step must be >= 0, got {step}")
        epoch, slot = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        step_queries = order[slot * self.queries_per_step : (slot + 1) * self.queries_per_step]
        rng = np.random.default_rng([self.seed, 1, step])
        items: list[BatchItem] = []
        for group, query_id in enumerate(step_queries):
            items.extend(self._group(group, query_id, rng))
        items.extend(self._background(step_queries, items))
        queries = [item for item in items if item.role == "query"]
        documents = [item for item in items if item.role == "document"]
        relevance = np.array(
            [[max(self.qrels.get(q.item_id, {}).get(d.item_id, 0), 0) for d in documents] for q in queries],
            dtype=np.int64,
        ).reshape(len(queries), len(documents))
        return CoAugBatch(step=step, mode=self.mode, items=tuple(items), relevance=relevance)

    def batches(self, start_step: int = 0) -> Iterator[CoAugBatch]:
        """Endless batches from ``start_step`` on (resume by passing the next step)."""
        step = start_step
        while True:
            yield self.build(step)
            step += 1

    # -- one group ---------------------------------------------------------------------------

    def _group(self, group: int, query_id: str, rng: np.random.Generator) -> list[BatchItem]:
        expand_queries = self.mode in ("query", "coaug")
        expand_documents = self.mode in ("document", "coaug")

        relevant = self._relevant[query_id]
        if self.relevant_with_replacement:
            picks = rng.choice(len(relevant), size=self.relevant_per_query, replace=True)
        else:
            picks = rng.choice(len(relevant), size=min(self.relevant_per_query, len(relevant)), replace=False)
        relevant_ids = [relevant[i] for i in picks]

        hard_ids = self._hard_negatives(query_id, rng)
        in_group = set(relevant_ids) | set(hard_ids)
        random_ids = self._random_negatives(self.group_size - 1 - len(relevant_ids) - len(hard_ids), in_group, rng)

        def document_item(doc_id: str, kind: Kind) -> BatchItem:
            return BatchItem("document", kind, doc_id, document_text(self.corpus[doc_id]), group, expand_documents)

        return [
            BatchItem("query", "query", query_id, self.queries[query_id], group, expand_queries),
            *(document_item(d, "relevant") for d in relevant_ids),
            *(document_item(d, "hard_negative") for d in hard_ids),
            *(document_item(d, "random_negative") for d in random_ids),
        ]

    def _background(self, step_queries: Sequence[str], items: Sequence[BatchItem]) -> list[BatchItem]:
        """Each step query's top-``background`` candidates (or the whole corpus) not already in the step, unexpanded."""
        seen = {item.item_id for item in items if item.role == "document"}
        if self.background_corpus:
            # Group -1: these documents belong to no query's group; they are every query's competitors.
            return [
                BatchItem("document", "background", doc_id, document_text(doc), -1, False)
                for doc_id, doc in self.corpus.items()
                if doc_id not in seen
            ]
        if not self.background:
            return []
        background: list[BatchItem] = []
        for group, query_id in enumerate(step_queries):
            for doc_id in list(self.background_candidates.get(query_id, ()))[: self.background]:
                if doc_id in seen:
                    continue
                if doc_id not in self.corpus:
                    raise DataError(
                        f"background candidate {doc_id!r} of query {query_id!r} is not in the corpus",
                        hint="rank the candidates with a retriever indexed on the same corpus",
                    )
                seen.add(doc_id)
                text = document_text(self.corpus[doc_id])
                background.append(BatchItem("document", "background", doc_id, text, group, False))
        return background

    def _hard_negatives(self, query_id: str, rng: np.random.Generator) -> list[str]:
        if not self.hard_negatives:
            return []
        relevant = self.qrels.get(query_id, {})
        candidates: list[str] = []
        for doc_id in dict.fromkeys(self.hard_negative_candidates.get(query_id, ())):
            if doc_id not in self.corpus:
                raise DataError(
                    f"hard negative candidate {doc_id!r} of query {query_id!r} is not in the corpus",
                    hint="mine the candidates with a retriever indexed on the same corpus",
                )
            if relevant.get(doc_id, 0) <= 0:
                candidates.append(doc_id)
        if len(candidates) <= self.hard_negatives:
            return candidates
        return [candidates[i] for i in sorted(rng.choice(len(candidates), size=self.hard_negatives, replace=False))]

    def _random_negatives(self, count: int, exclude: set[str], rng: np.random.Generator) -> list[str]:
        if count <= 0:
            return []
        # Draw a few extra so that documents already in the group can be dropped.
        size = min(len(self._random_pool), count + len(exclude))
        chosen = self._random_pool[rng.choice(len(self._random_pool), size=size, replace=False)]
        drawn = [d for d in chosen if d not in exclude]
        if len(drawn) < count:
            raise ConfigError(
                f"not enough documents relevant to no query to fill a group ({len(drawn)} < {count})",
                hint="lower group_size",
            )
        return [str(d) for d in drawn[:count]]

    def _relevant_documents(self) -> dict[str, list[str]]:
        """``{query_id: sorted relevant doc ids}`` for the training queries that have any."""
        relevant: dict[str, list[str]] = {}
        for query_id in self.queries:
            grades = self.qrels.get(query_id, {})
            doc_ids = sorted(doc_id for doc_id, grade in grades.items() if grade > 0)
            missing = [doc_id for doc_id in doc_ids if doc_id not in self.corpus]
            if missing:
                raise DataError(
                    f"qrels of query {query_id!r} name {len(missing)} document(s) missing from the corpus, "
                    f"e.g. {missing[0]!r}",
                    hint="load the qrels with load_qrels(..., doc_ids=corpus) to keep only indexed documents",
                )
            if doc_ids:
                relevant[query_id] = doc_ids
        return relevant
