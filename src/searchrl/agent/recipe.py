"""``searchrl recipe agent``: warm-start + GRPO, then warm-start vs trained on questions the run never saw.

One resumable command from a config to the figures a reader wants:

1. train (or resume) the run in ``OUT``: the warm-start, then GRPO; ``best/`` is chosen on the
   selection part of the run's own chunk-disjoint dev split (it may be the warm-start itself);
2. with ``ablate_retry``, train the same recipe without the retry reward in ``OUT/no-retry``,
   starting from the same warm-start adapter (``OUT/sft/adapter``, reused, not retrained);
3. play greedy episodes on the evaluation questions with the warm-start, ``OUT/best`` (and
   ``OUT/no-retry/best``): ``em``, ``f1``, ``searches_per_episode``, ``retries_per_episode``, ...;
4. compare them question by question (``differences``: each trained arm against the warm-start, and
   the two arms against each other, with a bootstrap interval of the mean difference);
5. with ``samples`` (by default :data:`ABLATION_SAMPLES` with ``ablate_retry``, else none), also play that
   many episodes of every question with each policy *sampled* as GRPO samples it (``grpo.temperature``),
   and compare their retries and F1 question by question (``sampled``). Greedy decoding reads a policy
   only at its likeliest choice: a policy that retries in a fifth of its sampled episodes but never
   where retrying is the likelier branch retries 0 times greedily, so only sampled episodes show
   whether the retry reward moved the policy at all.

The held-out check: a question of the evaluation file that shares its id or a gold document with
any training or dev question of the run is left out with a warning (none left: an error). Every
transcript goes to ``OUT/eval/<name>.jsonl`` and every finished part is skipped when the command
is rerun. The result is also written to ``OUT/recipe.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from searchrl.agent.config import AgentTrainConfig
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, DataError

#: Metrics of each evaluated policy that the recipe prints.
RECIPE_METRICS = (
    "em", "f1", "searches_per_episode", "retries_per_episode", "answered_rate", "retrieval_hit_rate",
    "answer_shown_rate", "f1_when_shown", "format_rate", "retry_rate_after_miss", "retry_rate_after_hit",
    "retry_rate_after_spoiled", "num_questions",
)
#: Metrics of each policy's sampled episodes (``--samples``), averaged over every episode played.
SAMPLED_METRICS = ("em", "f1", "searches_per_episode", "retries_per_episode", "retry_rate_after_miss",
                   "retry_rate_after_hit", "retry_rate_after_spoiled", "answered_rate", "format_rate")
#: What the sampled episodes are compared on, question by question (a question's mean over its episodes).
SAMPLED_COMPARISONS = ("retries_per_episode", "f1")
#: The greedy per-question scores written to ``OUT/per_question.json`` (for ``searchrl recipe pool``).
PER_QUESTION_METRICS = ("f1", "em", "retrieval_hit", "retries_per_episode")
NO_RETRY_DIR = "no-retry"
#: Sampled episodes per question when the retry reward is ablated and ``samples`` is not given: the ablation
#: asks whether the retry reward changes retrying, and in every ablation of docs/EXPERIMENTS.md that change
#: showed only in sampled episodes (no greedy held-out episode of either arm searched twice).
ABLATION_SAMPLES = 4
#: Joins a question's id and the number of its sampled copy: ``q7~2``.
COPY_MARK = "~"


def recipe_config(config: AgentTrainConfig, *, data: str | Path, out: str | Path) -> AgentTrainConfig:
    """``config`` pointed at the data folder ``data`` (corpus.jsonl, questions.jsonl unless the config names
    another file, and distractors given by a relative path) and the run directory ``out``."""
    data = Path(data).expanduser().resolve()
    questions = Path(config.data.questions).expanduser().resolve() if config.data.questions else data / "questions.jsonl"
    noise = config.tool.noise
    distractors = noise.distractors
    if distractors is not None and not Path(distractors).is_absolute() and not Path(distractors).exists():
        distractors = data / distractors
    return config.model_copy(
        update={
            "output_dir": Path(out),
            "data": config.data.model_copy(update={"questions": Path(questions), "corpus": data / "corpus.jsonl"}),
            "tool": config.tool.model_copy(update={"noise": noise.model_copy(update={"distractors": distractors})}),
        }
    )


def ablation_config(config: AgentTrainConfig) -> AgentTrainConfig:
    """The same recipe without the retry reward, from the main run's warm-start adapter, in ``OUT/no-retry``."""
    adapter = Path(config.output_dir) / "sft" / "adapter" if config.sft.enabled else config.init_adapter
    return config.model_copy(
        update={
            "output_dir": Path(config.output_dir) / NO_RETRY_DIR,
            "retry_reward": False,
            "init_adapter": adapter,
            "sft": config.sft.model_copy(update={"enabled": False}),
            "data": config.data.model_copy(update={"split_dir": config.data.split_dir or Path(config.output_dir) / "split"}),
        }
    )


def run_agent_recipe(
    config: AgentTrainConfig,
    *,
    eval_questions: str | Path,
    ablate_retry: bool = False,
    samples: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train ``config`` (and its no-retry ablation), then evaluate warm-start and trained policies on ``eval_questions``
    (greedy; with ``samples``, also that many sampled episodes per question: by default
    :data:`ABLATION_SAMPLES` with ``ablate_retry``, else none)."""
    if samples is None:
        samples = ABLATION_SAMPLES if ablate_retry else 0
    if samples < 0:
        raise ConfigError(f"samples must be 0 or more, got {samples}")
    from searchrl.agent.train import split_questions, train_agent

    started = time.time()
    out = Path(config.output_dir)
    runs = {"trained": config}
    if ablate_retry:
        runs["trained_no_retry"] = ablation_config(config)
    for settings in runs.values():
        if not run_finished(settings):
            train_agent(settings, force=force)
    trained_at = time.time()

    questions = split_questions(config.model_copy(update={"data": config.data.resolved()}), out)
    examples, left_out = held_out_questions(eval_questions, [*questions.train, *questions.dev])
    warm_adapter = Path(out) / "sft" / "adapter" if config.sft.enabled else config.init_adapter
    adapters: dict[str, Path | None] = {"warm_start": warm_adapter}
    for name, settings in runs.items():
        best = _best_record(Path(settings.output_dir))
        # best/ of a run no GRPO step improved holds the step-0 policy, i.e. the warm-start adapter saved as
        # it was loaded: the same weights, so the same episodes; it is not played again.
        adapters[name] = None if best is not None and best["is_warm_start"] else Path(settings.output_dir) / "best"
    results, transcripts = _evaluate_all(config, adapters, examples, out / "eval", samples=0)

    summary: dict[str, Any] = {name: {k: metrics.get(k) for k in RECIPE_METRICS} for name, metrics in results.items()}
    summary["eval_questions"] = {"file": str(eval_questions), "evaluated": len(examples), "left_out": left_out,
                                 "held_out_by": "question id and gold document ids"}
    summary["differences"] = compare_policies(transcripts, examples, config.eval.metric)
    sampled_transcripts: dict[str, Path] = {}
    if samples:
        sampled, sampled_transcripts = _evaluate_all(config, adapters, examples, out / "eval", samples=samples)
        summary["sampled"] = {
            "samples_per_question": samples,
            "num_questions": len(examples),
            "temperature": config.grpo.temperature,
            "top_p": config.grpo.top_p,
            **{name: {k: metrics.get(k) for k in SAMPLED_METRICS} for name, metrics in sampled.items()},
            "differences": compare_sampled(sampled_transcripts, examples, samples),
        }
    summary["checkpoints"] = {name: _best_record(Path(s.output_dir)) for name, s in runs.items()}
    summary["selection"] = (f"best/ chosen by {config.eval.metric} ({config.eval.chosen_by}) on the selection part of the run's dev split "
                            f"({len(questions.select)} questions, {out / 'selection.json'}); step 0 is the warm-start")
    summary["seconds"] = {"training": round(trained_at - started, 1), "evaluation": round(time.time() - trained_at, 1)}
    write_question_scores(out, examples, transcripts, sampled_transcripts, samples, source=str(eval_questions))
    (out / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def write_question_scores(
    out: Path, examples: Sequence[QAExample], transcripts: dict[str, Path], sampled_transcripts: dict[str, Path],
    samples: int, *, source: str,
) -> Path:
    """``OUT/per_question.json``: each policy's score on each question (greedy, and with ``samples`` the mean of its
    sampled episodes), which ``searchrl recipe pool`` pools over runs."""
    from searchrl.agent.evaluate import example_key
    from searchrl.pool import write_per_question

    def scores(paths: dict[str, Path], metrics: Sequence[str], copies: int) -> dict[str, Any]:
        return {m: {name: _question_values(path, examples, m, copies) for name, path in paths.items()} for m in metrics}

    sampled = ({"samples": samples, "scores": scores(sampled_transcripts, SAMPLED_COMPARISONS, samples)}
               if samples else None)
    return write_per_question(out, "agent", scores(transcripts, PER_QUESTION_METRICS, 0),
                              questions={e.id: example_key(e) for e in examples}, sampled=sampled, source=source)


def run_finished(config: AgentTrainConfig) -> bool:
    """Whether ``config``'s run directory holds a finished run of exactly this configuration."""
    from searchrl.runs import finished_run_of

    resolved = config.model_copy(update={"data": config.data.resolved()})
    return (Path(config.output_dir) / "best").is_dir() and finished_run_of(config.output_dir, resolved)


def held_out_questions(path: str | Path, seen: Sequence[QAExample]) -> tuple[list[QAExample], int]:
    """The questions of ``path`` that share neither id nor gold document with ``seen``; and how many were left out."""
    from searchrl.data.qa import load_qa

    examples = load_qa(path)
    seen_ids = {e.id for e in seen}
    seen_gold = {g for e in seen for g in e.gold_ids}
    kept = [e for e in examples if e.id not in seen_ids and not seen_gold.intersection(e.gold_ids)]
    left_out = len(examples) - len(kept)
    if not kept:
        raise DataError(
            f"all {len(examples)} evaluation questions share an id or a gold document with the run's training or dev questions",
            path=path,
            hint="evaluate on questions about other documents (e.g. a chunk-disjoint part held out with "
            "searchrl.agent.splits.make_split, and train with --set data.questions=<the rest>)",
        )
    if left_out:
        warnings.warn(
            f"{path}: left out {left_out} of {len(examples)} evaluation questions that share an id or a gold document "
            "with the run's training or dev questions (held-out check)",
            stacklevel=2,
        )
    return kept, left_out


def _evaluate_all(
    config: AgentTrainConfig, adapters: dict[str, Path | None], examples: Sequence[QAExample], folder: Path,
    *, samples: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """Metrics and transcript paths of every policy of ``adapters`` (``warm_start`` first; an arm whose adapter is
    ``None`` is the warm-start itself and shares its episodes)."""
    suffix = f".sampled-{samples}.jsonl" if samples else ".jsonl"
    results: dict[str, dict[str, Any]] = {}
    transcripts: dict[str, Path] = {}
    for name, adapter in adapters.items():
        if name != "warm_start" and adapter is None:
            results[name], transcripts[name] = results["warm_start"], transcripts["warm_start"]
            continue
        transcripts[name] = folder / f"{name}{suffix}"
        results[name] = evaluate_policy(config, adapter, examples, transcripts[name], samples=samples)
    return results, transcripts


def sampled_copies(examples: Sequence[QAExample], samples: int) -> list[QAExample]:
    """``samples`` copies of each question, ids ``<id>~<j>``, a question's copies side by side (one batch plays
    them together, each drawing its own episode).

    >>> [e.id for e in sampled_copies([QAExample("q1", "?", ("a",)), QAExample("q2", "?", ("b",))], 2)]
    ['q1~0', 'q1~1', 'q2~0', 'q2~1']
    """
    return [replace(e, id=f"{e.id}{COPY_MARK}{j}") for e in examples for j in range(samples)]


def evaluate_policy(
    config: AgentTrainConfig, adapter: Path | None, examples: Sequence[QAExample], out_path: Path, *, samples: int = 0
) -> dict[str, Any]:
    """Greedy episodes of the base model plus ``adapter`` on ``examples`` (metrics cached next to the transcripts);
    with ``samples``, that many episodes of each question sampled at the rollouts' temperature instead."""
    from searchrl.agent.evaluate import example_key
    from searchrl.agent.train import _play_dev, build_tool, load_policy_model
    from searchrl.data.io import atomic_write_text
    from searchrl.llm.identity import folder_fingerprint
    from searchrl.training import resolve_device

    cache = out_path.with_suffix(".json")
    episode = config.rollout_episode_config() if samples else config.eval_episode_config()
    identity = {
        "model": config.model,
        "precision": config.precision,
        "adapter": None if adapter is None else folder_fingerprint(adapter),
        "tool": config.tool.model_dump(mode="json"),
        "episode": episode.model_dump(mode="json"),
        "questions": [example_key(e) for e in examples],
    }
    if samples:
        identity["samples"] = samples
        examples = sampled_copies(examples, samples)
    # The cache names policy and settings before the first episode and holds the metrics after the last. One cut
    # short under these settings resumes; one of another policy or other settings, finished or not, is played again
    # (the recipe owns RUN/eval and has no --overwrite). Its transcripts go before the new identity is written, so
    # an interruption in between cannot leave them to be resumed as these settings' episodes.
    if cache.exists():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("identity") != identity:
            out_path.unlink(missing_ok=True)
        elif stored.get("metrics") is not None:
            return stored["metrics"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"identity": identity, "metrics": None}, indent=2) + "\n")
    device = resolve_device(config.device)
    model, tokenizer = load_policy_model(config, adapter, device)
    report = _play_dev(
        model, tokenizer, build_tool(config), examples, episode, out_path=out_path,
        batch_size=config.eval.batch_size, overwrite=False,
        run_info={k: v for k, v in identity.items() if k != "questions"},
    )
    metrics = {k: v for k, v in report.metrics.items() if not isinstance(v, dict)}
    atomic_write_text(cache, json.dumps({"identity": identity, "metrics": metrics}, indent=2) + "\n")
    return metrics


def compare_policies(transcripts: dict[str, Path], examples: Sequence[QAExample], metric: str) -> dict[str, Any]:
    """Each trained policy against the warm-start (and the two trained arms against each other), question by
    question on ``metric``: mean difference, bootstrap interval, questions better / worse / tied."""
    from searchrl.metrics import paired_difference

    scores = {name: _question_values(path, examples, metric) for name, path in transcripts.items()}
    compared: dict[str, Any] = {}
    for name, baseline in _pairs(transcripts):
        # A question one side could not score (its search tool failed) is left out, as the averages leave it out.
        both = [q for q, score in scores[baseline].items() if score is not None and scores[name][q] is not None]
        difference = paired_difference({q: scores[baseline][q] for q in both}, {q: scores[name][q] for q in both})
        compared[f"{name}_vs_{baseline}"] = {"metric": metric, **difference, "left_out": len(scores[baseline]) - len(both)}
    return compared


def compare_sampled(transcripts: dict[str, Path], examples: Sequence[QAExample], samples: int) -> dict[str, Any]:
    """The sampled episodes of each trained policy against the warm-start's (and arm against arm), question by
    question on each of :data:`SAMPLED_COMPARISONS`: a question's value is its mean over its ``samples`` episodes
    (those its search tool did not fail)."""
    from searchrl.metrics import paired_difference

    values = {name: {metric: _question_values(path, examples, metric, samples) for metric in SAMPLED_COMPARISONS}
              for name, path in transcripts.items()}
    compared: dict[str, Any] = {}
    for name, baseline in _pairs(transcripts):
        compared[f"{name}_vs_{baseline}"] = {}
        for metric in SAMPLED_COMPARISONS:
            a, b = values[baseline][metric], values[name][metric]
            both = [q for q in a if a[q] is not None and b[q] is not None]
            difference = paired_difference({q: a[q] for q in both}, {q: b[q] for q in both})
            compared[f"{name}_vs_{baseline}"][metric] = {**difference, "left_out": len(a) - len(both)}
    return compared


def _pairs(transcripts: dict[str, Path]) -> list[tuple[str, str]]:
    """The recipe's comparisons (:data:`searchrl.pool.COMPARISONS`) between the policies played."""
    from searchrl.pool import COMPARISONS

    return [(name, baseline) for name, baseline in COMPARISONS["agent"] if name in transcripts and baseline in transcripts]


def _episode_value(record: dict[str, Any], metric: str) -> float | None:
    """``metric`` of one transcript record: a score, or ``retries_per_episode`` (searches after the first)."""
    from searchrl.agent.evaluate import episode_retries

    if metric == "retries_per_episode":
        return None if record.get("finish_reason") == "tool_error" else float(episode_retries(record))
    score = record["scores"].get(metric)
    return None if score is None else float(score)


def _question_values(path: Path, examples: Sequence[QAExample], metric: str, samples: int = 0) -> dict[str, float | None]:
    """``metric`` of each question of ``examples`` in the evaluation transcripts at ``path`` (``None``: not scored);
    with ``samples``, each question's mean over the episodes of its copies (:func:`sampled_copies`)."""
    from searchrl.agent.evaluate import example_key
    from searchrl.data.io import iter_jsonl

    played = sampled_copies(examples, samples) if samples else list(examples)
    wanted = {e.id: example_key(e) for e in played}
    found: dict[str, float | None] = {}
    for _, record in iter_jsonl(path):
        if wanted.get(record.get("question_id")) == record.get("example_key"):
            found[record["question_id"]] = _episode_value(record, metric)
    if len(found) != len(wanted):
        raise DataError(f"the evaluation transcripts hold {len(found)} of the {len(wanted)} episodes", path=path,
                        hint="rerun the recipe to finish the evaluation")
    if not samples:
        return found
    per_question: dict[str, list[float]] = {e.id: [] for e in examples}
    for copy_id, value in found.items():
        if value is not None:
            per_question[copy_id.rsplit(COPY_MARK, 1)[0]].append(value)
    return {q: (sum(v) / len(v) if v else None) for q, v in per_question.items()}


def _best_record(run: Path) -> dict[str, Any] | None:
    path = run / "best.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    record["is_warm_start"] = int(record.get("step", -1)) == 0
    return record


__all__ = [
    "ablation_config", "compare_sampled", "evaluate_policy", "held_out_questions", "recipe_config", "run_agent_recipe",
    "run_finished", "sampled_copies", "write_question_scores",
]
