"""``searchrl serve retriever`` and ``searchrl serve agent``: searchrl over HTTP.

* ``retriever`` indexes a corpus (or opens a saved index) and answers Search-R1's
  ``POST /retrieve`` — what Search-R1, verl and SkyRL trainers call — plus ``GET /health``;
* ``agent`` serves the search agent as an OpenAI-compatible ``POST /v1/chat/completions``.

Both bind 127.0.0.1 unless told otherwise: they have no authentication.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from searchrl.cli.agent import (
    BudgetOption,
    DataOption,
    DeviceOption,
    EncoderOption,
    KOption,
    MaxCharsOption,
    MaxTurnsOption,
    ModelOption,
    RetrieverOption,
    SeedOption,
    TemperatureOption,
    TurnTokensOption,
)
from searchrl.cli.retrieval import OldModelOption, RetrieverKind, refuse_old_model_option
from searchrl.errors import ConfigError
from searchrl.progress import stderr_console
from searchrl.serve.http import DEFAULT_HOST, DEFAULT_PORT

HostOption = Annotated[
    str, typer.Option("--host", help="Address to listen on; 0.0.0.0 exposes the server (no authentication) to the network.")
]
PortOption = Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port to listen on.")]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="uvicorn log level: warning, info (one line per request), debug.")]


def _say_listening(what: str, host: str, endpoints: str):
    def on_ready(url: str) -> None:
        stderr_console.print(f"{what} on [bold]{url}[/] ({endpoints}); Ctrl-C stops it", highlight=False, soft_wrap=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            stderr_console.print(
                f"[yellow]warning:[/] listening on {host}: anyone who can reach this port can use the server "
                "(it has no authentication)",
                highlight=False, soft_wrap=True,
            )

    return on_ready


def retriever_command(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder, corpus.jsonl, or text/Markdown file(s) folder.")],
    retriever: Annotated[
        RetrieverKind | None,
        typer.Option("--retriever", "-r", help="bm25, dense or hybrid (default bm25; with --index, the index's kind)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--encoder", help="Dense encoder for dense/hybrid (default all-MiniLM-L6-v2).")
    ] = None,
    old_model: OldModelOption = None,
    index: Annotated[
        Path | None, typer.Option("--index", help="Serve an index saved by `searchrl index` over --data instead of building one.")
    ] = None,
    doc_expansions: Annotated[
        Path | None, typer.Option("--doc-expansions", help="JSONL of {id, expansion} appended to documents before indexing.")
    ] = None,
    host: HostOption = DEFAULT_HOST,
    port: PortOption = DEFAULT_PORT,
    topk: Annotated[int, typer.Option("--topk", min=1, help="Results per query when a request's topk is null.")] = 3,
    max_topk: Annotated[int, typer.Option("--max-topk", min=1, help="Largest topk a request may ask for.")] = 1000,
    max_queries: Annotated[int, typer.Option("--max-queries", min=1, help="Queries per request at most.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Request body size limit.")] = 1_048_576,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Characters per chunk for text/Markdown files.")] = 1000,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", help="Characters shared by consecutive chunks.")] = 100,
    log_level: LogLevelOption = "warning",
) -> None:
    """Serve a retriever over DATA with Search-R1's POST /retrieve protocol (and GET /health)."""
    refuse_old_model_option(old_model)
    from searchrl.cli.retrieval import _check_expansion_ids, _check_index_matches, _readable_warnings, iter_documents
    from searchrl.data.expansions import load_expansions
    from searchrl.retrieval import build_retriever, load_retriever
    from searchrl.serve.http import serve_forever
    from searchrl.serve.retriever import RetrieverLimits, create_app

    if topk > max_topk:
        raise ConfigError(f"--topk {topk} is above --max-topk {max_topk}")
    with _readable_warnings():
        documents = list(iter_documents(data, chunk_size=chunk_size, chunk_overlap=chunk_overlap))
        corpus = {doc.id: doc for doc in documents}
        if index is not None:
            if doc_expansions is not None:
                raise ConfigError(
                    "--doc-expansions applies when the server builds the index; a saved --index holds its documents as indexed",
                    hint="index with `searchrl index --doc-expansions ...`, or leave out --index",
                )
            search_index = load_retriever(index)
            if retriever is not None and retriever.value != search_index.name:
                raise ConfigError(f"--retriever {retriever.value} but the index is {search_index.name}", path=index)
            _check_index_matches(search_index, corpus, index)
        else:
            expansions = None
            if doc_expansions is not None:
                expansions = load_expansions(doc_expansions)
                _check_expansion_ids(expansions, list(corpus), doc_expansions, "documents")
            kind = (retriever or RetrieverKind.bm25).value
            search_index = build_retriever(kind, model=model).index(documents, doc_expansions=expansions, show_progress=True)
    limits = RetrieverLimits(max_queries=max_queries, max_topk=max_topk, max_body_bytes=max_body_bytes,
                             max_batch=max(max_queries, 1024))
    info = {"data": str(data), "index": None if index is None else str(index),
            "doc_expansions": None if doc_expansions is None else str(doc_expansions)}
    app = create_app(search_index, corpus, default_topk=topk, limits=limits, info=info)
    what = f"serving {len(corpus):,} documents with {search_index.name}"
    serve_forever(app, host, port, log_level=log_level, on_ready=_say_listening(what, host, "POST /retrieve, GET /health"))


def agent_command(
    data: DataOption,
    model: ModelOption = None,
    retriever: RetrieverOption = None,
    encoder: EncoderOption = None,
    k: KOption = None,
    max_chars: MaxCharsOption = None,
    max_turns: MaxTurnsOption = None,
    max_turn_tokens: TurnTokensOption = None,
    max_model_tokens: BudgetOption = None,
    temperature: TemperatureOption = 0.0,
    device: DeviceOption = None,
    seed: SeedOption = 0,
    host: HostOption = DEFAULT_HOST,
    port: PortOption = DEFAULT_PORT,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Concurrent requests played together as one batch of episodes.")
    ] = 8,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="Model id in /v1/models and responses (default: --model).")
    ] = None,
    log_level: LogLevelOption = "warning",
) -> None:
    """Serve the search agent as an OpenAI-compatible POST /v1/chat/completions."""
    from searchrl.cli.agent import _load_agent, _settings
    from searchrl.serve.agent import create_app
    from searchrl.serve.http import serve_forever

    settings = _settings(
        model, retriever=retriever, encoder=encoder, k=k, max_chars=max_chars, max_turns=max_turns,
        max_turn_tokens=max_turn_tokens, max_model_tokens=max_model_tokens,
    )
    agent = _load_agent(model, data, settings, temperature=temperature, seed=seed, device=device)
    name = served_model_name or agent.model_name
    app = create_app(agent.policy, agent.tool, agent.episode_config, model_name=name, max_batch=batch_size)
    what = f"serving the agent {name} (searching with {settings['retriever']})"
    serve_forever(app, host, port, log_level=log_level,
                  on_ready=_say_listening(what, host, "POST /v1/chat/completions, GET /v1/models"))


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command group to ``app``."""
    group = typer.Typer(
        name="serve", no_args_is_help=True,
        help="Serve over HTTP: a Search-R1-compatible retrieval server, or the agent as an OpenAI-compatible service.",
    )
    group.command("retriever")(retriever_command)
    group.command("agent")(agent_command)
    app.add_typer(group, name="serve")
