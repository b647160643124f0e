"""``searchrl recipe pool RUN RUN ...``: one recipe run several times (seeds), read as one result.

At the scale a CPU affords, one run of an RL recipe moves its evaluation metric by less than the spread
between seeds, so a single run's "trained minus untrained" answers little. Each recipe writes its
per-question scores to ``RUN/per_question.json``; pooling reads them from several runs evaluated on the
same questions and reports, for every comparison the recipes make (trained against its starting point,
and the retry ablation's two arms):

- each run's mean difference, and how many runs are above 0;
- the **pooled** difference: each question's difference averaged over the runs, then over questions;
- an interval over **questions** (a percentile bootstrap of the pooled mean, resampling questions): how
  sure the figure is for these runs, were other questions asked;
- an interval over **runs and questions** (a two-stage bootstrap: resample the runs, then the questions):
  also counts the seeds' spread, so it is the wider one and the one to quote for "the recipe gains".
  With two or three runs the runs' part of it is coarse; it is reported, not smoothed.

A dedicated statistics library is not needed for this: ``scipy.stats.bootstrap`` resamples one level;
the two-level resampling is a few lines of NumPy, written here so that both intervals use one seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from searchrl.errors import DataError

#: The file each recipe writes beside ``recipe.json``.
PER_QUESTION_FILE = "per_question.json"
#: Which policy each recipe's comparisons set against which: ``(other, baseline)``.
COMPARISONS = {
    "agent": (("trained", "warm_start"), ("trained_no_retry", "warm_start"), ("trained", "trained_no_retry")),
    "coaug": (("trained", "untrained"), ("trained", "bm25"), ("untrained", "bm25")),
}


def write_per_question(
    run: str | Path, recipe: str, scores: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    *, questions: Mapping[str, str], sampled: Mapping[str, Any] | None = None, source: str = "",
) -> Path:
    """Write ``RUN/per_question.json``: ``scores[metric][policy][question id]`` (``None``: not scored),
    ``questions`` maps each question id to a key of its content (so pooled runs are checked to share them),
    ``sampled`` optionally ``{"samples": N, "scores": {...}}`` of the same shape."""
    from searchrl.data.io import atomic_write_text

    record: dict[str, Any] = {"recipe": recipe, "source": source, "questions": dict(questions), "scores": scores}
    if sampled is not None:
        record["sampled"] = sampled
    path = Path(run) / PER_QUESTION_FILE
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def pooled_difference(
    runs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], *, confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> dict[str, Any]:
    """``other - baseline`` over several runs, each a ``(baseline, other)`` pair of per-question scores on the
    same questions: per-run means, the pooled mean, and its intervals over questions and over runs and
    questions (module docstring).

    >>> d = pooled_difference([({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 0.0}), ({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 1.0})])
    >>> d["per_run"], d["mean"], d["runs_above_zero"], (d["better"], d["worse"], d["ties"])
    ([0.5, 0.5], 0.5, 2, (2, 0, 0))
    """
    import numpy as np

    if not runs:
        raise DataError("pooling needs at least one run")
    ids = sorted(runs[0][0])
    for baseline, other in runs:
        if set(baseline) != set(ids) or set(other) != set(ids):
            raise DataError("pooled runs must score the same questions on both sides")
    if not ids:
        raise DataError("pooling needs at least one question")
    diffs = np.array([[float(other[q]) - float(baseline[q]) for q in ids] for baseline, other in runs])
    per_question = diffs.mean(axis=0)
    mean = float(per_question.mean())
    level = (1 - confidence) / 2
    rng = np.random.default_rng(seed)
    num_runs, num_questions = diffs.shape
    # A resample is how many times it draws each question (and each run): multinomial counts are drawing with
    # replacement, without holding resamples x runs x questions draws in memory.
    question_counts = rng.multinomial(num_questions, np.full(num_questions, 1 / num_questions), size=resamples)
    run_counts = rng.multinomial(num_runs, np.full(num_runs, 1 / num_runs), size=resamples)
    over_questions = question_counts @ per_question / num_questions
    # Stage two reads the drawn questions in every drawn run (the runs share their questions).
    over_runs = ((run_counts @ diffs) * question_counts).sum(axis=1) / (num_runs * num_questions)

    def interval(values: Any) -> list[float]:
        if np.all(diffs == diffs.flat[0]):
            return [mean, mean]
        return [float(np.quantile(values, level)), float(np.quantile(values, 1 - level))]

    return {
        "mean": mean,
        "per_run": [float(row.mean()) for row in diffs],
        "runs_above_zero": int((diffs.mean(axis=1) > 0).sum()),
        "interval_over_questions": interval(over_questions),
        "interval_over_runs_and_questions": interval(over_runs),
        "confidence": confidence,
        # on the per-question mean over runs
        "better": int((per_question > 0).sum()), "worse": int((per_question < 0).sum()),
        "ties": int((per_question == 0).sum()),
        "num_runs": num_runs, "num_queries": num_questions,
    }


def load_per_question(run: str | Path) -> dict[str, Any]:
    """``RUN/per_question.json``, or an error that says how to write it."""
    path = Path(run) / PER_QUESTION_FILE
    if not Path(run).is_dir():
        raise DataError("not a run directory", path=run, hint="pass the --out folders of finished recipe runs")
    if not path.exists():
        raise DataError(
            "no per-question scores in this run (recipes write them since this command exists)", path=path,
            hint="rerun the run's recipe command with the same options and --out: it skips every finished part "
                 "and writes them",
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg})", path=path, line=error.lineno,
                        hint="rerun the run's recipe command to write it again") from error
    if record.get("recipe") not in COMPARISONS or not isinstance(record.get("scores"), dict):
        raise DataError("not a per-question score file of a recipe", path=path,
                        hint="rerun the run's recipe command to write it again")
    return record


def pool_runs(runs: Sequence[str | Path], *, confidence: float = 0.95, resamples: int = 10_000) -> dict[str, Any]:
    """Each policy's mean score per run and over runs, and every comparison of the recipe pooled over ``runs``
    (all of one recipe, evaluated on the same questions)."""
    if len(runs) < 2:
        raise DataError(f"pooling needs at least two runs, got {len(runs)}", hint="pass several --out folders")
    seen: dict[Path, str | Path] = {}
    for run in runs:
        first = seen.setdefault(Path(run).resolve(), run)
        if first is not run:
            raise DataError(f"run passed twice ({first} and {run})", path=run, hint="pass each run once")
    records = [load_per_question(run) for run in runs]
    recipe = records[0]["recipe"]
    for run, record in zip(runs, records):
        if record["recipe"] != recipe:
            raise DataError(f"a {record['recipe']} run cannot be pooled with {recipe} runs ({runs[0]})",
                            path=Path(run) / PER_QUESTION_FILE, hint="pool runs of one recipe")
        if record["questions"] != records[0]["questions"]:
            differ = sorted(set(record["questions"].items()) ^ set(records[0]["questions"].items()))
            raise DataError(
                f"evaluated on other questions than {runs[0]} ({len(differ)} id/content pairs differ, e.g. "
                f"{differ[0][0]!r})", path=Path(run) / PER_QUESTION_FILE,
                hint="pool runs evaluated on the same questions (the same --eval-questions file or --eval-split)",
            )
    result: dict[str, Any] = {
        "recipe": recipe, "runs": [str(run) for run in runs], "num_questions": len(records[0]["questions"]),
        "source": records[0].get("source", ""), "checkpoint_steps": _checkpoint_steps(runs, recipe),
    }
    result.update(_pool_scores([r["scores"] for r in records], recipe, confidence, resamples))
    held = {name for r in records for by_policy in r["scores"].values() for name in by_policy}
    result["policies_left_out"] = {
        name: f"in {sum(any(name in p for p in r['scores'].values()) for r in records)} of {len(records)} runs"
        for name in sorted(held - set(result["policies"]))
    }
    sampled = [r.get("sampled") for r in records]
    if all(sampled):
        counts = {s["samples"] for s in sampled}
        result["sampled"] = {"samples_per_question": sorted(counts),
                             **_pool_scores([s["scores"] for s in sampled], recipe, confidence, resamples)}
    elif any(sampled):
        result["sampled_left_out"] = "only some runs played sampled episodes (--samples); pooled greedy only"
    return result


def _pool_scores(scores: Sequence[Mapping[str, Any]], recipe: str, confidence: float, resamples: int) -> dict[str, Any]:
    """Each policy's per-run and mean score, and each comparison pooled, for every metric all runs hold."""
    metrics = [m for m in scores[0] if all(m in s for s in scores)]
    policies: dict[str, dict[str, Any]] = {}
    differences: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        names = [p for p in scores[0][metric] if all(p in s[metric] for s in scores)]
        for name in names:
            means = [_mean(s[metric][name]) for s in scores]
            policies.setdefault(name, {})[metric] = {"per_run": means, "mean": _mean(dict(enumerate(means)))}
        for other, baseline in COMPARISONS[recipe]:
            if other not in names or baseline not in names:
                continue
            # A question one side of one run could not score (its search failed) is left out of every run.
            asked = set().union(*(s[metric][name] for s in scores for name in (baseline, other)))
            unscored = {q for q in asked for s in scores for name in (baseline, other) if s[metric][name].get(q) is None}
            kept = [({q: v for q, v in s[metric][baseline].items() if q not in unscored},
                     {q: v for q, v in s[metric][other].items() if q not in unscored}) for s in scores]
            differences.setdefault(f"{other}_vs_{baseline}", {})[metric] = {
                **pooled_difference(kept, confidence=confidence, resamples=resamples), "left_out": len(unscored),
            }
    return {"policies": policies, "differences": differences}


def _checkpoint_steps(runs: Sequence[str | Path], recipe: str) -> dict[str, list[int | None]]:
    """The step of each run's ``best/`` per trained policy (0: the starting policy), read from ``RUN/recipe.json``."""
    steps: dict[str, list[int | None]] = {}
    for run in runs:
        path = Path(run) / "recipe.json"
        summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        chosen = summary.get("checkpoints", {}) if recipe == "agent" else {"trained": summary.get("checkpoint")}
        for name in ("trained", "trained_no_retry"):
            if name in chosen or name in steps:
                steps.setdefault(name, []).append((chosen.get(name) or {}).get("step"))
    return steps


def _mean(values: Mapping[Any, float | None]) -> float | None:
    scored = [v for v in values.values() if v is not None]
    return sum(scored) / len(scored) if scored else None


__all__ = ["COMPARISONS", "PER_QUESTION_FILE", "load_per_question", "pool_runs", "pooled_difference", "write_per_question"]
