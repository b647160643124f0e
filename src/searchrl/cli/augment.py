"""``searchrl augment corpus|queries``: expand a corpus or a query set with an LLM, resumably.

Both write ``OUT/expansions.jsonl`` and ``OUT/manifest.json`` (see
:class:`searchrl.augment.CorpusAugmentationJob`); ``searchrl eval --doc-expansions
OUT/expansions.jsonl`` reads the corpus output directly. Rerun the same command after an
interruption to continue; the manifest records a fingerprint of the resolved weights (or the
server address), and a rerun with other weights is refused unless ``--force`` starts over. To
split a corpus over machines run ``--shard 0/4`` … ``--shard 3/4`` into separate folders, then
``searchrl augment merge OUT out-*`` (it checks the shards belong together). ``--ray`` runs the
corpus job over a Ray cluster instead (see :mod:`searchrl.augment.ray_job`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from searchrl.cli.retrieval import FormatOption
from searchrl.errors import ConfigError, DataError

augment_app = typer.Typer(
    help="Expand documents or queries with an LLM (resumable; output for --doc-expansions / --query-expansions).",
    no_args_is_help=True,
)

DataOption = Annotated[Path, typer.Option("--data", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")]
OutOption = Annotated[Path, typer.Option("--out", help="Output folder: expansions.jsonl + manifest.json.")]
ModelOption = Annotated[
    Optional[str], typer.Option("--model", help="Model name or local folder (default: the package's default LLM).")
]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine", help="auto (vllm where installed and usable here, else transformers), transformers, vllm or openai."
    ),
]
BaseUrlOption = Annotated[Optional[str], typer.Option("--base-url", help="Server URL for --engine openai.")]
RetrieverOption = Annotated[
    str, typer.Option("--retriever", help="The retriever the expansions are for: bm25, dense or hybrid (sets the prompt style).")
]
PromptStyleOption = Annotated[
    Optional[str],
    typer.Option(
        "--prompt-style",
        help="sparse (key terms, for BM25) or dense (a passage, for an encoder); default: bm25 -> sparse, dense -> dense.",
    ),
]
ThinkOption = Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason in <think> first.")]
PrefillOption = Annotated[
    bool,
    typer.Option(
        "--prefill/--no-prefill",
        help="Open the model's answer in the prompt (<answer>, or <think> with --think) so it continues into it.",
    ),
]
LenientOption = Annotated[
    bool,
    typer.Option("--lenient/--strict", help="Salvage text from completions without a proper <answer> block."),
]
BatchOption = Annotated[
    Optional[int],
    typer.Option("--batch-size", min=1, help="Prompts per generation call (default: 256 with vllm, else 16)."),
]
MaxNewOption = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation budget per item.")]
TemperatureOption = Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy decoding.")]
MaxWordsOption = Annotated[int, typer.Option("--max-words", min=1, help="Expansions are cut to this many words.")]
MaxInputOption = Annotated[int, typer.Option("--max-input-words", min=1, help="Inputs are cut to this many words.")]
ShardOption = Annotated[Optional[str], typer.Option("--shard", help="i/n: this machine's share (numbered from 0).")]
LimitOption = Annotated[Optional[int], typer.Option("--limit", min=0, help="Only the first N items (of the shard).")]
IdsOption = Annotated[Optional[Path], typer.Option("--ids", help="Text file of ids (one per line) to restrict to.")]
CompletionsOption = Annotated[
    bool, typer.Option("--keep-completions/--no-completions", help="Also store each raw completion.")
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Delete this --out folder's expansions and manifest and start over (e.g. after the model changed).",
    ),
]
ProgressOption = Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")]
RayOption = Annotated[
    bool,
    typer.Option(
        "--ray", help="Run over a Ray cluster (a local one unless --ray-address): each batch is split across the workers."
    ),
]
RayAddressOption = Annotated[
    Optional[str], typer.Option("--ray-address", help="Ray cluster to join (auto, ray://HOST:10001); implies --ray.")
]
RayWorkersOption = Annotated[
    Optional[int],
    typer.Option(
        "--ray-workers", min=1, help="Ray workers (default: one per GPU of the cluster, else one per CPU), each with its own model."
    ),
]


def _read_ids(path: Path, known: dict[str, str]) -> list[str]:
    from searchrl.data.io import iter_lines

    ids: list[str] = []
    for line, text in iter_lines(path):
        item_id = text.strip()
        if not item_id:
            continue
        if item_id not in known:
            raise DataError(f"unknown id {item_id!r}", path=path, line=line, hint="list ids present in the data")
        ids.append(item_id)
    return list(dict.fromkeys(ids))


def _prompt_style(retriever: str, prompt_style: str | None) -> str:
    """The expansion prompt style for ``--retriever`` / ``--prompt-style`` (one vocabulary with index/eval)."""
    from searchrl.augment.prompts import PROMPT_STYLES, prompt_style_for
    from searchrl.retrieval.base import RETRIEVER_KIND_NAMES

    if retriever == "sparse":
        raise ConfigError("--retriever sparse is now --retriever bm25", hint="the prompt style follows from it (or pass --prompt-style)")
    if retriever not in RETRIEVER_KIND_NAMES:
        raise ConfigError(f"unknown retriever kind {retriever!r}", hint=f"use one of: {', '.join(RETRIEVER_KIND_NAMES)}")
    if prompt_style is None:
        return prompt_style_for(retriever)
    if prompt_style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {prompt_style!r}", hint=f"use one of: {', '.join(PROMPT_STYLES)}")
    return prompt_style


def _run(
    *,
    role: str,
    items: dict[str, str],
    source: dict,
    out: Path,
    model: str | None,
    engine: str,
    base_url: str | None,
    retriever: str,
    prompt_style: str | None,
    think: bool,
    prefill: bool,
    lenient: bool,
    batch_size: int,
    max_new_tokens: int,
    temperature: float,
    max_words: int,
    max_input_words: int,
    shard: str | None,
    limit: int | None,
    keep_completions: bool,
    progress: bool | None,
    force: bool = False,
    ray: bool = False,
    ray_address: str | None = None,
    ray_workers: int | None = None,
) -> None:
    from contextlib import ExitStack

    from searchrl.augment import CorpusAugmentationJob, ExpansionPolicy, default_expansion_sampling, parse_shard
    from searchrl.llm import resolve_engine_kind

    if engine not in ("auto", "transformers", "vllm", "openai"):
        raise ConfigError(f"unknown engine {engine!r}", hint="use auto, transformers, vllm or openai")
    engine = resolve_engine_kind(engine)  # recorded in the manifest as the engine that ran
    if batch_size is None:
        batch_size = 256 if engine == "vllm" else 16  # vLLM batches continuously: give it many prompts at once
    style = _prompt_style(retriever, prompt_style)
    shard_range = parse_shard(shard) if shard is not None else None  # "" is an error, not "no shard"
    if model is None:
        from searchrl.resolver import DEFAULT_LLM

        model = DEFAULT_LLM
    sampling = default_expansion_sampling().model_copy(
        update={"max_new_tokens": max_new_tokens, "temperature": temperature}
    )
    policy = ExpansionPolicy(
        prompt_style=style,  # type: ignore[arg-type]
        think=think,
        prefill=prefill,
        lenient=lenient,
        max_words=max_words,
        max_input_words=max_input_words,
        sampling=sampling,
    )

    # What the model name stands for (resolved weights, or the server): recorded in the manifest
    # so a resume with other weights or another server is refused. A name that does not resolve
    # fails here, before anything is written.
    from searchrl.llm import identity

    generator = identity.generator_identity(engine, model, base_url=base_url)

    def build() -> object:
        from searchrl.llm import build_engine

        options: dict = {}
        if base_url:
            options["base_url"] = base_url
        if engine == "transformers":
            options["batch_size"] = batch_size
        return build_engine(engine, model=model, **options)

    cluster = ExitStack()
    engine_factory, job_batch_size = build, batch_size
    if ray or ray_address:
        from searchrl.augment.ray_job import engine_pool_factory, ray_cluster

        resources = cluster.enter_context(ray_cluster(ray_address, num_cpus=ray_workers))
        engine_factory, workers = engine_pool_factory(build, resources, workers=ray_workers, model_name=model)
        job_batch_size = batch_size * workers  # each worker gets --batch-size prompts per call
        source = {**source, "ray": {"address": ray_address or "local", "workers": workers}}

    job = CorpusAugmentationJob(
        items,
        out,
        role=role,  # type: ignore[arg-type]
        policy=policy,
        engine=engine_factory,  # type: ignore[arg-type]
        model_name=model,
        engine_name=engine,
        source=source,
        batch_size=job_batch_size,
        shard=shard_range,
        limit=limit,
        keep_completions=keep_completions,
        generator=generator,
        force=force,
    )
    with cluster:
        manifest = job.run(show_progress=progress)
    counts = manifest["counts"]
    typer.echo(
        json.dumps(
            {
                "expansions": str(job.expansions_path),
                "status": manifest["status"],
                "done": counts["done"],
                "selected": counts["selected"],
                "ok": counts["ok"],
                "malformed": counts["malformed"],
                "empty": counts["empty"],
                "items_per_s": manifest["last_run"]["items_per_s"],
            }
        )
    )


@augment_app.command("corpus")
def augment_corpus(
    data: Annotated[
        Path, typer.Option("--data", help="BEIR folder, corpus .jsonl (BEIR, Pyserini, FlashRAG), text/Markdown files or hf:OWNER/NAME.")
    ],
    out: OutOption,
    data_format: FormatOption = None,
    model: ModelOption = None,
    engine: EngineOption = "auto",
    base_url: BaseUrlOption = None,
    retriever: RetrieverOption = "bm25",
    prompt_style: PromptStyleOption = None,
    think: ThinkOption = False,
    prefill: PrefillOption = True,
    lenient: LenientOption = False,
    batch_size: BatchOption = None,
    max_new_tokens: MaxNewOption = 128,
    temperature: TemperatureOption = 0.0,
    max_words: MaxWordsOption = 64,
    max_input_words: MaxInputOption = 384,
    shard: ShardOption = None,
    limit: LimitOption = None,
    ids: IdsOption = None,
    keep_completions: CompletionsOption = True,
    progress: ProgressOption = None,
    force: ForceOption = False,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    ray_workers: RayWorkersOption = None,
) -> None:
    """Expand every document of a corpus (title + text) for indexing with --doc-expansions."""
    from searchrl.cli.retrieval import iter_documents
    from searchrl.data.types import document_text

    items = {doc.id: document_text(doc) for doc in iter_documents(data, format=data_format)}
    source = {"data": str(data.resolve()), "items": "corpus"}
    if data_format is not None:
        source["format"] = data_format.value
    if ids is not None:
        items = {item_id: items[item_id] for item_id in _read_ids(ids, items)}
        source["ids_file"] = str(ids.resolve())
    _run(
        role="document", items=items, source=source, out=out, model=model, engine=engine, base_url=base_url,
        retriever=retriever, prompt_style=prompt_style, think=think, prefill=prefill, lenient=lenient, batch_size=batch_size, max_new_tokens=max_new_tokens,
        temperature=temperature, max_words=max_words, max_input_words=max_input_words, shard=shard, limit=limit,
        keep_completions=keep_completions, progress=progress, force=force, ray=ray, ray_address=ray_address,
        ray_workers=ray_workers,
    )


@augment_app.command("queries")
def augment_queries(
    data: DataOption,
    out: OutOption,
    split: Annotated[str, typer.Option("--split", help="Queries judged in qrels/<split>.tsv, or 'all'.")] = "dev",
    model: ModelOption = None,
    engine: EngineOption = "auto",
    base_url: BaseUrlOption = None,
    retriever: RetrieverOption = "bm25",
    prompt_style: PromptStyleOption = None,
    think: ThinkOption = False,
    prefill: PrefillOption = True,
    lenient: LenientOption = False,
    batch_size: BatchOption = None,
    max_new_tokens: MaxNewOption = 128,
    temperature: TemperatureOption = 0.0,
    max_words: MaxWordsOption = 64,
    max_input_words: MaxInputOption = 384,
    shard: ShardOption = None,
    limit: LimitOption = None,
    ids: IdsOption = None,
    keep_completions: CompletionsOption = True,
    progress: ProgressOption = None,
    force: ForceOption = False,
) -> None:
    """Expand the queries of a split (or all queries) for searching with --query-expansions."""
    from searchrl.data.beir import load_qrels, load_queries, qrels_path

    queries = load_queries(data)
    if split != "all":
        judged = load_qrels(qrels_path(data, split), query_ids=queries.keys())
        queries = {query_id: text for query_id, text in queries.items() if query_id in judged}
    source = {"data": str(data.resolve()), "items": "queries", "split": split}
    if ids is not None:
        queries = {item_id: queries[item_id] for item_id in _read_ids(ids, queries)}
        source["ids_file"] = str(ids.resolve())
    _run(
        role="query", items=queries, source=source, out=out, model=model, engine=engine, base_url=base_url,
        retriever=retriever, prompt_style=prompt_style, think=think, prefill=prefill, lenient=lenient, batch_size=batch_size, max_new_tokens=max_new_tokens,
        temperature=temperature, max_words=max_words, max_input_words=max_input_words, shard=shard, limit=limit,
        keep_completions=keep_completions, progress=progress, force=force,
    )


@augment_app.command("merge")
def augment_merge(
    out: Annotated[Path, typer.Argument(help="Folder for the merged expansions.jsonl + manifest.json.")],
    shard_dirs: Annotated[list[Path], typer.Argument(help="The --out folders of the --shard 0/n … n-1/n jobs.")],
    force: Annotated[bool, typer.Option("--force", help="Replace expansions already in OUT.")] = False,
) -> None:
    """Join the outputs of --shard i/n jobs into one folder, after checking they are the n shards of one job."""
    from searchrl.augment.merge import merge_shards

    manifest = merge_shards(out, shard_dirs, force=force)
    counts = manifest["counts"]
    typer.echo(
        json.dumps(
            {
                "expansions": str(out / "expansions.jsonl"),
                "shards": len(manifest["source"]["merged_from"]),
                "done": counts["done"],
                "ok": counts["ok"],
                "malformed": counts["malformed"],
                "empty": counts["empty"],
            }
        )
    )


def register(app: typer.Typer) -> None:
    """Add ``augment corpus``, ``augment queries`` and ``augment merge`` to ``app``."""
    app.add_typer(augment_app, name="augment")
