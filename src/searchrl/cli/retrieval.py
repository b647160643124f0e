"""``searchrl index``, ``searchrl search`` and ``searchrl eval``: retrieval from the command line.

* ``index`` builds a BM25, dense or hybrid index over a BEIR corpus or text/Markdown files and saves it;
* ``search`` queries a saved index (add ``--data`` to show titles and snippets);
* ``eval`` scores a retriever on a BEIR split (or a corpus with ``--queries``/``--qrels``):
  nDCG@10, recall@100, MRR@10 and MAP; ``--save-run`` writes the ranking as a TREC run, and
  ``--run FILE`` scores an existing TREC run instead of retrieving.

``--data`` takes BEIR folders, ``hf:OWNER/NAME`` Hub data sets, Pyserini/FlashRAG corpora and
text/Markdown files; ``--format`` names the kind when a file fits more than one.

With ``--json`` (``index``, ``search`` and ``eval``) exactly one JSON object is written to stdout;
progress and warnings go to stderr.
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
from searchrl.data.beir import BeirDataset, iter_corpus, load_beir, load_corpus, load_qrels, load_queries, qrels_path
from searchrl.data.expansions import load_expansions
from searchrl.data.formats import is_jsonl_file, read_trec_run, write_trec_run
from searchrl.data.hub import is_hub_reference
from searchrl.data.io import write_jsonl
from searchrl.data.text import TEXT_SUFFIXES, load_text_corpus
from searchrl.errors import ConfigError, DataError, IndexFileError
from searchrl.metrics import DEFAULT_MEASURES, evaluate_run, to_ir_measure
from searchrl.progress import stderr_console
from searchrl.retrieval.base import RETRIEVER_KIND_NAMES

DEFAULT_DEPTH = 100
"""Results retrieved per query for evaluation (recall@100 needs 100)."""

SNIPPET_CHARS = 160


RetrieverKind = Enum("RetrieverKind", {kind: kind for kind in RETRIEVER_KIND_NAMES}, type=str)
"""``--retriever`` choices: :data:`searchrl.retrieval.RetrieverKind` as the Enum typer needs."""


class DataFormat(str, Enum):
    beir = "beir"
    pyserini = "pyserini"
    flashrag = "flashrag"
    text = "text"


# --- shared options ---------------------------------------------------------------------

RetrieverOption = Annotated[
    RetrieverKind, typer.Option("--retriever", "-r", help="bm25 (sparse), dense (sentence-transformers) or hybrid (RRF).")
]
OldModelOption = Annotated[str | None, typer.Option("--model", hidden=True, help="Renamed --encoder.")]


def refuse_old_model_option(value: str | None) -> None:
    """``--model`` on the retrieval commands named the dense encoder; it is ``--encoder`` now."""
    if value is not None:
        raise ConfigError("--model is now --encoder (the dense encoder of dense/hybrid retrieval)")


ModelOption = Annotated[
    str | None,
    typer.Option("--encoder", help="Dense encoder: a local folder or Hugging Face name (default all-MiniLM-L6-v2)."),
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
FormatOption = Annotated[
    DataFormat | None,
    typer.Option(
        "--format",
        help="Kind of --data: beir ({_id, title, text}), pyserini ({id, contents}), flashrag ({id, contents} "
        'with a "Title" first line) or text (chunked files). Default: detected; an ambiguous file is an error.',
    ),
]


# --- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _readable_warnings() -> Iterator[None]:
    """Show warnings as one ``warning:`` line on stderr instead of Python's two-line format.

    Which warnings show is left to the filters in place (the libraries' own notices only with
    ``searchrl -v``, see :mod:`searchrl.cli.quiet`).
    """

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        stderr_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
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


def _is_jsonl_corpus(path: Path) -> bool:
    """A BEIR folder, a JSONL file, or a folder of JSONL files and no text files (a Pyserini collection)."""
    if _is_beir_corpus_dir(path) or is_jsonl_file(path):
        return True
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file()]
    jsonl = [p for p in files if is_jsonl_file(p)]
    text = [p for p in files if _is_text_file(p)]
    if jsonl and text:
        raise DataError(
            f"the folder holds both JSONL files ({jsonl[0].name}, ...) and text files ({text[0].name}, ...)",
            path=path,
            hint="pass --format text to chunk the text files, or --format pyserini/beir/flashrag for the JSONL corpus",
        )
    return bool(jsonl)


def iter_documents(
    data: Path, *, chunk_size: int = 1000, chunk_overlap: int = 100, format: DataFormat | str | None = None
) -> Iterator[Document]:
    """Documents from ``data``: a BEIR folder, ``hf:OWNER/NAME``, a Pyserini/FlashRAG/BEIR JSONL corpus
    (a file or a folder of them), or text/Markdown files (a file or a folder); ``format`` says which."""
    format = format.value if isinstance(format, DataFormat) else format
    if format == "text":
        yield from load_text_corpus(data, size=chunk_size, overlap=chunk_overlap)
        return
    if format is not None or is_hub_reference(data):
        yield from iter_corpus(data, format=format)
        return
    if not data.exists():
        raise DataError("not found", path=data, hint="--data takes a BEIR folder, a corpus.jsonl, or text/Markdown files")
    if _is_jsonl_corpus(data):
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
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} is a folder; it takes a file name", path=path, hint="e.g. per_query.jsonl")
    blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{option} cannot be written: {blocker} is a file, not a folder", path=path)


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
    old_model: OldModelOption = None,
    doc_expansions: Annotated[
        Path | None, typer.Option("--doc-expansions", help="JSONL of {id, expansion} appended to documents.")
    ] = None,
    k1: K1Option = 1.2,
    b: BOption = 0.75,
    query_prefix: QueryPrefixOption = "",
    passage_prefix: PassagePrefixOption = "",
    chunk_size: ChunkSizeOption = 1000,
    chunk_overlap: ChunkOverlapOption = 100,
    data_format: FormatOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Build a retrieval index over a corpus and save it to --out."""
    refuse_old_model_option(old_model)
    from searchrl.retrieval.base import check_index_target

    check_index_target(out)
    with _readable_warnings(), _stdout_reserved_for_json(as_json):
        documents = list(iter_documents(data, chunk_size=chunk_size, chunk_overlap=chunk_overlap, format=data_format))
        expansions = None
        expanded = None
        if doc_expansions is not None:
            expansions = load_expansions(doc_expansions)
            _check_expansion_ids(expansions, [doc.id for doc in documents], doc_expansions, "documents")
            expanded = sum(1 for doc in documents if doc.id in expansions)
        started = time.perf_counter()
        index = _build_retriever(retriever, model, _retriever_options(retriever, k1, b, query_prefix, passage_prefix))
        index.index(documents, doc_expansions=expansions, show_progress=True)
        index.save(out)
        seconds = time.perf_counter() - started
    stderr_console.print(
        f"indexed {len(documents):,} documents with {retriever.value} in {seconds:.1f} s -> {out}", highlight=False
    )
    if as_json:
        _print_json(
            {
                "index": str(out),
                "retriever": retriever.value,
                "model": model,
                "data": str(data),
                "num_documents": len(documents),
                "doc_expansions": None if doc_expansions is None else str(doc_expansions),
                "num_expanded_documents": expanded,
                "seconds": round(seconds, 3),
            }
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
    data_format: FormatOption = None,
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
            documents = _documents_for_hits(data, hits, search_index.doc_ids, chunk_size, chunk_overlap, data_format)
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


def _eval_dataset(
    data: Path, split: str, queries: Path | None, qrels: Path | None, data_format: DataFormat | None
) -> BeirDataset:
    """The corpus, queries and judgments to evaluate on: a BEIR folder's split, or a corpus plus
    --queries / --qrels files (which also override a BEIR folder's own)."""
    corpus_format = None if data_format is None else data_format.value
    if corpus_format == "text":
        raise ConfigError("eval needs a corpus with document ids; --format text is for index and search")
    folder = is_hub_reference(data) or data.is_dir() or not data.exists()  # a missing folder: load_beir says so
    if queries is None and qrels is None:
        if not folder:
            raise ConfigError(
                f"--data {data} is a corpus file, not a BEIR folder",
                hint="add --queries FILE (JSONL or id<TAB>text) and --qrels FILE (BEIR or TREC qrels)",
            )
        return load_beir(data, split, format=corpus_format)
    if not folder and (queries is None or qrels is None):
        missing = "--queries" if queries is None else "--qrels"
        raise ConfigError(f"--data {data} is a corpus file: pass {missing} too")
    corpus = load_corpus(data, format=corpus_format)
    all_queries = load_queries(queries if queries is not None else data)
    qrels_file = qrels if qrels is not None else qrels_path(data, split)
    judged = load_qrels(qrels_file, query_ids=all_queries.keys(), doc_ids=corpus.keys())
    if not judged:
        raise DataError("the qrels file has no judgments", path=qrels_file)
    return BeirDataset(
        corpus=corpus,
        queries={query_id: all_queries[query_id] for query_id in judged},
        qrels=judged,
        directory=Path(data),
        split=split if qrels is None else qrels_file.name,
    )


def _save_run(path: Path, run: Mapping[str, Mapping[str, float]], query_ids: list[str], tag: str) -> None:
    """Write ``run`` as a TREC run; warn about queries without results, which a TREC file cannot hold."""
    lines = write_trec_run(path, run, tag=tag)
    empty = [query_id for query_id in query_ids if not run.get(query_id)]
    if empty:
        warnings.warn(
            f"{path}: {len(empty)} queries have no results and are not in the run file "
            f"({', '.join(empty[:5])}); they score 0 here, while trec_eval (without -c) and ir-measures "
            "average over the queries in the file",
            stacklevel=2,
        )
    stderr_console.print(f"wrote {lines:,} results for {len(query_ids) - len(empty):,} queries to {path}", highlight=False)


def _score_run_file(
    run_file: Path, qrels: Path | None, data: Path | None, split: str, measure_names: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]], Path]:
    """Score a TREC run against --qrels (or the qrels of --data's split)."""
    if qrels is None and data is None:
        raise ConfigError("--run needs judgments", hint="pass --qrels FILE, or --data DIR --split NAME")
    qrels_file = qrels if qrels is not None else qrels_path(data, split)
    judgments = load_qrels(qrels_file)
    run = read_trec_run(run_file)
    if not set(run) & set(judgments):
        raise DataError(
            f"none of the run's {len(run):,} queries is judged in {qrels_file} (run ids look like {next(iter(run))!r}, "
            f"qrels ids like {next(iter(judgments), '')!r})",
            path=run_file,
            hint="are the run and the qrels from the same data set and split?",
        )
    unanswered = [query_id for query_id in judgments if query_id not in run]
    if unanswered:
        warnings.warn(
            f"{len(unanswered)} judged queries have no results in {run_file} and score 0 "
            f"(as trec_eval -c counts them): {', '.join(unanswered[:5])}",
            stacklevel=2,
        )
    aggregate, scores_by_query = evaluate_run(judgments, run, measure_names)
    return aggregate, scores_by_query, qrels_file


def _print_eval_table(title: str, aggregate: Mapping[str, float], measure_names: list[str], rows: Mapping[str, int]) -> None:
    table = Table(title=escape(title), title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in measure_names:
        table.add_row(name, f"{aggregate[name]:.4f}")
    for label, count in rows.items():
        table.add_row(label, f"{count:,}")
    Console().print(table)


def eval_command(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/), hf:OWNER/NAME, or a corpus file with --queries/--qrels.",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Qrels split to score: qrels/<split>.tsv.")] = "test",
    queries: Annotated[
        Path | None, typer.Option("--queries", help="Queries: BEIR JSONL ({_id, text}) or id<TAB>text lines.")
    ] = None,
    qrels: Annotated[
        Path | None, typer.Option("--qrels", help="Judgments: BEIR (query-id corpus-id score) or TREC (qid 0 docid rel).")
    ] = None,
    run_file: Annotated[
        Path | None, typer.Option("--run", help="Score this TREC run file (qid Q0 docid rank score tag) instead of retrieving.")
    ] = None,
    save_run: Annotated[
        Path | None, typer.Option("--save-run", help="Write the ranking as a TREC run file (for trec_eval, ir-measures).")
    ] = None,
    data_format: FormatOption = None,
    retriever: RetrieverOption = RetrieverKind.bm25,
    model: ModelOption = None,
    old_model: OldModelOption = None,
    query_expansions: Annotated[
        Path | None, typer.Option("--query-expansions", help="JSONL of {id, expansion} appended to queries.")
    ] = None,
    query_repeat: Annotated[
        int,
        typer.Option(
            "--query-repeat", min=1,
            help="An expanded query holds the original query this many times (query2doc weighting; "
            "the co-augmentation run's bm25.query_repeat).",
        ),
    ] = 1,
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
    """Evaluate a retriever on a BEIR split or a corpus with --queries/--qrels (nDCG@10, recall@100, MRR@10, MAP),
    or score a TREC run file with --run."""
    refuse_old_model_option(old_model)
    measure_names = _parse_measures(measures)
    _check_output_file(per_query, "--per-query")
    _check_output_file(save_run, "--save-run")
    if run_file is not None:
        given = [name for name, value in (("--index", index), ("--query-expansions", query_expansions),
                 ("--doc-expansions", doc_expansions), ("--save-run", save_run), ("--queries", queries),
                 ("--encoder", model)) if value is not None]
        if given:
            raise ConfigError(f"--run scores a finished run; {', '.join(given)} applies only when retrieving")
        with _readable_warnings(), _stdout_reserved_for_json(as_json):
            aggregate, scores_by_query, qrels_file = _score_run_file(run_file, qrels, data, split, measure_names)
        if per_query is not None:
            write_jsonl(per_query, ({"query_id": qid, **scores} for qid, scores in scores_by_query.items()))
        report = {**aggregate, "num_queries": len(scores_by_query), "run": str(run_file), "qrels": str(qrels_file)}
        if as_json:
            _print_json(report)
        else:
            _print_eval_table(f"{run_file.name} · {qrels_file.name}", aggregate, measure_names,
                              {"queries": report["num_queries"]})
        return
    if data is None:
        raise ConfigError("pass --data (the corpus to search), or --run FILE to score a run file")
    with _readable_warnings(), _stdout_reserved_for_json(as_json):
        dataset = _eval_dataset(data, split, queries, qrels, data_format)
        query_ids = list(dataset.queries)
        query_expansion_map: dict[str, str] = {}
        if query_expansions is not None:
            query_expansion_map = load_expansions(query_expansions)
            _check_expansion_ids(query_expansion_map, query_ids, query_expansions, f"{dataset.split} queries")

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
        texts = {
            qid: query_text(dataset.queries[qid], query_expansion_map.get(qid), repeat=query_repeat)
            for qid in query_ids
        }
        run = search_index.run(texts, k=_depth_for(measure_names), show_progress=True)
        search_seconds = time.perf_counter() - started
        aggregate, scores_by_query = evaluate_run(dataset.qrels, run, measure_names)
        retriever_name = getattr(search_index, "name", retriever.value) if index is not None else retriever.value
        if save_run is not None:
            _save_run(save_run, run, query_ids, tag=f"searchrl-{retriever_name}")

    if per_query is not None:
        write_jsonl(per_query, ({"query_id": qid, **scores} for qid, scores in scores_by_query.items()))

    report = {
        **aggregate,
        "num_queries": len(scores_by_query),
        "num_documents": len(dataset.corpus),
        "retriever": retriever_name,
        "model": model,
        "split": dataset.split,
        "data": str(data),
        "queries": None if queries is None else str(queries),
        "qrels": None if qrels is None else str(qrels),
        "index": None if index is None else str(index),
        "query_expansions": None if query_expansions is None else str(query_expansions),
        "doc_expansions": None if doc_expansions is None or index is not None else str(doc_expansions),
        "run": None if save_run is None else str(save_run),
        "index_seconds": round(index_seconds, 3),
        "search_seconds": round(search_seconds, 3),
    }
    if as_json:
        _print_json(report)
        return
    _print_eval_table(
        f"{data.name or data} [{dataset.split}] · {report['retriever']}",
        aggregate,
        measure_names,
        {"queries": report["num_queries"], "documents": report["num_documents"]},
    )


def _documents_for_hits(
    data: Path,
    hits: list[tuple[str, float]],
    indexed_ids: list[str],
    chunk_size: int,
    chunk_overlap: int,
    data_format: DataFormat | None = None,
) -> dict[str, Document]:
    """The hit documents from ``data``, streamed; warns when ``data`` is not what the index was built from."""
    wanted = {doc_id for doc_id, _ in hits}
    documents: dict[str, Document] = {}
    indexed = set(indexed_ids)
    outside_index = 0
    seen = 0
    for doc in iter_documents(data, chunk_size=chunk_size, chunk_overlap=chunk_overlap, format=data_format):
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
