"""The field's file formats, read the way their own tools read them, and TREC run files written.

Corpora (JSONL, plain or ``.gz``; a file, or a folder of them):

* ``beir``: ``{"_id", "title", "text"}`` (BEIR's ``corpus.jsonl``);
* ``pyserini``: ``{"id", "contents"}`` (Pyserini/Anserini ``JsonCollection``; an optional
  ``"title"`` field is kept as the title). ``contents`` is the text, as Pyserini indexes it.
  A folder of ``.jsonl``/``.json`` files is one collection, as ``-collection JsonCollection`` reads it;
* ``flashrag``: ``{"id", "contents"}`` where the first line of ``contents`` is the title, in
  quotes — FlashRAG and Search-R1 split ``"Title"\\ntext`` this way, stripping the quotes.

:func:`detect_corpus_format` looks at the first records and names one format, or raises
:class:`DataError` saying which ``--format`` to pass when the records fit more than one (a
``contents`` field whose first line may or may not be a title, say). It never guesses.

Queries: BEIR JSONL (``{"_id", "text"}``) or tab-separated ``id<TAB>text`` lines (Pyserini and
MS MARCO topic files). Qrels: BEIR's 3 columns or TREC's 4 (``qid iteration docid relevance``),
read by :func:`searchrl.data.beir.load_qrels`. Runs: TREC's 6 columns
``qid Q0 docid rank score tag`` (:func:`read_trec_run`, :func:`write_trec_run`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from searchrl.data.io import iter_jsonl, iter_lines, string_field
from searchrl.data.types import Document, Run
from searchrl.errors import ConfigError, DataError

CORPUS_FORMATS = ("beir", "pyserini", "flashrag")
"""Names accepted by ``--format`` for JSONL corpora."""

DETECTION_SAMPLE = 200
"""Records looked at by :func:`detect_corpus_format`."""

_JSONL_SUFFIXES = (".jsonl", ".json")
_QUOTED_FIRST_LINE = re.compile(r'^\s*"[^"\n]*"\s*\n')
_FORMAT_HINT = "pass --format beir, --format pyserini or --format flashrag"


def check_corpus_format(name: str) -> str:
    """``name`` lower-cased if it is one of :data:`CORPUS_FORMATS`, else :class:`ConfigError`."""
    value = name.strip().lower()
    if value not in CORPUS_FORMATS:
        raise ConfigError(f"unknown corpus format {name!r}", hint=f"use one of {', '.join(CORPUS_FORMATS)}")
    return value


def is_jsonl_file(path: Path) -> bool:
    """True for ``*.jsonl`` / ``*.json`` files, plain or ``.gz``."""
    return path.is_file() and path.name.removesuffix(".gz").endswith(_JSONL_SUFFIXES)


def corpus_files(path: str | Path) -> list[Path]:
    """The JSONL files that make up the corpus at ``path``.

    A BEIR folder gives its ``corpus.jsonl`` (or ``.gz``); a folder without one gives all its
    ``.jsonl``/``.json`` files in name order (a Pyserini collection); a file gives itself. An
    ``hf:OWNER/NAME`` reference is first fetched into a local BEIR folder (see :mod:`searchrl.data.hub`).
    """
    from searchrl.data.hub import resolve_data_path

    path = resolve_data_path(path)
    if not path.exists():
        raise DataError("not found", path=path, hint="check the path")
    if not path.is_dir():
        return [path]
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (path / name).is_file():
            return [path / name]
    if (path / "queries.jsonl").exists() or (path / "qrels").is_dir():
        raise DataError("BEIR folder without corpus.jsonl", path=path, hint="add corpus.jsonl (or corpus.jsonl.gz)")
    shards = sorted(p for p in path.iterdir() if is_jsonl_file(p))
    if not shards:
        present = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "none"
        raise DataError(
            "no corpus.jsonl and no .jsonl files here", path=path, hint=f"files present: {present}"
        )
    return shards


# --- corpus records ------------------------------------------------------------------------------


def split_flashrag_contents(contents: str) -> tuple[str, str]:
    """``(title, text)`` from FlashRAG's ``contents``: the first line, quotes stripped, is the title.

    >>> split_flashrag_contents('"Apollo 13"\\nThe seventh crewed mission.')
    ('Apollo 13', 'The seventh crewed mission.')
    """
    first, _, rest = contents.partition("\n")
    return first.strip().strip('"'), rest


def _beir_document(record: dict, doc_id: str, path: Path, line: int) -> Document:
    if "contents" in record and "text" not in record and "title" not in record:
        raise DataError(
            "record has 'contents' but no 'text' or 'title' (a Pyserini/FlashRAG record in a BEIR corpus?)",
            path=path,
            line=line,
            hint=_FORMAT_HINT,
        )
    return Document(id=doc_id, text=string_field(record, "text", path, line), title=string_field(record, "title", path, line))


def _contents(record: dict, path: Path, line: int, format_name: str) -> str:
    if "contents" not in record:
        raise DataError(
            f"record has no 'contents' field (read as {format_name})",
            path=path,
            line=line,
            hint=f"fields present: {sorted(record)}; {_FORMAT_HINT}",
        )
    return string_field(record, "contents", path, line)


def _pyserini_document(record: dict, doc_id: str, path: Path, line: int) -> Document:
    return Document(
        id=doc_id, text=_contents(record, path, line, "pyserini"), title=string_field(record, "title", path, line)
    )


def _flashrag_document(record: dict, doc_id: str, path: Path, line: int) -> Document:
    title, text = split_flashrag_contents(_contents(record, path, line, "flashrag"))
    return Document(id=doc_id, text=text, title=title)


DocumentParser = Callable[[dict, str, Path, int], Document]

_PARSERS: dict[str, DocumentParser] = {
    "beir": _beir_document,
    "pyserini": _pyserini_document,
    "flashrag": _flashrag_document,
}

ID_KEYS: dict[str, tuple[str, ...]] = {
    "beir": ("_id", "id"),
    "pyserini": ("id", "_id", "docid"),
    "flashrag": ("id", "_id"),
}
"""Where each format keeps a document's id, in order of preference."""


def document_parser(format_name: str) -> DocumentParser:
    """``parse(record, doc_id, path, line) -> Document`` for a corpus format."""
    return _PARSERS[check_corpus_format(format_name)]


def detect_corpus_format(path: str | Path | list[Path], *, sample: int = DETECTION_SAMPLE) -> str:
    """The format of a JSONL corpus, judged from its first ``sample`` records.

    ``"beir"`` when records carry ``text``/``title``; for ``contents`` records ``"flashrag"``
    when every one starts with a quoted first line (``"Title"\\n...``) and ``"pyserini"`` when none
    holds a line break or they carry a separate ``title``. Anything else raises
    :class:`DataError` naming the ``--format`` to pass.
    """
    files = path if isinstance(path, list) else corpus_files(path)
    beir = contents = multiline = quoted = titled = 0
    where: tuple[Path, int] | None = None
    seen = 0
    for file in files:
        for line, record in iter_jsonl(file):
            has_contents = "contents" in record
            has_beir = "text" in record or ("title" in record and not has_contents)
            if has_contents and "text" in record:
                raise DataError(
                    "record has both 'contents' (Pyserini/FlashRAG) and 'text' (BEIR)",
                    path=file,
                    line=line,
                    hint=_FORMAT_HINT + " to say which one holds the document",
                )
            if has_contents:
                contents += 1
                value = record["contents"]
                if isinstance(value, str) and "\n" in value:
                    multiline += 1
                    quoted += bool(_QUOTED_FIRST_LINE.match(value))
                titled += "title" in record
            elif has_beir:
                beir += 1
            if where is None and (has_contents or has_beir):
                where = (file, line)
            seen += 1
            if seen >= sample:
                break
        if seen >= sample:
            break
    if beir and contents:
        raise DataError(
            "records mix BEIR fields ('text', 'title') and 'contents' (Pyserini/FlashRAG)",
            path=files[0],
            hint=_FORMAT_HINT,
        )
    if contents:
        if titled or not multiline:
            return "pyserini"
        if quoted == contents:
            return "flashrag"
        raise DataError(
            f"cannot tell whether the first line of 'contents' is a title: {multiline} of {contents} records "
            f"have line breaks, {quoted} start with a quoted line",
            path=files[0],
            hint="pass --format flashrag (first line is the title) or --format pyserini (contents is all text)",
        )
    if seen and not beir:
        raise DataError(
            "no record has a 'text', 'title' or 'contents' field",
            path=files[0],
            hint="expected BEIR {\"_id\", \"title\", \"text\"} or Pyserini/FlashRAG {\"id\", \"contents\"} lines",
        )
    return "beir"


# --- queries ---------------------------------------------------------------------------------------


def is_tsv_topics(path: Path) -> bool:
    """True when the first non-blank line of ``path`` is ``id<TAB>text`` rather than a JSON object."""
    for _, text in iter_lines(path):
        if text.strip():
            return not text.lstrip().startswith("{") and "\t" in text
    return False


def load_tsv_queries(path: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from tab-separated ``id<TAB>text`` lines (Pyserini / MS MARCO topics)."""
    path = Path(path)
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != 2 or not fields[0].strip():
            raise DataError(
                f"expected 2 tab-separated columns (id, text), found {len(fields)}: {text[:80]!r}",
                path=path,
                line=line,
                hint="topic files are `id<TAB>query text` lines; JSONL queries are {\"_id\", \"text\"} objects",
            )
        query_id = fields[0].strip()
        if query_id in first_line:
            raise DataError(
                f"duplicate query id {query_id!r} (first seen on line {first_line[query_id]})",
                path=path,
                line=line,
                hint="query ids must be unique",
            )
        first_line[query_id] = line
        queries[query_id] = fields[1].strip()
    return queries


# --- TREC runs -------------------------------------------------------------------------------------


def read_trec_run(path: str | Path) -> Run:
    """``{query_id: {doc_id: score}}`` from a TREC run file (``qid Q0 docid rank score tag`` lines).

    The rank column is not used (as in trec_eval, scores order the results). Raises
    :class:`DataError` naming the line for a wrong column count, a non-numeric score and a
    document listed twice for one query.
    """
    path = Path(path)
    run: Run = {}
    for line, text in iter_lines(path):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DataError(
                f"expected 6 columns (qid Q0 docid rank score tag), found {len(fields)}: {text[:80]!r}",
                path=path,
                line=line,
                hint="a TREC run has one result per line: `qid Q0 docid rank score tag`",
            )
        query_id, _, doc_id, _, raw_score, _ = fields
        try:
            score = float(raw_score)
        except ValueError:
            raise DataError(f"score must be a number, found {raw_score!r}", path=path, line=line) from None
        hits = run.setdefault(query_id, {})
        if doc_id in hits:
            raise DataError(
                f"query {query_id!r} lists document {doc_id!r} twice", path=path, line=line, hint="keep one line per pair"
            )
        hits[doc_id] = score
    if not run:
        raise DataError("the run file holds no results", path=path)
    return run


def format_trec_score(score: float) -> str:
    """The shortest text that reads back as exactly ``score`` (so a rescored run ties and ranks alike)."""
    return repr(float(score))


def trec_run_lines(run: Mapping[str, Mapping[str, float]], *, tag: str = "searchrl") -> Iterable[str]:
    """TREC run lines, each query's results by descending score (ties keep the run's order)."""
    if not tag or any(c.isspace() for c in tag):
        raise ConfigError(f"run tag must be one word, got {tag!r}")
    for query_id, hits in run.items():
        ranked = sorted(hits.items(), key=lambda item: -float(item[1]))
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            for name, value in (("query", query_id), ("document", doc_id)):
                if not str(value) or any(c.isspace() for c in str(value)):
                    raise DataError(
                        f"{name} id {str(value)!r} is empty or contains white space and cannot be written to a TREC run",
                        hint="TREC files separate columns by white space",
                    )
            yield f"{query_id} Q0 {doc_id} {rank} {format_trec_score(score)} {tag}\n"


def write_trec_run(path: str | Path, run: Mapping[str, Mapping[str, float]], *, tag: str = "searchrl") -> int:
    """Write ``run`` as a TREC run file, atomically; returns the number of lines.

    Scores are written exactly (shortest round-trip text), so scoring the file with trec_eval
    or ir-measures ranks and ties the documents exactly as the in-memory run did.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for text in trec_run_lines(run, tag=tag):
                handle.write(text)
                count += 1
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count
