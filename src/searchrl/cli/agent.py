"""``searchrl agent ask`` and ``searchrl agent eval``: run the search agent from the command line.

* ``ask`` plays one episode and prints the transcript turn by turn as it unfolds (with ``--json``,
  one JSON object: the answer, the searches with the documents they returned, and how it ended);
* ``eval`` plays one episode per question of a QA file and reports EM, F1 (and a judge's
  accuracy), searches and retries per episode, the answered rate and the retrieval hit rate;
  every transcript goes to a JSONL file. With ``--json`` exactly one JSON object is printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from searchrl.cli.retrieval import _print_json, _stdout_reserved_for_json
from searchrl.progress import stderr_console


RETRIEVER_KINDS = ("bm25", "dense", "hybrid")


def _retriever_choice(value: str | None) -> str | None:
    """bm25, dense, hybrid, or a retrieval server's URL."""
    from searchrl.retrieval.remote import is_remote_retriever

    if value is None or is_remote_retriever(value):
        return value
    if value.lower() not in RETRIEVER_KINDS:
        raise typer.BadParameter(f"{value!r} is neither bm25, dense, hybrid nor a server URL (http://HOST:PORT)")
    return value.lower()


DataOption = Annotated[Path, typer.Option("--data", help="BEIR-style corpus folder (corpus.jsonl) the agent searches.")]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Policy: model name or folder, a LoRA adapter folder or a training checkpoint (default SmolLM2-135M-Instruct)."),
]
_FROM_RUN = " Default: the training run's setting when --model is a run's checkpoint, else {}."
RetrieverOption = Annotated[
    str | None,
    typer.Option(
        "--retriever", "-r", callback=_retriever_choice, metavar="bm25|dense|hybrid|URL",
        help="Search backend: bm25, dense, hybrid, or a retrieval server's URL (http://HOST:PORT, "
        "see `searchrl serve retriever`)." + _FROM_RUN.format("bm25"),
    ),
]
EncoderOption = Annotated[str | None, typer.Option("--encoder", help="Sentence-transformers model for dense/hybrid.")]
KOption = Annotated[int | None, typer.Option("--k", min=1, help="Passages returned per search." + _FROM_RUN.format(5))]
MaxCharsOption = Annotated[
    int | None, typer.Option("--max-chars", min=1, help="Cut each passage to this many characters." + _FROM_RUN.format("none"))
]
MaxTurnsOption = Annotated[
    int | None, typer.Option("--max-turns", min=1, help="Assistant turns per episode at most." + _FROM_RUN.format(8))
]
TurnTokensOption = Annotated[
    int | None, typer.Option("--max-turn-tokens", min=1, help="New tokens per turn at most." + _FROM_RUN.format(256))
]
BudgetOption = Annotated[
    int | None,
    typer.Option("--max-model-tokens", min=1, help="Model-written tokens per episode at most." + _FROM_RUN.format(1024)),
]


def _settings(model: str | None, **given: Any) -> dict[str, Any]:
    """Options given on the command line, else the training run's (said on stderr), else the defaults."""
    from searchrl.agent.api import agent_settings

    settings, run = agent_settings(model, **given)
    if run is not None:
        stderr_console.print(f"using the search and episode settings of the training run in {run.directory}", highlight=False)
    return settings


TemperatureOption = Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy decoding.")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when available).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for sampling and search noise.")]


def _load_agent(model: str | None, data: Path, settings: dict[str, Any], *, temperature: float, seed: int,
                device: str | None, engine: str = "transformers"):
    from searchrl.agent.api import Agent
    from searchrl.llm import resolve_engine_kind

    policy: Any = model
    kind = resolve_engine_kind(engine)
    if kind == "vllm":
        from searchrl.llm import build_engine
        from searchrl.resolver import DEFAULT_LLM

        policy = build_engine("vllm", model=model or DEFAULT_LLM)
        settings = {"max_context_tokens": policy.context_length, **settings}
    elif kind != "transformers":
        from searchrl.errors import ConfigError

        raise ConfigError(f"the agent needs token-level generation, which the {kind} engine lacks",
                          hint="use --engine auto, transformers or vllm")
    return Agent(policy, data=data, temperature=temperature, seed=seed, device=device,
                 show_progress=sys.stderr.isatty(), **settings)


def _print_message(console: Console, message: dict[str, str], *, label: str = "") -> None:
    role, content = message["role"], message["content"]
    if role == "system":
        return
    style = {"user": "cyan", "assistant": "green"}.get(role, "white")
    title = label + ("search results" if role == "user" and content.startswith("<information>") else role)
    console.print(Panel(escape(content), title=title, title_align="left", border_style=style))


def _ask_record(episode: Any, agent: Any) -> dict[str, Any]:
    """What `agent ask --json` prints: the episode's question, answer, searches and ending, and the policy."""
    return {
        "question": episode.question,
        "answer": episode.answer,
        "searches": [{"query": search["query"], "doc_ids": list(search["doc_ids"])} for search in episode.searches],
        "num_searches": len(episode.searches),
        "num_turns": episode.num_turns,
        "finish_reason": episode.finish_reason,
        "error": episode.error,
        "model": agent.model_name,
        "retriever": agent.settings["retriever"],
        "k": agent.settings["k"],
    }


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with the answer and searches on stdout instead of the transcript.")
    ] = False,
) -> None:
    """Answer one question by searching DATA; the transcript is printed turn by turn."""
    console = Console()
    with _stdout_reserved_for_json(as_json):
        settings = _settings(
            model, retriever=retriever, encoder=encoder, k=k, max_chars=max_chars, max_turns=max_turns,
            max_turn_tokens=max_turn_tokens, max_model_tokens=max_model_tokens,
        )
        agent = _load_agent(model, data, settings, temperature=temperature, seed=seed, device=device)
        answer = agent.ask(question, on_message=None if as_json else lambda m: _print_message(console, m))
    if as_json:
        _print_json(_ask_record(answer.episode, agent))
        if answer.error:
            stderr_console.print(f"[bold red]search failed:[/] {escape(answer.error)}")
            raise typer.Exit(1)
        return
    console.print(
        f"[bold]finish:[/] {answer.finish_reason}   [bold]searches:[/] {len(answer.searches)}   "
        f"[bold]answer:[/] {escape(answer.text) if answer.text is not None else '(none)'}"
    )
    if answer.error:
        stderr_console.print(f"[bold red]search failed:[/] {escape(answer.error)}")
        raise typer.Exit(1)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


def _eval_identity(model: str | None, data: Path, judge_model: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """What `agent eval --out` resumes on: fingerprints of the weights, corpus and judge, and the settings.

    Content, not paths: a checkpoint retrained at the same path is a different evaluation, and
    the same files moved elsewhere are the same one. (Each question's own content is checked
    per transcript record by :func:`searchrl.agent.evaluate.example_key`.)
    """
    from searchrl.data.io import resolve_data_file
    from searchrl.llm.identity import file_fingerprint, model_fingerprint
    from searchrl.resolver import DEFAULT_LLM

    corpus = data if data.is_file() else resolve_data_file(data, "corpus.jsonl")
    return {
        "model": model_fingerprint(model or DEFAULT_LLM), "corpus": file_fingerprint(corpus),
        "retriever": settings["retriever"], "encoder": settings["encoder"], "k": settings["k"],
        "max_chars": settings["max_chars"],
        "judge_model": None if judge_model is None else model_fingerprint(judge_model),
    }


def evaluate(
    questions: Annotated[Path, typer.Option("--questions", help="QA JSONL: id, question, answers, optional gold_ids.")],
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
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate the first N questions only.")] = None,
    judge_model: Annotated[
        str | None, typer.Option("--judge-model", help="A fixed judge model (must differ from --model); adds judge accuracy.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write every transcript to this JSONL (rerun to resume): one object per question with its "
            "messages, searches, answer, finish_reason and scores (schema: docs/SCHEMAS.md).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out instead of resuming it.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Episodes generated together.")] = 16,
    engine: Annotated[
        str, typer.Option("--engine", help="auto (vllm where installed and usable here, else transformers), transformers or vllm.")
    ] = "auto",
    device: DeviceOption = None,
    seed: SeedOption = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the metrics on stdout.")] = False,
) -> None:
    """Evaluate the agent on a QA file: accuracy, searches, retries, answered and retrieval hit rates."""
    from searchrl.agent.evaluate import evaluate_agent
    from searchrl.data.qa import load_qa

    from searchrl.agent.judge import check_judge_model
    from searchrl.resolver import DEFAULT_LLM

    started = time.perf_counter()
    if judge_model is not None:  # before loading anything
        check_judge_model(judge_model, model or DEFAULT_LLM)
    examples = load_qa(questions)
    if limit is not None:
        examples = examples[:limit]
    settings = _settings(
        model, retriever=retriever, encoder=encoder, k=k, max_chars=max_chars, max_turns=max_turns,
        max_turn_tokens=max_turn_tokens, max_model_tokens=max_model_tokens,
    )
    agent = _load_agent(model, data, settings, temperature=temperature, seed=seed, device=device, engine=engine)
    from searchrl.data.qa import check_gold_ids

    check_gold_ids(examples, agent.tool.corpus, questions)  # an unknown gold id would score retrieval 0
    policy, tool, config, model_name = agent.policy, agent.tool, agent.episode_config, agent.model_name
    judge = None
    if judge_model is not None:
        from searchrl.agent.judge import LLMJudge
        from searchrl.llm.transformers_engine import TransformersEngine

        judge = LLMJudge(TransformersEngine(judge_model, device=device), policy_model=model_name)
    run_info = _eval_identity(model, data, judge_model, settings)
    report = evaluate_agent(
        policy, tool, examples, config, judge=judge, out_path=out, batch_size=batch_size,
        run_info=run_info, overwrite=overwrite,
    )
    metrics = {**report.metrics, "model": model_name, "retriever": settings["retriever"], "k": settings["k"],
               "seconds": round(time.perf_counter() - started, 2)}
    if out is not None:
        metrics["transcripts"] = str(out)
    if metrics["tool_errors"]:
        stderr_console.print(f"[yellow]warning:[/] {metrics['tool_errors']} episodes ended with a search tool error")
    if as_json:
        sys.stdout.write(json.dumps(metrics) + "\n")
        return
    table = Table(title=f"agent eval: {escape(model_name)} on {len(examples)} questions")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, escape(_format_value(value)))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``agent`` command group to ``app``."""
    group = typer.Typer(name="agent", help="Run the multi-turn search agent: ask one question or evaluate on a QA set.",
                        no_args_is_help=True)
    group.command("ask")(ask)
    group.command("eval")(evaluate)
    app.add_typer(group, name="agent")
