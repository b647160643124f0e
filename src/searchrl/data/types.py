"""The records every part of searchrl passes around."""

from __future__ import annotations

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


def document_text(doc: Document, expansion: str | None = None) -> str:
    """The text a retriever indexes for ``doc``: title, body, then an optional expansion.

    This single function is used when indexing for evaluation *and* when computing
    rewards during training, so expansions are appended identically in both.
    """
    parts = [p for p in (doc.title.strip(), doc.text.strip(), (expansion or "").strip()) if p]
    return " ".join(parts)


def query_text(query: str, expansion: str | None = None) -> str:
    """A query extended by an optional expansion (appended, never replacing the query)."""
    expansion = (expansion or "").strip()
    return f"{query.strip()} {expansion}" if expansion else query.strip()
