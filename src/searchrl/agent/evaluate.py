"""Evaluate a search agent on a QA set: accuracy, searching behaviour, every transcript on disk.

Scores use the same functions as the training rewards (:mod:`searchrl.agent.rewards`), so an
answer counts only if the last turn ends with a proper ``<answer>``, and a hedged answer
("A or B") scores 0 under EM, F1 and the judge alike. Episodes whose search tool failed are
counted (``tool_errors``) and left out of the averages rather than scored 0.

Transcripts are appended to the JSONL file batch by batch; rerunning the same command skips
the questions already there (interruptible and resumable), and refuses a file written with a
different configuration. Both checks go by content, not by path: every record carries a hash
of its question, reference answers and gold ids (:func:`example_key`), and a question whose
content changed is played again; the configuration's hash (:func:`eval_key`) covers whatever
``run_info`` says (``searchrl agent eval`` puts fingerprints of the model weights, the corpus
and the judge there).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchrl.agent.episode import EpisodeConfig, EpisodeResult, Policy, run_episodes
from searchrl.agent.rewards import (
    answer_shown,
    correctness_reward,
    first_search_found,
    first_search_spoiled,
    format_reward,
    retrieval_reward,
)
from searchrl.agent.tool import SearchTool
from searchrl.data.io import atomic_write_text
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, DataError
from searchrl.llm.engine import Message
from searchrl.progress import progress_bar


@dataclass
class AgentEvalReport:
    """Aggregate metrics and the scored episodes (as written to the transcripts file)."""

    metrics: dict[str, Any]
    records: list[dict] = field(repr=False)


def eval_key(run_info: Mapping[str, Any]) -> str:
    """A short hash of the settings that decide a transcript (model, retriever, limits, ...)."""
    return hashlib.sha256(json.dumps(run_info, sort_keys=True, default=str).encode()).hexdigest()[:16]


def example_key(example: QAExample) -> str:
    """A short hash of what a question's scores depend on: its text, reference answers and gold ids."""
    content = {"question": example.question, "answers": list(example.answers), "gold_ids": list(example.gold_ids)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def score_episode(episode: EpisodeResult, *, judge: Any = None) -> dict[str, float | None]:
    """Per-episode scores: ``em``, ``f1``, ``judge`` (when a judge is given), ``format``, ``retrieval_hit``,
    ``first_search_hit`` (the first search returned a gold document), ``first_search_spoiled`` (its query
    found one and the tool's noise took it out; 0 without noise) and ``answer_shown`` (a reference
    answer occurs in the passages the searches showed the model: whether the search brought the
    answer to the reader; ``None`` when the tool failed)."""
    shown = None
    if episode.finish_reason != "tool_error":
        shown = float(answer_shown(episode.answers, "\n".join(s.get("text", "") for s in episode.searches)))
    scores: dict[str, float | None] = {
        "em": correctness_reward(episode, episode.answers, metric="em"),
        "f1": correctness_reward(episode, episode.answers, metric="f1"),
        "format": format_reward(episode),
        "retrieval_hit": retrieval_reward(episode, episode.gold_ids),
        "first_search_hit": _float(first_search_found(episode, episode.gold_ids)),
        "first_search_spoiled": _float(first_search_spoiled(episode, episode.gold_ids)),
        "answer_shown": shown,
    }
    if judge is not None:
        scores["judge"] = correctness_reward(episode, episode.answers, metric="judge", judge=judge)
    return scores


def episode_retries(record: Mapping[str, Any]) -> int:
    """Searches after the first in one transcript record (0 for an episode with one search or none)."""
    return max(len(record["searches"]) - 1, 0)


def _float(value: bool | None) -> float | None:
    return None if value is None else float(value)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize(records: Sequence[Mapping[str, Any]], *, with_judge: bool = False) -> dict[str, Any]:
    """Aggregate scored transcript records into the report's metrics."""
    n = len(records)
    scores = [r["scores"] for r in records]
    searches = [len(r["searches"]) for r in records]
    retries = [episode_retries(r) for r in records]

    def retry_rate(score: str, value: float) -> float | None:
        """The share of episodes that searched again among those whose ``score`` is ``value``."""
        return _mean([float(k > 0) for k, s in zip(retries, scores) if s.get(score) == value])

    metrics: dict[str, Any] = {
        "num_questions": n,
        "em": _mean([s.get("em") for s in scores]),
        "f1": _mean([s.get("f1") for s in scores]),
        "answered_rate": _mean([float(r["finish_reason"] == "answered") for r in records]),
        "searches_per_episode": _mean([float(k) for k in searches]),
        "retries_per_episode": _mean([float(k) for k in retries]),
        # when the agent searches again: after a first search that missed every gold document, and after
        # one that found one (a retry is worth something only in the first case)
        "retry_rate_after_miss": retry_rate("first_search_hit", 0.0),
        "retry_rate_after_hit": retry_rate("first_search_hit", 1.0),
        # a miss the noise caused (the query had found a gold document): searching again is the fix
        "retry_rate_after_spoiled": retry_rate("first_search_spoiled", 1.0),
        "retrieval_hit_rate": _mean([s.get("retrieval_hit") for s in scores]),
        # F1 = answer_shown_rate * f1_when_shown + (1 - answer_shown_rate) * f1_when_not_shown: what the
        # search brought to the model, and what the model made of it
        "answer_shown_rate": _mean([s.get("answer_shown") for s in scores]),
        "f1_when_shown": _mean([s.get("f1") for s in scores if s.get("answer_shown") == 1.0]),
        "f1_when_not_shown": _mean([s.get("f1") for s in scores if s.get("answer_shown") == 0.0]),
        "format_rate": _mean([s.get("format") for s in scores]),
        "turns_per_episode": _mean([float(r["num_turns"]) for r in records]),
        "model_tokens_per_episode": _mean([float(r["num_model_tokens"]) for r in records]),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in records)),
        "tool_errors": sum(r["finish_reason"] == "tool_error" for r in records),
    }
    if with_judge:
        metrics["judge"] = _mean([s.get("judge") for s in scores])
        metrics["judge_failures"] = sum(
            s.get("judge") is None for s, r in zip(scores, records) if r["finish_reason"] != "tool_error"
        )
    return metrics


def _read_existing(path: Path, key: str, examples: Mapping[str, str]) -> list[dict]:
    """Transcripts already written for this configuration that are still valid; a torn last line is dropped.

    ``examples`` maps each question id being evaluated to its :func:`example_key`; a record of
    one of them written for other content (fixed answers, an edited question) is dropped, so
    that question is played again. Records of other questions are kept as they are.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # interrupted while writing the last line
                break
            raise DataError("malformed transcript line", path=path, line=number, hint="delete the file or pass --overwrite") from None
        if record.get("eval_key") != key:
            raise ConfigError(
                "this transcripts file was written with different settings (model, retriever or limits)",
                path=path,
                hint="pass --overwrite to replace it, or choose another --out",
            )
        question_id = record.get("question_id")
        if question_id in examples and record.get("example_key") != examples[question_id]:
            continue  # stale: the question's content changed since
        records.append(record)
    # Rewrite without the torn line and stale records so later appends start on a clean line.
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def evaluate_agent(
    policy: Policy,
    tool: SearchTool,
    examples: Sequence[QAExample],
    config: EpisodeConfig | None = None,
    *,
    judge: Any = None,
    out_path: str | Path | None = None,
    batch_size: int = 16,
    run_info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
    on_message: Callable[[QAExample, Message], None] | None = None,
) -> AgentEvalReport:
    """Play one greedy-or-sampled episode per question and score it.

    ``run_info`` (model name and weights fingerprint, retriever, ...) is hashed into every
    transcript record so a resumed run never mixes transcripts of different settings; each
    record also carries its question's :func:`example_key`, so changed questions are redone.
    """
    config = config or EpisodeConfig()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise DataError("question ids must be unique for evaluation")
    key = eval_key({**(run_info or {}), "episode": config.model_dump(), "k": tool.k, "judge": judge is not None})
    path = Path(out_path) if out_path is not None else None
    done: dict[str, dict] = {}
    if path is not None:
        if overwrite and path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = {e.id: example_key(e) for e in examples}
        done = {r["question_id"]: r for r in _read_existing(path, key, keys)}
    todo = [e for e in examples if e.id not in done]
    by_id = {e.id: e for e in examples}

    with progress_bar("agent eval", total=len(examples), unit="q", disable=None if show_progress is None else not show_progress) as advance:
        advance(len(examples) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            callback = None if on_message is None else (lambda i, m, batch=batch: on_message(batch[i], m))
            episodes = run_episodes(policy, tool, batch, config, on_message=callback)
            new_records = []
            for episode in episodes:
                record = episode.to_dict(tokens=False)
                record["scores"] = score_episode(episode, judge=judge)
                record["eval_key"] = key
                record["example_key"] = example_key(by_id[episode.question_id])
                new_records.append(record)
                done[episode.question_id] = record
            if path is not None:
                with path.open("a", encoding="utf-8") as handle:
                    for record in new_records:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            advance(len(batch))

    records = [done[i] for i in ids]
    return AgentEvalReport(metrics=summarize(records, with_judge=judge is not None), records=records)
