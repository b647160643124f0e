"""BEIR folders: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (each plain or ``.gz``).

* corpus lines: ``{"_id": ..., "title": ..., "text": ...}`` (other keys are ignored); Pyserini
  and FlashRAG ``{"id", "contents"}`` corpora are read too (see :mod:`searchrl.data.formats`);
* query lines: ``{"_id": ..., "text": ...}``, or tab-separated ``id<TAB>text`` topic files;
* qrels: tab-separated ``query-id  corpus-id  score``, with or without that header line, or
  TREC's four columns ``query-id iteration corpus-id score``.
  Rows with score 0 (or below) are kept, and count as judged non-relevant.

Every ``path`` may also be ``hf:OWNER/NAME``, a Hub data set in BEIR layout (:mod:`searchrl.data.hub`).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from searchrl.data.formats import (
    ID_KEYS,
    check_corpus_format,
    corpus_files,
    detect_corpus_format,
    document_parser,
    is_tsv_topics,
    load_tsv_queries,
)
from searchrl.data.hub import resolve_data_path
from searchrl.data.io import iter_jsonl, iter_lines, resolve_data_file, string_field, unique_record_id
from searchrl.data.types import Document, Qrels
from searchrl.errors import DataError

QRELS_HEADER_SCORE_NAMES = {"score", "relevance", "rel", "label"}
"""A first qrels line whose third column is one of these is a header, not data."""

_EXAMPLE_IDS_SHOWN = 5


def iter_corpus(path: str | Path, *, format: str | None = None) -> Iterator[Document]:
    """Stream the documents of a corpus: a BEIR ``corpus.jsonl`` (or ``.gz``, or a folder holding
    one), a Pyserini/FlashRAG JSONL file or a folder of them, or ``hf:OWNER/NAME``.

    ``format`` (``beir``, ``pyserini``, ``flashrag``) is detected from the first records when not
    given (:func:`~searchrl.data.formats.detect_corpus_format`). Reads one line at a time, so the
    corpus never has to fit in memory twice. Raises :class:`DataError` on malformed lines, a
    missing id or a duplicate id. Documents whose title and text are both empty are yielded
    too; when the corpus has been read to the end a warning reports how many there were and
    the first ids.
    """
    files = corpus_files(path)
    format = check_corpus_format(format) if format else detect_corpus_format(files)
    parse = document_parser(format)
    seen: dict[str, int] = {}
    empty_ids: list[str] = []
    for file in files:
        for line, record in iter_jsonl(file):
            doc_id = unique_record_id(
                record, file, line, seen, label="document id", hint="document ids must be unique", keys=ID_KEYS[format]
            )
            doc = parse(record, doc_id, file, line)
            if not doc.text.strip() and not doc.title.strip():
                empty_ids.append(doc_id)
            yield doc
    if empty_ids:
        where = files[0] if len(files) == 1 else files[0].parent
        warnings.warn(_empty_message(where, "documents", empty_ids), stacklevel=2)


def _empty_message(path: Path, what: str, ids: list[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLE_IDS_SHOWN]) + (", ..." if len(ids) > _EXAMPLE_IDS_SHOWN else "")
    return f"{path}: {len(ids)} empty {what} kept (no text; they can never match a query): {shown}"


def load_corpus(path: str | Path, *, format: str | None = None) -> dict[str, Document]:
    """All documents of a corpus as ``{doc_id: Document}``, in file order (see :func:`iter_corpus`)."""
    return {doc.id: doc for doc in iter_corpus(path, format=format)}


def load_queries(path: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from a BEIR ``queries.jsonl`` (or ``.gz``, or the folder holding it) or a
    tab-separated ``id<TAB>text`` topic file; duplicate or missing ids raise."""
    path = resolve_data_path(path)
    if path.is_dir():
        path = resolve_data_file(path, "queries.jsonl")
    elif path.is_file() and is_tsv_topics(path):
        return load_tsv_queries(path)
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


def _column_error(columns: int, fields: list[str], text: str, path: Path, line: int) -> DataError:
    if columns == 4:
        return DataError(
            f"expected 4 columns (query-id, iteration, corpus-id, score) like the first line, found {len(fields)}: "
            f"{text[:80]!r}",
            path=path,
            line=line,
            hint="TREC qrels are `query-id 0 corpus-id score` on every line",
        )
    return DataError(
        f"expected 3 columns (query-id, corpus-id, score), found {len(fields)}: {text[:80]!r}",
        path=path,
        line=line,
        hint="BEIR qrels are tab-separated `query-id corpus-id score` and TREC qrels have 4 columns "
        "`query-id 0 corpus-id score`; one file holds one kind",
    )


def load_qrels(
    path: str | Path,
    *,
    query_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> Qrels:
    """Relevance judgments ``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV or a TREC qrels file.

    The first data line decides the kind: 3 columns is BEIR (the header line ``query-id
    corpus-id score`` is optional), 4 is TREC (``query-id iteration corpus-id score``, the
    iteration ignored); every line must then have as many. Every row is kept, including
    relevance 0 (judged non-relevant). When ``query_ids`` / ``doc_ids`` are given, a row naming
    an id outside them raises :class:`DataError`, as do a wrong number of columns, a
    non-integer relevance and two rows giving the same pair different relevance.
    """
    path = Path(path)
    qrels: Qrels = {}
    known_queries = None if query_ids is None else set(query_ids)
    known_docs = None if doc_ids is None else set(doc_ids)
    columns: int | None = None
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        fields = _split_qrels_line(text)
        if line == 1 and _is_header(fields):
            continue
        if columns is None and len(fields) in (3, 4):
            columns = len(fields)
        if len(fields) != (columns or 3):
            raise _column_error(columns or 3, fields, text, path, line)
        if columns == 4:
            query_id, _, doc_id, raw_score = fields
        else:
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
    qrels_dir = resolve_data_path(directory) / "qrels"
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


def check_split_name(split: str) -> None:
    """A split is a plain file name (``dev``, ``test``, ``train-v2``): never a path out of ``qrels/``.

    >>> check_split_name("dev")
    >>> check_split_name("../../etc/passwd")
    Traceback (most recent call last):
    searchrl.errors.DataError: split '../../etc/passwd' must be a plain name such as dev or test (a name in qrels/, without folders)
    """
    if (
        not isinstance(split, str)
        or split in ("", ".", "..")
        or Path(split).name != split
        or any(ch in split for ch in "/\\\0")
    ):
        raise DataError(f"split {split!r} must be a plain name such as dev or test (a name in qrels/, without folders)")


def qrels_path(directory: str | Path, split: str) -> Path:
    """``directory/qrels/<split>.tsv`` (or ``.gz``); an unknown split raises listing the available ones."""
    check_split_name(split)
    directory = resolve_data_path(directory)
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


def load_beir(directory: str | Path, split: str, *, format: str | None = None) -> BeirDataset:
    """Load a BEIR folder (or ``hf:OWNER/NAME``) for ``split``: the whole corpus, and the queries
    and qrels of that split.

    Every qrels row must name a query of ``queries.jsonl`` and a document of the corpus;
    ``.queries`` holds only the queries that the split judges. ``format`` names the corpus
    format when ``corpus.jsonl`` is not BEIR's own (see :func:`iter_corpus`).
    """
    directory = resolve_data_path(directory)
    split_qrels = qrels_path(directory, split)
    corpus = load_corpus(resolve_data_file(directory, "corpus.jsonl"), format=format)
    all_queries = load_queries(resolve_data_file(directory, "queries.jsonl"))
    qrels = load_qrels(split_qrels, query_ids=all_queries.keys(), doc_ids=corpus.keys())
    if not qrels:
        raise DataError("the qrels file has no judgments", path=split_qrels)
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, directory=directory, split=split)
