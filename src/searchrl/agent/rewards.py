"""Rewards for search episodes: correctness, format, retry and retrieval.

Each reward is a plain function over one episode — an :class:`~searchrl.agent.episode.EpisodeResult`,
its ``to_dict()`` record, a list of chat messages, or a single assistant turn as a string — and
:func:`trl_reward` turns any of them into a TRL reward function
``(prompts, completions, **columns) -> list[float | None]``. Under TRL the episode records arrive
in the ``episode`` column (what :func:`~searchrl.agent.episode.rollout_batch` returns) and the
references in the dataset columns ``answers``, ``gold_ids`` and ``question``.

``None`` means "cannot be scored" — the search tool failed, the judge's reply was unreadable, no
gold ids are known — and TRL leaves such a sample out instead of scoring it 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from searchrl.agent.protocol import final_answer, parse_turn
from searchrl.errors import ConfigError

Metric = Literal["em", "f1", "judge"]


# ----------------------------------------------------------------------------------------
# One view over every form an episode can take


@dataclass(frozen=True)
class EpisodeView:
    """What rewards read from an episode."""

    assistant_turns: list[str]
    retrieved: list[list[str]] | None
    """Doc ids returned by each executed search; ``None`` when the form does not say."""
    finish_reason: str | None
    question: str | None

    @property
    def tool_failed(self) -> bool:
        return self.finish_reason == "tool_error"

    @property
    def num_searches(self) -> int:
        """Executed searches when known, otherwise turns whose action is a search."""
        if self.retrieved is not None:
            return len(self.retrieved)
        return sum(parse_turn(t).action == "search" for t in self.assistant_turns)


def episode_view(episode: Any) -> EpisodeView:
    """Normalise an episode: a result object, a record dict, chat messages, assistant turns or one string."""
    if isinstance(episode, EpisodeView):
        return episode
    if hasattr(episode, "to_dict") and hasattr(episode, "messages"):
        episode = episode.to_dict(tokens=False)
    if isinstance(episode, str):
        return EpisodeView([episode], None, None, None)
    if isinstance(episode, list) and episode and all(isinstance(t, str) for t in episode):
        return EpisodeView(list(episode), None, None, None)  # a bare list of assistant turns
    if isinstance(episode, Mapping) and "messages" in episode:
        messages = episode["messages"]
        searches = episode.get("searches")
        retrieved = [list(s.get("doc_ids", [])) for s in searches] if searches is not None else None
        turns = [m["content"] for m in messages if m.get("role") == "assistant"]
        return EpisodeView(turns, retrieved, episode.get("finish_reason"), episode.get("question"))
    if isinstance(episode, Sequence) and all(isinstance(m, Mapping) and "role" in m for m in episode):
        turns = [m["content"] for m in episode if m["role"] == "assistant"]
        return EpisodeView(turns, None, None, None)
    raise ConfigError(
        f"cannot read an episode from {type(episode).__name__}",
        hint="pass an EpisodeResult, its to_dict() record, a list of chat messages or a string",
    )


def _answers(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


# ----------------------------------------------------------------------------------------
# Correctness


_HEDGE_WORDS = {"or", "either", "maybe", "perhaps", "possibly", "probably"}


def is_hedged(answer: str, references: str | Sequence[str]) -> bool:
    """True when ``answer`` offers alternatives instead of one answer ("A or B", "A; B", "A/B").

    Words and separators that also occur in a reference answer do not count.

    >>> is_hedged("Lovell or Haise or Swigert", ["Lovell"]), is_hedged("Jim Lovell", ["Lovell"])
    (True, False)
    >>> is_hedged("liquid oxygen or hydrogen", ["liquid oxygen or hydrogen"])
    False
    """
    from searchrl.metrics import normalize_answer

    refs = _answers(references)
    reference_words = {w for r in refs for w in normalize_answer(r).split()}
    if (set(normalize_answer(answer).split()) & _HEDGE_WORDS) - reference_words:
        return True
    for separator in (";", "/", "|"):
        if separator in answer and not any(separator in r for r in refs):
            return True
    return answer.count(",") >= 2 and not any("," in r for r in refs)


def correctness_reward(
    episode: Any,
    answers: str | Sequence[str],
    *,
    metric: Metric = "em",
    judge: Any = None,
    question: str | None = None,
    reject_hedged: bool = True,
) -> float | None:
    """1/0 (EM, judge) or token F1 of the episode's final answer against the references.

    Only the answer extracted from the last turn counts, and only if that turn ends with a
    proper ``<answer>`` (searching after answering gets 0). A hedged answer ("A or B") gets 0.
    ``metric="judge"`` asks ``judge`` (an :class:`~searchrl.agent.judge.LLMJudge`); an unreadable
    verdict returns ``None``. A failed search tool returns ``None``.

    >>> correctness_reward(["<search>commander</search>", "<answer>Jim Lovell</answer>"], ["Jim Lovell"])
    1.0
    >>> correctness_reward(["<answer>Lovell</answer>", "<search>more</search>"], ["Lovell"])
    0.0
    >>> correctness_reward("<answer>Lovell or Haise</answer>", ["Lovell"], metric="f1")
    0.0
    """
    from searchrl.metrics import exact_match, token_f1

    view = episode_view(episode)
    if view.tool_failed:
        return None
    refs = _answers(answers)
    answer = final_answer(view.assistant_turns)
    if answer is None or not answer.strip():
        return 0.0
    if reject_hedged and is_hedged(answer, refs):
        return 0.0
    if metric == "em":
        return float(exact_match(answer, refs))
    if metric == "f1":
        return float(token_f1(answer, refs))
    if metric == "judge":
        if judge is None:
            raise ConfigError("metric 'judge' needs a judge", hint="pass judge=LLMJudge(engine, policy_model=...)")
        question = question or view.question
        if not question:
            raise ConfigError("the judge needs the question", hint="pass question=... or use an episode record")
        verdict = judge.judge([question], [answer], [refs])[0]
        return None if verdict is None else float(verdict)
    raise ConfigError(f"unknown correctness metric {metric!r}", hint="use em, f1 or judge")


# ----------------------------------------------------------------------------------------
# Format


def format_problems(episode: Any) -> list[str]:
    """Every format problem of the episode, as ``"turn N: problem"``."""
    view = episode_view(episode)
    problems = []
    turns = view.assistant_turns
    if not turns:
        return ["no assistant turn"]
    for number, text in enumerate(turns, start=1):
        turn = parse_turn(text)
        problems += [f"turn {number}: {p}" for p in turn.problems]
        if number < len(turns) and turn.action != "search":
            problems.append(f"turn {number}: a turn before the last must end with a search")
    if parse_turn(turns[-1]).action != "answer":
        problems.append(f"turn {len(turns)}: the last turn must end with an answer")
    return problems


def format_reward(episode: Any) -> float | None:
    """1.0 if every turn is well formed and the episode searches, then answers; else 0.0.

    Well formed: tags balanced and in order, ``<think>`` (if any) before the action, one action
    per turn, the turn ends with ``</search>`` or ``</answer>``, no markdown around tags, and no
    model-written ``<information>`` tag. ``None`` if the search tool failed.

    >>> format_reward(["<think>look it up</think><search>crew</search>", "<answer>Lovell</answer>"])
    1.0
    >>> format_reward(["<search>crew</search><information>fake</information>", "<answer>x</answer>"])
    0.0
    """
    view = episode_view(episode)
    if view.tool_failed:
        return None
    return 0.0 if format_problems(view) else 1.0


# ----------------------------------------------------------------------------------------
# Retry


def retry_reward(
    episode: Any,
    answers: str | Sequence[str] | None = None,
    *,
    mode: Literal["sound", "paper"] = "sound",
    metric: Metric = "em",
    correct: bool | None = None,
    judge: Any = None,
    max_searches: int = 5,
) -> float | None:
    """Reward for searching again.

    ``mode="sound"`` (default): pays only for searches *after the first* and only when the final
    answer is correct — ``(min(searches, max_searches) - 1) / (max_searches - 1)``. Correctness
    is ``correct`` if given, else :func:`correctness_reward` with ``metric`` (F1 counts as
    correct at 0.5 or more).

    ``mode="paper"``: ReZero's formula — 0 unless the episode ends with an answer; 0.35 for one
    search plus 0.15 per further search, counting at most ``max_searches``; halved if any turn
    holds several searches. It pays whether or not the answer is right, so it can be gamed.

    >>> two_searches = ["<search>a</search>", "<search>b</search>", "<answer>Lovell</answer>"]
    >>> retry_reward(two_searches, ["Lovell"])
    0.25
    >>> retry_reward(two_searches, ["Haise"])
    0.0
    >>> retry_reward(two_searches, mode="paper")
    0.5
    """
    view = episode_view(episode)
    if view.tool_failed:
        return None
    if max_searches < 1:
        raise ConfigError("max_searches must be at least 1")
    searches = view.num_searches
    if mode == "paper":
        if final_answer(view.assistant_turns) is None or searches == 0:
            return 0.0
        value = 0.35 + 0.15 * (min(searches, max_searches) - 1)
        if any(len(parse_turn(t).searches) > 1 for t in view.assistant_turns):
            value /= 2
        return round(value, 10)
    if mode != "sound":
        raise ConfigError(f"unknown retry mode {mode!r}", hint="use sound or paper")
    if correct is None:
        if answers is None:
            raise ConfigError("the sound retry reward needs the reference answers (or correct=...)")
        score = correctness_reward(view, answers, metric=metric, judge=judge)
        if score is None:
            return None
        correct = score >= (0.5 if metric == "f1" else 1.0)
    if not correct or max_searches == 1:
        return 0.0
    return (min(searches, max_searches) - 1) / (max_searches - 1) if searches > 1 else 0.0


# ----------------------------------------------------------------------------------------
# Retrieval


def retrieval_reward(episode: Any, gold_ids: Sequence[str]) -> float | None:
    """1.0 if any search returned a gold document, else 0.0.

    A distractor paraphrasing a gold document has its own id and does not count. ``None`` when
    no gold ids are known, the episode form does not record retrieved ids, or the tool failed.

    >>> record = {"messages": [], "searches": [{"doc_ids": ["p7", "c2"]}], "finish_reason": "answered"}
    >>> retrieval_reward(record, ["c2"]), retrieval_reward(record, ["c9"])
    (1.0, 0.0)
    """
    view = episode_view(episode)
    if view.tool_failed or not gold_ids or view.retrieved is None:
        return None
    gold = set(gold_ids)
    return float(any(gold.intersection(ids) for ids in view.retrieved))


# ----------------------------------------------------------------------------------------
# TRL glue and weights


def _column(columns: Mapping[str, Any], name: str, index: int) -> Any:
    values = columns.get(name)
    if values is None:
        return None
    return values[index] if isinstance(values, (list, tuple)) else values


def trl_reward(
    name: Literal["correctness", "format", "retry", "retrieval"], **options: Any
) -> Callable[..., list[float | None]]:
    """A TRL reward function ``(prompts, completions, **columns) -> list[float | None]``.

    Each sample's episode is ``columns["episode"][i]`` when present (a rollout record), else its
    completion. ``answers``, ``gold_ids`` and ``question`` come from the dataset columns of the
    same names; ``options`` go to the episode-level function (e.g. ``metric="f1"``,
    ``mode="paper"``, ``judge=...``). Judge calls are made once for the whole batch.

    >>> reward = trl_reward("correctness", metric="em")
    >>> reward.__name__
    'correctness_reward'
    >>> reward(prompts=["q1", "q2"], completions=["<answer>Lovell</answer>", "<answer>Haise</answer>"],
    ...        answers=[["Lovell"], ["Swigert"]])
    [1.0, 0.0]
    """
    functions = {
        "correctness": correctness_reward,
        "format": format_reward,
        "retry": retry_reward,
        "retrieval": retrieval_reward,
    }
    if name not in functions:
        raise ConfigError(f"unknown reward {name!r}", hint=f"use one of {sorted(functions)}")
    function = functions[name]
    judge = options.get("judge")
    uses_judge = options.get("metric") == "judge" and name in ("correctness", "retry")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        episodes = [
            # A completion is a string or a list of messages (only assistant messages are the model's).
            _column(columns, "episode", i) if columns.get("episode") is not None else c
            for i, c in enumerate(completions)
        ]
        if name == "format":
            return [format_reward(e) for e in episodes]
        if name == "retrieval":
            return [retrieval_reward(e, _column(columns, "gold_ids", i) or ()) for i, e in enumerate(episodes)]
        answers = [_column(columns, "answers", i) for i in range(len(episodes))]
        if any(a is None for a in answers):
            raise ConfigError(f"the {name} reward needs an 'answers' column", hint="add it to the training data set")
        if uses_judge:
            correct = _judge_batch(episodes, answers, columns, judge, options)
            if name == "correctness":
                return correct
            retry_options = {k: v for k, v in options.items() if k not in ("metric", "judge")}
            return [
                None if c is None else retry_reward(e, a, correct=bool(c), **retry_options)
                for e, a, c in zip(episodes, answers, correct)
            ]
        return [function(e, a, **options) for e, a in zip(episodes, answers)]

    reward.__name__ = f"{name}_reward"
    reward.__qualname__ = reward.__name__
    reward.__doc__ = function.__doc__
    return reward


def _judge_batch(
    episodes: list[Any], answers: list[Any], columns: Mapping[str, Any], judge: Any, options: Mapping[str, Any]
) -> list[float | None]:
    """Correctness by the judge for a whole batch in one engine call."""
    if judge is None:
        raise ConfigError("metric 'judge' needs a judge", hint="pass judge=LLMJudge(engine, policy_model=...)")
    reject_hedged = options.get("reject_hedged", True)
    scores: list[float | None] = [None] * len(episodes)
    asks: list[int] = []
    extracted: list[str] = []
    for i, (episode, refs) in enumerate(zip(episodes, answers)):
        view = episode_view(episode)
        if view.tool_failed:
            continue
        answer = final_answer(view.assistant_turns)
        if answer is None or not answer.strip() or (reject_hedged and is_hedged(answer, _answers(refs))):
            scores[i] = 0.0
            continue
        asks.append(i)
        extracted.append(answer)
    if asks:
        questions = [_column(columns, "question", i) or episode_view(episodes[i]).question for i in asks]
        if any(not q for q in questions):
            raise ConfigError("the judge needs the question", hint="add a 'question' column to the data set")
        verdicts = judge.judge(questions, extracted, [_answers(answers[i]) for i in asks])
        for i, verdict in zip(asks, verdicts):
            scores[i] = None if verdict is None else float(verdict)
    return scores


class RewardWeights(BaseModel):
    """Weights of the summed reward (ReZero used 4, 2, 1, 1) and the options of each part."""

    model_config = ConfigDict(extra="forbid")

    correctness: float = 4.0
    format: float = 2.0
    retry: float = 1.0
    retrieval: float = 1.0
    metric: Metric = Field("em", description="correctness metric: em, f1 or judge")
    retry_mode: Literal["sound", "paper"] = "sound"
    max_searches: int = Field(5, ge=1)


def build_reward_functions(
    weights: RewardWeights | None = None, *, judge: Any = None
) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
    """The TRL reward functions and their weights (zero-weight parts are left out)."""
    weights = weights or RewardWeights()
    metric_options: dict[str, Any] = {"metric": weights.metric}
    if weights.metric == "judge":
        metric_options["judge"] = judge
    parts = [
        ("correctness", weights.correctness, metric_options),
        ("format", weights.format, {}),
        ("retry", weights.retry, {**metric_options, "mode": weights.retry_mode, "max_searches": weights.max_searches}),
        ("retrieval", weights.retrieval, {}),
    ]
    functions, values = [], []
    for name, weight, options in parts:
        if weight == 0:
            continue
        if name == "retry" and weights.retry_mode == "paper":
            options = {"mode": "paper", "max_searches": weights.max_searches}
        functions.append(trl_reward(name, **options))  # type: ignore[arg-type]
        values.append(weight)
    return functions, values


def episode_rewards(
    episode: Any, answers: Sequence[str], gold_ids: Sequence[str] = (), weights: RewardWeights | None = None, *, judge: Any = None
) -> dict[str, float | None]:
    """Every reward of one episode and their weighted ``total`` (``None`` parts are skipped).

    >>> episode_rewards(["<search>crew</search>", "<answer>Lovell</answer>"], ["Lovell"])["total"]
    6.0
    """
    weights = weights or RewardWeights()
    correct = correctness_reward(episode, answers, metric=weights.metric, judge=judge)
    parts: dict[str, float | None] = {
        "correctness": correct,
        "format": format_reward(episode),
        "retry": retry_reward(
            episode,
            answers,
            mode=weights.retry_mode,
            max_searches=weights.max_searches,
            correct=None if correct is None else correct >= (0.5 if weights.metric == "f1" else 1.0),
        )
        if correct is not None or weights.retry_mode == "paper"
        else None,
        "retrieval": retrieval_reward(episode, gold_ids),
    }
    parts["total"] = sum(getattr(weights, k) * v for k, v in parts.items() if v is not None)
    return parts
