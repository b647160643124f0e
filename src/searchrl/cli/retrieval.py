"""``searchrl index``, ``searchrl search`` and ``searchrl eval``: retrieval from the command line.

* ``index`` builds a BM25, dense or hybrid index over a BEIR corpus or text/Markdown files and saves it;
* ``search`` queries a saved index (add ``--data`` to show titles and snippets);
* ``eval`` scores a retriever on a BEIR split: nDCG@10, recall@100, MRR@10 and MAP.

With ``--json`` exactly one JSON object is written to stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from searchrl.data import Document, query_text
from searchrl.data.beir import iter_corpus, load_beir
from searchrl.data.expansions import load_expansions
from searchrl.data.io import write_jsonl
from searchrl.data.text import TEXT_SUFFIXES, load_text_corpus
from searchrl.errors import ConfigError, DataError, IndexFileError
from searchrl.metrics import DEFAULT_MEASURES, evaluate_run, to_ir_measure
from searchrl.progress import stderr_console

DEFAULT_DEPTH = 100
"""Results retrieved per query for evaluation (recall@100 needs 100)."""

SNIPPET_CHARS = 160


class RetrieverKind(str, Enum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


# --- shared options ---------------------------------------------------------------------

RetrieverOption = Annotated[
    RetrieverKind, typer.Option("--retriever", "-r", help="bm25 (sparse), dense (sentence-transformers) or hybrid (RRF).")
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Dense encoder: a local folder or Hugging Face name (default all-MiniLM-L6-v2)."),
]
K1Option = Annotated[float, typer.Option("--k1", help="BM25 term-frequency saturation.")]
BOption = Annotated[float, typer.Option("--b", help="BM25 length normalisation.")]
QueryPrefixOption = Annotated[
    str, typer.Option("--query-prefix", help='Text put before each query for the dense encoder, e.g. "query: ".')
]
PassagePrefixOption = Annotated[
    str, typer.Option("--passage-prefix", help='Text put before each document for the dense encoder, e.g. "passage: ".')
]
ChunkSizeOption = Annotated[int, typer.Option("--chunk-size", help="Characters per chunk for text/Markdown files.")]
ChunkOverlapOption = Annotated[int, typer.Option("--chunk-overlap", help="Characters shared by consecutive chunks.")]


# --- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _readable_warnings() -> Iterator[None]:
    """Show library warnings as one ``warning:`` line on stderr instead of Python's two-line format."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        stderr_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _stdout_reserved_for_json(enabled: bool) -> Iterator[None]:
    """While computing, send anything a library prints to stderr so stdout holds only the JSON."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _is_beir_corpus_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("corpus.jsonl", "corpus.jsonl.gz"))


def _is_text_file(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(TEXT_SUFFIXES)


def iter_documents(data: Path, *, chunk_size: int = 1000, chunk_overlap: int = 100) -> Iterator[Document]:
    """Documents from ``data``: a BEIR folder or ``corpus.jsonl``, or text/Markdown files (a file or a folder)."""
    if not data.exists():
        raise DataError("not found", path=data, hint="--data takes a BEIR folder, a corpus.jsonl, or text/Markdown files")
    if _is_beir_corpus_dir(data) or (data.is_file() and data.name.removesuffix(".gz").endswith(".jsonl")):
        yield from iter_corpus(data)
    elif data.is_dir() or _is_text_file(data):
        yield from load_text_corpus(data, size=chunk_size, overlap=chunk_overlap)
    else:
        raise DataError(
            "cannot tell what kind of data this is",
            path=data,
            hint=f"expected a folder with corpus.jsonl, a .jsonl corpus, or files ending in {', '.join(TEXT_SUFFIXES)}",
        )


def _retriever_options(kind: RetrieverKind, k1: float, b: float, query_prefix: str, passage_prefix: str) -> dict:
    bm25 = {"k1": k1, "b": b}
    dense = {"query_prefix": query_prefix, "passage_prefix": passage_prefix}
    if kind is RetrieverKind.bm25:
        return bm25
    if kind is RetrieverKind.dense:
        return dense
    return bm25 | dense


def _build_retriever(kind: RetrieverKind, model: str | None, options: dict):
    from searchrl.retrieval import build_retriever

    return build_retriever(kind.value, model=model, **options)


def _load_retriever(directory: Path):
    from searchrl.retrieval import load_retriever

    return load_retriever(directory)


def _check_expansion_ids(expansions: Mapping[str, str], wanted_ids: list[str], path: Path, what: str) -> None:
    """Refuse an expansions file that matches none of ``wanted_ids``; warn when it covers only some."""
    if not expansions:
        warnings.warn(f"{path}: the expansions file is empty; {what} are used without expansions", stacklevel=2)
        return
    covered = sum(1 for item_id in wanted_ids if item_id in expansions)
    if covered == 0:
        example = next(iter(expansions))
        raise DataError(
            f"none of the {len(wanted_ids)} {what} has an expansion here (ids look like {example!r})",
            path=path,
            hint=f"is this the expansions file for the {what}?",
        )
    if covered < len(wanted_ids):
        missing = [item_id for item_id in wanted_ids if item_id not in expansions]
        warnings.warn(
            f"{path}: {len(missing)} of {len(wanted_ids)} {what} have no expansion and are used as they are "
            f"(first: {', '.join(missing[:5])})",
            stacklevel=2,
        )


def _check_output_file(path: Path | None, option: str) -> None:
    """Fail before any work when an output file cannot be written where it is asked for."""
    if path is not None and path.is_dir():
        raise ConfigError(f"{option} is a folder; it takes a file name", path=path, hint="e.g. per_query.jsonl")


def _parse_measures(measures: str) -> list[str]:
    names = [m.strip().lower() for m in measures.split(",") if m.strip()]
    if not names:
        raise ConfigError("--measures is empty", hint="e.g. --measures ndcg@10,recall@100")
    for name in names:
        to_ir_measure(name)  # fail before any work is done
    return names


def _depth_for(measures: list[str]) -> int:
    """How many results to retrieve: enough for the largest cutoff, and at least :data:`DEFAULT_DEPTH`."""
    cutoffs = [to_ir_measure(name).params.get("cutoff") for name in measures]
    return max([DEFAULT_DEPTH, *(c for c in cutoffs if isinstance(c, int))])


def _snippet(doc: Document | None) -> str:
    if doc is None:
        return ""
    text = " ".join(doc.text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"


def _print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --- commands ---------------------------------------------------------------------------


def index_command(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder, corpus.jsonl, or text/Markdown file(s) folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the index to.")],
    retriever: RetrieverOption = RetrieverKind.bm25,
    model: ModelOption = None,
    doc_expansions: Annotated[
        Path | None, typer.Option("--doc-expansions", help="JSONL of {id, expansion} appended to documents.")
    ] = None,
    k1: K1Option = 1.2,
    b: BOption = 0.75,
    query_prefix: QueryPrefixOption = "",
    passage_prefix: PassagePrefixOption = "",
    chunk_size: ChunkSizeOption = 1000,
    chunk_overlap: ChunkOverlapOption = 100,
) -> None:
    """Build a retrieval index over a corpus and save it to --out."""
    from searchrl.retrieval.base import check_index_target

    check_index_target(out)
    with _readable_warnings():
        documents = list(iter_documents(data, chunk_size=chunk_size, chunk_overlap=chunk_overlap))
        expansions = None
        if doc_expansions is not None:
            expansions = load_expansions(doc_expansions)
            _check_expansion_ids(expansions, [doc.id for doc in documents], doc_expansions, "documents")
        started = time.perf_counter()
        index = _build_retriever(retriever, model, _retriever_options(retriever, k1, b, query_prefix, passage_prefix))
        index.index(documents, doc_expansions=expansions, show_progress=True)
        index.save(out)
        seconds = time.perf_counter() - started
    stderr_console.print(
        f"indexed {len(documents):,} documents with {retriever.value} in {seconds:.1f} s -> {out}", highlight=False
    )


def search_command(
    query: Annotated[list[str], typer.Argument(help="The query; several words are joined with spaces.")],
    index: Annotated[Path, typer.Option("--index", help="Folder written by `searchrl index`.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    data: Annotated[
        Path | None, typer.Option("--data", help="The indexed corpus, to show titles and snippets.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    chunk_size: ChunkSizeOption = 1000,
    chunk_overlap: ChunkOverlapOption = 100,
) -> None:
    """Search a saved index and print the top-k documents."""
    if k <= 0:
        raise ConfigError(f"-k must be positive, got {k}")
    text = " ".join(query).strip()
    if not text:
        raise ConfigError("the query is empty", hint='e.g. searchrl search --index INDEX "oxygen tank"')
    with _readable_warnings(), _stdout_reserved_for_json(as_json):
        search_index = _load_retriever(index)
        hits = search_index.search([text], k=k)[0]
        documents: dict[str, Document] = {}
        if data is not None:
            documents = _documents_for_hits(data, hits, search_index.doc_ids, chunk_size, chunk_overlap)
    results = [
        {
            "rank": rank,
            "id": doc_id,
            "score": float(score),
            "title": documents[doc_id].title if doc_id in documents else None,
            "text": documents[doc_id].text if doc_id in documents else None,
        }
        for rank, (doc_id, score) in enumerate(hits, start=1)
    ]
    if as_json:
        _print_json({"query": text, "index": str(index), "results": results})
        return
    table = Table(title=escape(text), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("doc id", no_wrap=True)
    table.add_column("score", justify="right")
    if documents:
        table.add_column("title / snippet", overflow="fold")
    for row in results:
        cells = [str(row["rank"]), row["id"], f"{row['score']:.4f}"]
        if documents:
            doc = documents.get(row["id"])
            title = doc.title.strip() if doc else ""
            cells.append((f"[bold]{escape(title)}[/] " if title else "") + escape(_snippet(doc)))
        table.add_row(*cells)
    Console().print(table)
    if not results:
        stderr_console.print("no results")


def eval_command(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")],
    split: Annotated[str, typer.Option("--split", help="Qrels split to score: qrels/<split>.tsv.")] = "test",
    retriever: RetrieverOption = RetrieverKind.bm25,
    model: ModelOption = None,
    query_expansions: Annotated[
        Path | None, typer.Option("--query-expansions", help="JSONL of {id, expansion} appended to queries.")
    ] = None,
    doc_expansions: Annotated[
        Path | None, typer.Option("--doc-expansions", help="JSONL of {id, expansion} appended to documents.")
    ] = None,
    index: Annotated[
        Path | None, typer.Option("--index", help="Reuse an index saved by `searchrl index` instead of building one.")
    ] = None,
    k1: K1Option = 1.2,
    b: BOption = 0.75,
    query_prefix: QueryPrefixOption = "",
    passage_prefix: PassagePrefixOption = "",
    measures: Annotated[
        str, typer.Option("--measures", help="Comma-separated measures.")
    ] = ",".join(DEFAULT_MEASURES),
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
    per_query: Annotated[
        Path | None, typer.Option("--per-query", help="Write per-query scores as JSONL to this file.")
    ] = None,
) -> None:
    """Evaluate a retriever on a BEIR split (nDCG@10, recall@100, MRR@10, MAP)."""
    measure_names = _parse_measures(measures)
    _check_output_file(per_query, "--per-query")
    with _readable_warnings(), _stdout_reserved_for_json(as_json):
        dataset = load_beir(data, split)
        query_ids = list(dataset.queries)
        query_expansion_map: dict[str, str] = {}
        if query_expansions is not None:
            query_expansion_map = load_expansions(query_expansions)
            _check_expansion_ids(query_expansion_map, query_ids, query_expansions, f"{split} queries")

        started = time.perf_counter()
        if index is not None:
            search_index = _load_retriever(index)
            _check_index_matches(search_index, dataset.corpus, index)
            if doc_expansions is not None:
                warnings.warn(
                    f"--doc-expansions is ignored with --index: {index} holds the documents as they were indexed",
                    stacklevel=1,
                )
        else:
            doc_expansion_map = None
            if doc_expansions is not None:
                doc_expansion_map = load_expansions(doc_expansions)
                _check_expansion_ids(doc_expansion_map, list(dataset.corpus), doc_expansions, "documents")
            options = _retriever_options(retriever, k1, b, query_prefix, passage_prefix)
            search_index = _build_retriever(retriever, model, options)
            search_index.index(dataset.corpus.values(), doc_expansions=doc_expansion_map, show_progress=True)
        index_seconds = time.perf_counter() - started

        started = time.perf_counter()
        texts = {qid: query_text(dataset.queries[qid], query_expansion_map.get(qid)) for qid in query_ids}
        run = search_index.run(texts, k=_depth_for(measure_names), show_progress=True)
        search_seconds = time.perf_counter() - started
        aggregate, scores_by_query = evaluate_run(dataset.qrels, run, measure_names)

    if per_query is not None:
        write_jsonl(per_query, ({"query_id": qid, **scores} for qid, scores in scores_by_query.items()))

    report = {
        **aggregate,
        "num_queries": len(scores_by_query),
        "num_documents": len(dataset.corpus),
        "retriever": getattr(search_index, "name", retriever.value) if index is not None else retriever.value,
        "model": model,
        "split": split,
        "data": str(data),
        "index": None if index is None else str(index),
        "query_expansions": None if query_expansions is None else str(query_expansions),
        "doc_expansions": None if doc_expansions is None or index is not None else str(doc_expansions),
        "index_seconds": round(index_seconds, 3),
        "search_seconds": round(search_seconds, 3),
    }
    if as_json:
        _print_json(report)
        return
    table = Table(title=escape(f"{data.name or data} [{split}] · {report['retriever']}"), title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in measure_names:
        table.add_row(name, f"{aggregate[name]:.4f}")
    table.add_row("queries", f"{report['num_queries']:,}")
    table.add_row("documents", f"{report['num_documents']:,}")
    Console().print(table)


def _documents_for_hits(
    data: Path, hits: list[tuple[str, float]], indexed_ids: list[str], chunk_size: int, chunk_overlap: int
) -> dict[str, Document]:
    """The hit documents from ``data``, streamed; warns when ``data`` is not what the index was built from."""
    wanted = {doc_id for doc_id, _ in hits}
    documents: dict[str, Document] = {}
    indexed = set(indexed_ids)
    outside_index = 0
    seen = 0
    for doc in iter_documents(data, chunk_size=chunk_size, chunk_overlap=chunk_overlap):
        seen += 1
        outside_index += doc.id not in indexed
        if doc.id in wanted:
            documents[doc.id] = doc
    if outside_index or seen != len(indexed):
        warnings.warn(
            f"{data} holds {seen:,} documents and the index {len(indexed):,} ({outside_index:,} not indexed): "
            "snippets may not match the results (for text files, pass the --chunk-size/--chunk-overlap used "
            "by `searchrl index`)",
            stacklevel=1,
        )
    return documents


def _check_index_matches(search_index: Any, corpus: Mapping[str, Document], index_dir: Path) -> None:
    indexed = search_index.doc_ids
    if len(indexed) != len(corpus) or any(doc_id not in corpus for doc_id in indexed):
        outside = next((doc_id for doc_id in indexed if doc_id not in corpus), None)
        detail = f"e.g. {outside!r} is not in the corpus" if outside is not None else "some documents are missing"
        raise IndexFileError(
            f"the index holds {len(indexed):,} documents but the corpus has {len(corpus):,} ({detail})",
            path=index_dir,
            hint="rebuild it with `searchrl index --data` on this corpus, or leave out --index",
        )


def register(app: typer.Typer) -> None:
    """Add ``index``, ``search`` and ``eval`` to ``app``."""
    app.command("index")(index_command)
    app.command("search")(search_command)
    app.command("eval")(eval_command)
