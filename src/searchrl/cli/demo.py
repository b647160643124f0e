"""``searchrl demo``: a web page with the search agent live and BM25 vs BM25 + expansions side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from searchrl.progress import stderr_console


def demo(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a corpus.jsonl.")],
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Agent policy: a checkpoint of `searchrl train agent` (RUN/best) or any model; "
                     "without it the page compares retrieval only."),
    ] = None,
    doc_expansions: Annotated[
        Optional[Path], typer.Option("--doc-expansions", help="JSONL of {id, expansion} appended to documents (right column).")
    ] = None,
    query_expansions: Annotated[
        Optional[Path], typer.Option("--query-expansions", help="JSONL of {id, expansion} appended to the split's queries (right column).")
    ] = None,
    split: Annotated[
        Optional[str], typer.Option("--split", help="Qrels split whose queries are offered and judged (default: dev, else the folder's first).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 7860,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda for the agent's model (default: cuda when available).")] = None,
) -> None:
    """Serve the demo page: ask the agent and watch its turns; compare BM25 with and without expansions."""
    from searchrl.demo.app import Demo, bind, create_app, serve

    sock = bind(host, port)  # a taken port fails before anything slow is loaded
    try:
        stderr_console.print(f"loading {data}" + (f" and the model {model}" if model else "") + " …", highlight=False)
        app = create_app(Demo.load(data, split=split, doc_expansions=doc_expansions, query_expansions=query_expansions,
                                   model=model, device=device))
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        stderr_console.print(f"searchrl demo on http://{shown}:{bound_port}  (Ctrl-C stops it)", highlight=False)
        serve(app, sock)
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo)
