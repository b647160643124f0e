"""BEIR folders: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (each plain or ``.gz``).

* corpus lines: ``{"_id": ..., "title": ..., "text": ...}`` (other keys are ignored);
* query lines: ``{"_id": ..., "text": ...}``;
* qrels: tab-separated ``query-id  corpus-id  score``, with or without that header line.
  Rows with score 0 (or below) are kept, and count as judged non-relevant.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from searchrl.data.io import iter_jsonl, iter_lines, resolve_data_file, string_field, unique_record_id
from searchrl.data.types import Document, Qrels
from searchrl.errors import DataError

QRELS_HEADER_SCORE_NAMES = {"score", "relevance", "rel", "label"}
"""A first qrels line whose third column is one of these is a header, not data."""

_EXAMPLE_IDS_SHOWN = 5


def _corpus_path(path: str | Path) -> Path:
    path = Path(path)
    return resolve_data_file(path, "corpus.jsonl") if path.is_dir() else path


def iter_corpus(path: str | Path) -> Iterator[Document]:
    """Stream the documents of a BEIR ``corpus.jsonl`` (or ``.gz``, or a folder holding one).

    Reads one line at a time, so the corpus never has to fit in memory twice. Raises
    :class:`DataError` on malformed lines, a missing ``_id`` or a duplicate id. Documents whose
    title and text are both empty are yielded too; when the file has been read to the end a
    warning reports how many there were and the first ids.
    """
    path = _corpus_path(path)
    seen: dict[str, int] = {}
    empty_ids: list[str] = []
    for line, record in iter_jsonl(path):
        doc_id = unique_record_id(record, path, line, seen, label="document id", hint="document ids must be unique")
        doc = Document(
            id=doc_id,
            text=string_field(record, "text", path, line),
            title=string_field(record, "title", path, line),
        )
        if not doc.text.strip() and not doc.title.strip():
            empty_ids.append(doc_id)
        yield doc
    if empty_ids:
        warnings.warn(_empty_message(path, "documents", empty_ids), stacklevel=2)


def _empty_message(path: Path, what: str, ids: list[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLE_IDS_SHOWN]) + (", ..." if len(ids) > _EXAMPLE_IDS_SHOWN else "")
    return f"{path}: {len(ids)} empty {what} kept (no text; they can never match a query): {shown}"


def load_corpus(path: str | Path) -> dict[str, Document]:
    """All documents of a BEIR corpus as ``{doc_id: Document}``, in file order (see :func:`iter_corpus`)."""
    return {doc.id: doc for doc in iter_corpus(path)}


def load_queries(path: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from a BEIR ``queries.jsonl`` (or ``.gz``); duplicate or missing ids raise."""
    path = Path(path)
    if path.is_dir():
        path = resolve_data_file(path, "queries.jsonl")
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    empty_ids: list[str] = []
    for line, record in iter_jsonl(path):
        query_id = unique_record_id(record, path, line, lines, label="query id", hint="query ids must be unique")
        text = string_field(record, "text", path, line, default=None)
        if not text.strip():
            empty_ids.append(query_id)
        queries[query_id] = text
    if empty_ids:
        warnings.warn(_empty_message(path, "queries", empty_ids), stacklevel=2)
    return queries


def _split_qrels_line(text: str) -> list[str]:
    # BEIR writes tabs; hand-made files often use spaces. Tabs win when present so that
    # ids containing spaces survive.
    return [field.strip() for field in text.split("\t")] if "\t" in text else text.split()


def _is_header(fields: list[str]) -> bool:
    return len(fields) == 3 and fields[2].lower() in QRELS_HEADER_SCORE_NAMES


def load_qrels(
    path: str | Path,
    *,
    query_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> Qrels:
    """Relevance judgments ``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV (or ``.gz``).

    The header line ``query-id corpus-id score`` is optional. Every row is kept, including
    relevance 0 (judged non-relevant). When ``query_ids`` / ``doc_ids`` are given, a row naming
    an id outside them raises :class:`DataError`, as do a wrong number of columns, a
    non-integer relevance and two rows giving the same pair different relevance.
    """
    path = Path(path)
    qrels: Qrels = {}
    known_queries = None if query_ids is None else set(query_ids)
    known_docs = None if doc_ids is None else set(doc_ids)
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        fields = _split_qrels_line(text)
        if line == 1 and _is_header(fields):
            continue
        if len(fields) != 3:
            raise DataError(
                f"expected 3 columns (query-id, corpus-id, score), found {len(fields)}: {text[:80]!r}",
                path=path,
                line=line,
                hint="BEIR qrels are tab-separated `query-id corpus-id score`; for 4-column TREC qrels "
                "drop the second (iteration) column",
            )
        query_id, doc_id, raw_score = fields
        try:
            relevance = int(raw_score)
        except ValueError:
            raise DataError(
                f"relevance must be an integer, found {raw_score!r}",
                path=path,
                line=line,
                hint="use graded integer labels such as 0, 1, 2",
            ) from None
        if known_queries is not None and query_id not in known_queries:
            raise DataError(
                f"unknown query id {query_id!r} (not in the queries file)",
                path=path,
                line=line,
                hint="the qrels and queries files do not belong together",
            )
        if known_docs is not None and doc_id not in known_docs:
            raise DataError(
                f"unknown document id {doc_id!r} (not in the corpus)",
                path=path,
                line=line,
                hint="the qrels and corpus files do not belong together",
            )
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != relevance:
            raise DataError(
                f"query {query_id!r} judges document {doc_id!r} twice, as {judged[doc_id]} and {relevance}",
                path=path,
                line=line,
                hint="keep one row per (query, document) pair",
            )
        judged[doc_id] = relevance
    return qrels


def available_splits(directory: str | Path) -> list[str]:
    """Names of the splits in ``directory/qrels`` (``dev`` for ``dev.tsv`` or ``dev.tsv.gz``), sorted."""
    qrels_dir = Path(directory) / "qrels"
    if not qrels_dir.is_dir():
        return []
    names = set()
    for path in qrels_dir.iterdir():
        name = path.name.removesuffix(".gz")
        if path.is_file() and name.endswith(".tsv"):
            names.add(name.removesuffix(".tsv"))
    return sorted(names)


@dataclass
class BeirDataset:
    """One split of a BEIR folder: the full corpus, the split's queries and their judgments."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: Qrels
    directory: Path
    split: str

    def __repr__(self) -> str:
        return (
            f"BeirDataset({str(self.directory)!r}, split={self.split!r}, documents={len(self.corpus)}, "
            f"queries={len(self.queries)}, judgments={sum(len(j) for j in self.qrels.values())})"
        )


def qrels_path(directory: str | Path, split: str) -> Path:
    """``directory/qrels/<split>.tsv`` (or ``.gz``); an unknown split raises listing the available ones."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("data directory not found", path=directory, hint="point --data at a BEIR folder")
    for name in (f"{split}.tsv", f"{split}.tsv.gz"):
        candidate = directory / "qrels" / name
        if candidate.is_file():
            return candidate
    splits = available_splits(directory)
    raise DataError(
        f"no qrels for split {split!r} (expected qrels/{split}.tsv)",
        path=directory,
        hint=f"available splits: {', '.join(splits)}" if splits else "the folder has no qrels/*.tsv files",
    )


def load_beir(directory: str | Path, split: str) -> BeirDataset:
    """Load a BEIR folder for ``split``: the whole corpus, and the queries and qrels of that split.

    Every qrels row must name a query of ``queries.jsonl`` and a document of the corpus;
    ``.queries`` holds only the queries that the split judges.
    """
    directory = Path(directory)
    split_qrels = qrels_path(directory, split)
    corpus = load_corpus(resolve_data_file(directory, "corpus.jsonl"))
    all_queries = load_queries(resolve_data_file(directory, "queries.jsonl"))
    qrels = load_qrels(split_qrels, query_ids=all_queries.keys(), doc_ids=corpus.keys())
    if not qrels:
        raise DataError("the qrels file has no judgments", path=split_qrels)
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, directory=directory, split=split)
