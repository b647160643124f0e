"""The records every part of searchrl passes around."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Document:
    """One retrievable unit: a BEIR document, a chunk of a text file, a distractor."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True, slots=True)
class QAExample:
    """A question with one or more acceptable answers and, optionally, the ids of gold documents."""

    id: str
    question: str
    answers: tuple[str, ...]
    gold_ids: tuple[str, ...] = field(default=())


Qrels = dict[str, dict[str, int]]
"""``{query_id: {doc_id: relevance}}`` as in TREC/BEIR qrels."""

Run = dict[str, dict[str, float]]
"""``{query_id: {doc_id: score}}``, a ranked result list per query."""


def judged_queries(queries: Iterable[str], qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The queries with at least one relevant document, in query order.

    >>> judged_queries(["q1", "q2", "q3"], {"q1": {"d": 0}, "q2": {"d": 2}})
    ['q2']
    """
    return [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]


def document_text(doc: Document, expansion: str | None = None) -> str:
    """The text a retriever indexes for ``doc``: title, body, then an optional expansion.

    This single function is used when indexing for evaluation *and* when computing
    rewards during training, so expansions are appended identically in both.
    """
    parts = [p for p in (doc.title.strip(), doc.text.strip(), (expansion or "").strip()) if p]
    return " ".join(parts)


def query_text(query: str, expansion: str | None = None, *, repeat: int = 1) -> str:
    """A query extended by an optional expansion (appended, never replacing the query).

    With ``repeat`` > 1 an expanded query holds the original query ``repeat`` times before the
    expansion — query2doc's weighting for sparse retrievers (Wang et al., 2023,
    arXiv 2303.07678): BM25 counts a repeated query word once per occurrence, so a short query
    keeps its weight against a longer expansion. Without an expansion the query is returned as
    it is (repeating every word scales every BM25 score alike and changes no ranking).

    >>> query_text("vitamin d", "bone density")
    'vitamin d bone density'
    >>> query_text("vitamin d", "bone density", repeat=2)
    'vitamin d vitamin d bone density'
    >>> query_text("vitamin d", None, repeat=2)
    'vitamin d'
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    expansion = (expansion or "").strip()
    query = query.strip()
    return " ".join([query] * repeat + [expansion]) if expansion else query
