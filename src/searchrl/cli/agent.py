"""``searchrl agent ask`` and ``searchrl agent eval``: run the search agent from the command line.

* ``ask`` plays one episode and prints the transcript turn by turn as it unfolds;
* ``eval`` plays one episode per question of a QA file and reports EM, F1 (and a judge's
  accuracy), searches and retries per episode, the answered rate and the retrieval hit rate;
  every transcript goes to a JSONL file. With ``--json`` exactly one JSON object is printed.
"""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from searchrl.errors import ConfigError
from searchrl.progress import stderr_console


class RetrieverKind(str, Enum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


DataOption = Annotated[Path, typer.Option("--data", help="BEIR-style corpus folder (corpus.jsonl) the agent searches.")]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Policy: model name or folder, a LoRA adapter folder or a training checkpoint (default SmolLM2-135M-Instruct)."),
]
_FROM_RUN = " Default: the training run's setting when --model is a run's checkpoint, else {}."
RetrieverOption = Annotated[
    RetrieverKind | None,
    typer.Option("--retriever", "-r", help="Search backend: bm25, dense or hybrid." + _FROM_RUN.format("bm25")),
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

DEFAULT_SETTINGS: dict[str, Any] = {
    "retriever": "bm25", "encoder": None, "k": 5, "max_chars": None,
    "max_turns": 8, "max_turn_tokens": 256, "max_model_tokens": 1024,
}


def _training_settings(model: str | None) -> dict[str, Any]:
    """Search and episode settings of the training run ``model`` was saved by, if any.

    A checkpoint of ``searchrl train agent`` (``RUN/best``, ``RUN/final`` or
    ``RUN/checkpoints/checkpoint-N``) was trained with particular search results (k, passage
    length) and turn limits; evaluating it the same way is the sensible default.
    """
    if not model or not Path(model).is_dir():
        return {}
    import yaml

    for folder in list(Path(model).resolve().parents)[:2]:
        config_file = folder / "config.yaml"
        if not config_file.is_file():
            continue
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return {}
        if not isinstance(config, dict) or not isinstance(config.get("tool"), dict) or not isinstance(config.get("episode"), dict):
            return {}
        tool, episode = config["tool"], config["episode"]
        settings = {key: tool[key] for key in ("retriever", "encoder", "k", "max_chars") if key in tool}
        settings.update({key: episode[key] for key in ("max_turns", "max_turn_tokens", "max_model_tokens") if key in episode})
        stderr_console.print(f"using the search and episode settings of the training run in {folder}", highlight=False)
        return settings
    return {}


def _settings(model: str | None, **given: Any) -> dict[str, Any]:
    """Options given on the command line, else the training run's, else the defaults."""
    from_run = _training_settings(model)
    settings = {}
    for key, default in DEFAULT_SETTINGS.items():
        value = given.get(key)
        if isinstance(value, Enum):
            value = value.value
        settings[key] = value if value is not None else from_run.get(key, default)
    return settings
TemperatureOption = Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy decoding.")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when available).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for sampling and search noise.")]


def _load_policy(model: str | None, device: str | None, *, logprobs: bool = False):
    from searchrl.agent.episode import EnginePolicy
    from searchrl.llm.transformers_engine import TransformersEngine
    from searchrl.resolver import DEFAULT_LLM

    name = model or DEFAULT_LLM
    engine = TransformersEngine(name, device=device)
    return EnginePolicy(engine, logprobs=logprobs), name


def _load_tool(data: Path, settings: dict[str, Any], seed: int):
    from searchrl.agent.tool import SearchToolConfig, build_search_tool
    from searchrl.data.beir import load_corpus

    if settings["retriever"] == "bm25" and settings["encoder"] is not None:
        raise ConfigError("--encoder applies to dense and hybrid retrieval only")
    corpus = load_corpus(data)
    config = SearchToolConfig(
        retriever=settings["retriever"], encoder=settings["encoder"], k=settings["k"],
        max_chars=settings["max_chars"], seed=seed,
    )
    return build_search_tool(corpus, config, show_progress=sys.stderr.isatty())


def _episode_config(settings: dict[str, Any], temperature: float, seed: int):
    from searchrl.agent.episode import EpisodeConfig

    return EpisodeConfig(
        max_turns=settings["max_turns"], max_turn_tokens=settings["max_turn_tokens"],
        max_model_tokens=settings["max_model_tokens"], temperature=temperature, seed=seed,
    )


def _print_message(console: Console, message: dict[str, str], *, label: str = "") -> None:
    role, content = message["role"], message["content"]
    if role == "system":
        return
    style = {"user": "cyan", "assistant": "green"}.get(role, "white")
    title = label + ("search results" if role == "user" and content.startswith("<information>") else role)
    console.print(Panel(escape(content), title=title, title_align="left", border_style=style))


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
) -> None:
    """Answer one question by searching DATA; the transcript is printed turn by turn."""
    from searchrl.agent.episode import run_episodes
    from searchrl.data.types import QAExample

    console = Console()
    settings = _settings(
        model, retriever=retriever, encoder=encoder, k=k, max_chars=max_chars, max_turns=max_turns,
        max_turn_tokens=max_turn_tokens, max_model_tokens=max_model_tokens,
    )
    tool = _load_tool(data, settings, seed)
    policy, _ = _load_policy(model, device)
    config = _episode_config(settings, temperature, seed)
    example = QAExample(id="ask", question=question, answers=("?",))
    [episode] = run_episodes(policy, tool, [example], config, on_message=lambda _, m: _print_message(console, m))
    console.print(
        f"[bold]finish:[/] {episode.finish_reason}   [bold]searches:[/] {episode.num_searches}   "
        f"[bold]answer:[/] {escape(episode.answer) if episode.answer is not None else '(none)'}"
    )
    if episode.error:
        stderr_console.print(f"[bold red]search failed:[/] {escape(episode.error)}")
        raise typer.Exit(1)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


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
        Path | None, typer.Option("--out", help="Write every transcript to this JSONL (rerun to resume).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out instead of resuming it.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Episodes generated together.")] = 16,
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
    tool = _load_tool(data, settings, seed)
    policy, model_name = _load_policy(model, device)
    judge = None
    if judge_model is not None:
        from searchrl.agent.judge import LLMJudge
        from searchrl.llm.transformers_engine import TransformersEngine

        judge = LLMJudge(TransformersEngine(judge_model, device=device), policy_model=model_name)
    config = _episode_config(settings, temperature, seed)
    run_info = {
        "model": model_name, "data": str(data.resolve()), "questions": str(questions.resolve()),
        "retriever": settings["retriever"], "encoder": settings["encoder"], "k": settings["k"],
        "max_chars": settings["max_chars"], "judge_model": judge_model,
    }
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
