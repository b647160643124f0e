"""``searchrl recipe coaug|agent|pool``: one command per published result, end to end and resumable.

Each trains with checkpoint selection on its own dev data, then evaluates the untrained and
the trained policy the same way on the split or question file given, and prints one JSON
object (``--json``) or a short table. Rerunning the same command resumes where it stopped.
``recipe pool`` reads several runs of one recipe (seeds) as one result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

recipe_app = typer.Typer(
    help="Reproduce a result end to end: train, expand or run the agent, evaluate (resumable).", no_args_is_help=True
)

SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config field, e.g. --set grpo.steps=20 (repeatable).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Resume even if RUN holds a different config.")]


@recipe_app.command("coaug")
def recipe_coaug(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder with train and dev qrels (and the eval split).")],
    eval_split: Annotated[str, typer.Option("--eval-split", help="Split to report on, e.g. test (or dev: its report part).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (training, expansions, recipe.json).")],
    config: Annotated[
        str, typer.Option("--config", help="Packaged recipe name or YAML file.")
    ] = "coaug-cpu",
    set_: SetOption = None,
    json_: JsonOption = False,
    force: ForceOption = False,
) -> None:
    """Co-augmentation: train (selecting on dev), expand the whole corpus and the eval queries with the
    untrained and the best checkpoint, and compare BM25, untrained and trained nDCG@10 on --eval-split."""
    from searchrl.coaug.config import CoAugConfig
    from searchrl.coaug.recipe import run_coaug_recipe
    from searchrl.config import load_config

    settings = load_config(CoAugConfig, config, [*(set_ or []), f"data={data}", f"output_dir={out}"])
    summary = run_coaug_recipe(settings, eval_split=eval_split, out=out, force=force)
    if json_:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"nDCG@10 on {summary['queries']} ({eval_split}):")
    for name in ("bm25", "untrained", "trained"):
        typer.echo(f"  {name:<10} {summary[name]:.4f}")
    typer.echo(f"checkpoint: {summary['checkpoint']['path']} (step {summary['checkpoint']['step']}, "
               f"chosen on {summary['selection']})")
    _echo_differences(summary["differences"])


@recipe_app.command("agent")
def recipe_agent(
    data: Annotated[Path, typer.Option("--data", help="Folder with corpus.jsonl and questions.jsonl (the training QA set).")],
    eval_questions: Annotated[
        Path, typer.Option("--eval-questions", help="QA JSONL to report on; questions sharing an id or gold document "
                           "with the run's training or dev questions are left out with a warning.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run directory (training, eval transcripts, recipe.json).")],
    config: Annotated[str, typer.Option("--config", help="Packaged recipe name or YAML file.")] = "agent-cpu",
    ablate_retry: Annotated[
        bool, typer.Option("--ablate-retry", help="Also train without the retry reward (same warm-start) and report it.")
    ] = False,
    samples: Annotated[
        Optional[int], typer.Option("--samples", min=0, help="Also play N episodes per question with each policy "
                                    "sampled at grpo.temperature, and compare their retries and F1 (greedy episodes "
                                    "show only the likeliest choice). Default: 4 with --ablate-retry, whose retry "
                                    "difference has shown only in sampled episodes; 0 otherwise (--samples 0: greedy only).")
    ] = None,
    set_: SetOption = None,
    json_: JsonOption = False,
    force: ForceOption = False,
) -> None:
    """Search agent: warm-start + GRPO (best checkpoint chosen on the run's own dev split), then greedy
    episodes of the warm-start and the trained agent on --eval-questions: EM, F1, searches and retries
    (with --samples, also sampled episodes)."""
    from searchrl.agent.config import load_agent_config
    from searchrl.agent.recipe import RECIPE_METRICS, recipe_config, run_agent_recipe

    settings = recipe_config(load_agent_config(config, list(set_ or [])), data=data, out=out)
    summary = run_agent_recipe(settings, eval_questions=eval_questions, ablate_retry=ablate_retry, samples=samples,
                               force=force)
    if json_:
        typer.echo(json.dumps(summary))
        return
    names = [n for n in ("warm_start", "trained", "trained_no_retry") if n in summary]
    typer.echo(f"greedy episodes on {summary['eval_questions']['evaluated']} questions of {eval_questions}:")
    typer.echo("  " + f"{'':<18}" + "".join(f"{m:>22}" for m in RECIPE_METRICS[:4]))
    for name in names:
        typer.echo("  " + f"{name:<18}" + "".join(f"{summary[name][m]:>22.4f}" for m in RECIPE_METRICS[:4]))
    for name, record in summary["checkpoints"].items():
        if record is not None:
            where = "the warm-start (no GRPO step beat it)" if record["is_warm_start"] else f"GRPO step {record['step']}"
            typer.echo(f"{name}: best/ is {where}; {summary['selection']}")
    _echo_differences(summary["differences"])
    if "sampled" in summary:
        sampled = summary["sampled"]
        typer.echo(f"sampled episodes ({sampled['samples_per_question']} per question, temperature "
                   f"{sampled['temperature']}):")
        for name in names:
            typer.echo("  " + f"{name:<18}" + "".join(f"{sampled[name][m]:>22.4f}" for m in RECIPE_METRICS[:4]))
        for key, by_metric in sampled["differences"].items():
            for metric, difference in by_metric.items():
                words = ("more", "fewer") if metric == "retries_per_episode" else ("better", "worse")
                _echo_differences({key: {**difference, "metric": metric}}, prefix="sampled ", words=words)


@recipe_app.command("pool")
def recipe_pool(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (--out) of one recipe, evaluated on the same "
                                               "questions, e.g. one per seed.")],
    json_: JsonOption = False,
) -> None:
    """Pool several runs of one recipe: each policy's score per run and on average, and each comparison's
    per-question difference averaged over the runs, with intervals over questions and over runs and questions."""
    from searchrl.pool import pool_runs

    pooled = pool_runs(runs)
    if json_:
        typer.echo(json.dumps(pooled))
        return
    typer.echo(f"{len(runs)} {pooled['recipe']} runs, {pooled['num_questions']} questions ({pooled['source']}):")
    for name, steps in pooled["checkpoint_steps"].items():
        typer.echo(f"  {name} best/ at step " + ", ".join("n/a" if step is None else str(step) for step in steps)
                   + " (step 0: the starting policy)")
    for name, why in pooled["policies_left_out"].items():
        typer.echo(f"  {name} left out: {why}")
    parts = [("", pooled)]
    if "sampled" in pooled:
        counts = "/".join(str(n) for n in pooled["sampled"]["samples_per_question"])
        parts.append((f"sampled ({counts} per question) ", pooled["sampled"]))
    for prefix, part in parts:
        for name, by_metric in part["policies"].items():
            typer.echo(f"  {prefix}{name:<18}" + "  ".join(
                f"{metric} {record['mean']:.4f} ({', '.join(_number(v) for v in record['per_run'])})"
                for metric, record in by_metric.items()))
        for key, by_metric in part["differences"].items():
            for metric, d in by_metric.items():
                low, high = d["interval_over_runs_and_questions"]
                q_low, q_high = d["interval_over_questions"]
                typer.echo(f"{prefix}{key.replace('_vs_', ' vs ')}: {metric} {d['mean']:+.4f} over {d['num_runs']} runs "
                           f"({d['runs_above_zero']} above 0; {d['confidence']:.0%} interval over runs and questions "
                           f"{low:+.4f} to {high:+.4f}, over questions {q_low:+.4f} to {q_high:+.4f})")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _echo_differences(differences: dict, prefix: str = "", words: tuple[str, str] = ("better", "worse")) -> None:
    """One line per paired comparison: mean difference, its interval, and the per-query tally."""
    for key, d in differences.items():
        typer.echo(f"{prefix}{key.replace('_vs_', ' vs ')}: {d['metric']} {d['mean']:+.4f} "
                   f"({d['confidence']:.0%} interval {d['low']:+.4f} to {d['high']:+.4f}; "
                   f"{words[0]} on {d['better']}, {words[1]} on {d['worse']} of {d['num_queries']}"
                   + (f"; {d['left_out']} unscored left out)" if d.get("left_out") else ")"))


def register(app: typer.Typer) -> None:
    """Add ``recipe coaug``, ``recipe agent`` and ``recipe pool`` to ``app``."""
    app.add_typer(recipe_app, name="recipe")
