"""``searchrl train coaug|agent`` and ``searchrl quickstart``.

``train coaug`` runs query/document co-augmentation RL from a YAML config (``--set key=value``
overrides any field); ``train agent`` does the same for the search agent. Both write a run
directory (config, input hashes, metrics, TensorBoard, checkpoints, best/, report.md) and resume
from the last checkpoint when rerun with the same command.

``quickstart`` trains a short co-augmentation run on a slice of BEIR SciFact with the default
small model and prints BM25 vs untrained vs trained nDCG@10 on dev.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

train_app = typer.Typer(help="Train with RL: co-augmentation (coaug) or the search agent (agent).", no_args_is_help=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", help="A recipe shipped with searchrl (coaug-cpu, coaug-gpu, coaug-quickstart, agent-cpu, "
                 "agent-gpu) or a YAML config file."),
]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config field, e.g. --set steps=20 (repeatable).")
]
OutOption = Annotated[Optional[Path], typer.Option("--out", help="Run directory (overrides output_dir in the config).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
ForceOption = Annotated[
    bool,
    typer.Option("--force", help="Resume even if the run directory holds a different config (the new one replaces it)."),
]
PrintConfigOption = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the resolved config (YAML) and every key with its help for --set, then exit without training.",
    ),
]


def _resolve_models(*models: tuple[str | None, str]) -> None:
    """Resolve every ``(model, kind)`` a run will load, before the trainer writes its run directory.

    A name that does not resolve (a typo in ``--set model=...``) fails here with the resolver's
    one-line error; written into ``config.yaml`` first, it would make the corrected command a
    "different configuration".
    """
    from searchrl.resolver import resolve_model

    for name, kind in models:
        if name:
            resolve_model(name, kind=kind)  # type: ignore[arg-type]


def _run_summary(run_dir: Path) -> dict:
    """What a finished training run says about itself: where it is, its best checkpoint, its dev evaluations."""
    from searchrl.runs import RunDirectory

    run = RunDirectory(run_dir)
    records = run.read_metrics()
    dev = [r for r in records if any(key.startswith("dev/") for key in r)]
    return {
        "run_dir": str(run_dir),
        "best": run.best(),
        "best_dir": str(run.best_dir),
        "steps": max((int(r.get("step", 0)) for r in records), default=0),
        "dev": dev,
        "report": str(Path(run_dir) / "report.html"),
    }


def _print_config(model: type, config: Path, overrides: list[str]) -> None:
    from searchrl.config import format_config, load_config

    typer.echo(format_config(load_config(model, config, overrides)), nl=False)


@train_app.command("coaug")
def train_coaug(
    config: ConfigOption, set_: SetOption = None, out: OutOption = None, force: ForceOption = False,
    print_config: PrintConfigOption = False, json_: JsonOption = False,
) -> None:
    """Train query/document co-augmentation with GRPO; prints the run directory (--json: a summary)."""
    overrides = list(set_ or [])
    if out is not None:
        overrides.append(f"output_dir={out}")
    if print_config:
        from searchrl.coaug.config import CoAugConfig

        return _print_config(CoAugConfig, config, overrides)
    from searchrl.coaug.config import CoAugConfig
    from searchrl.coaug.train import train_coaug_from_yaml
    from searchrl.config import load_config

    settings = load_config(CoAugConfig, config, overrides)
    _resolve_models(
        (settings.model, "causal-lm"),
        (settings.encoder if settings.retriever == "dense" else None, "sentence-transformer"),
    )
    run_dir = train_coaug_from_yaml(config, overrides, force=force)
    typer.echo(json.dumps(_run_summary(run_dir)) if json_ else str(run_dir))


@train_app.command("agent")
def train_agent(
    config: ConfigOption, set_: SetOption = None, force: ForceOption = False, print_config: PrintConfigOption = False,
    json_: JsonOption = False,
) -> None:
    """Train the multi-turn search agent with GRPO; prints the run directory (--json: a summary)."""
    from searchrl.agent.train import AgentTrainConfig, load_agent_config, train_agent_from_yaml
    from searchrl.resolver import DEFAULT_ENCODER

    if print_config:
        return _print_config(AgentTrainConfig, config, list(set_ or []))
    settings = load_agent_config(config, list(set_ or []))
    dense = settings.tool.retriever in ("dense", "hybrid")
    _resolve_models(
        (settings.model, "causal-lm"),
        (settings.judge_model if settings.rewards.metric == "judge" else None, "causal-lm"),
        ((settings.tool.encoder or DEFAULT_ENCODER) if dense else None, "sentence-transformer"),
    )
    run_dir = train_agent_from_yaml(config, list(set_ or []), force=force)
    typer.echo(json.dumps(_run_summary(run_dir)) if json_ else str(run_dir))


def quickstart(
    data: Annotated[
        Optional[Path],
        typer.Option("--data", help="Local BEIR folder (default: download BEIR SciFact into the cache)."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Policy model (default: the package's small LLM).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="RL steps (default from the preset).")] = None,
    json_: JsonOption = False,
) -> None:
    """Train a short co-augmentation run on SciFact and compare BM25, untrained and trained nDCG@10."""
    from searchrl.coaug.quickstart import run_quickstart

    summary = run_quickstart(data=data, out=out, model=model, steps=steps)
    typer.echo(json.dumps(summary.as_dict()) if json_ else summary.table())


def register(app: typer.Typer) -> None:
    """Add ``train coaug``, ``train agent`` and ``quickstart`` to ``app``."""
    app.add_typer(train_app, name="train")
    app.command("quickstart")(quickstart)
