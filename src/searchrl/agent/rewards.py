"""Rewards for search episodes: correctness, format, retry and retrieval.

Each reward is a plain function over one episode — an :class:`~searchrl.agent.episode.EpisodeResult`,
its ``to_dict()`` record, a list of chat messages, or a single assistant turn as a string — and
:func:`trl_reward` turns any of them into a TRL reward function
``(prompts, completions, **columns) -> list[float | None]``. Under TRL the episode records arrive
in the ``episode`` column (what :func:`~searchrl.agent.episode.rollout_batch` returns) and the
references in the dataset columns ``answers``, ``gold_ids`` and ``question``.

``None`` means "cannot be scored" — the search tool failed, the judge's reply was unreadable, no
gold ids are known. TRL leaves a sample out of the update only when *every* reward function returns
``None`` for it, so :func:`build_reward_functions` makes functions that share one
:class:`RewardScorer`: when any term of a sample fails, every term returns ``None`` for it (a
missing gold id only leaves the retrieval term out), and the rate of such samples is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from searchrl.agent.protocol import final_answer, parse_turn
from searchrl.errors import ConfigError

Metric = Literal["em", "f1", "judge"]
RetryMode = Literal["sound", "paper", "recovery", "miss", "spoiled"]
RetrievalScope = Literal["any", "first"]
#: Retry modes judged by what the searches retrieved: they need gold ids, and are not applicable without them.
RETRIEVAL_RETRY_MODES = ("recovery", "miss", "spoiled")


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
    before_noise: list[list[str] | None] | None = None
    """Per executed search, the retriever's ids when the tool's noise changed them (else ``None``)."""

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
        before = [s.get("before_noise") for s in searches] if searches is not None else None
        turns = [m["content"] for m in messages if m.get("role") == "assistant"]
        return EpisodeView(turns, retrieved, episode.get("finish_reason"), episode.get("question"), before)
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
    mode: RetryMode = "sound",
    metric: Metric = "em",
    correct: bool | None = None,
    judge: Any = None,
    max_searches: int = 5,
    gold_ids: Sequence[str] = (),
) -> float | None:
    """Reward for searching again.

    ``mode="sound"`` (default): pays only for searches *after the first* and only when the final
    answer is correct — ``(min(searches, max_searches) - 1) / (max_searches - 1)``. Correctness
    is ``correct`` if given, else :func:`correctness_reward` with ``metric`` (F1 counts as
    correct at 0.5 or more).

    ``mode="paper"``: ReZero's formula — 0 unless the episode ends with an answer; 0.35 for one
    search plus 0.15 per further search, counting at most ``max_searches``; halved if any turn
    holds several searches. It pays whether or not the answer is right, so it can be gamed.

    ``mode="recovery"``: 1.0 when the episode ends with an answer, its first search returned no
    gold document and a later search did — the retry that repaired a failed search, judged by
    retrieval, not by the answer. A small model answers correctly too rarely for the sound
    reward to fire; this one fires whenever a retry finds what the first search missed, and a
    retry after a successful first search earns nothing. ``None`` without ``gold_ids`` or
    retrieved ids (not applicable).

    ``mode="miss"``: 1.0 when the episode ends with an answer, its first search returned no gold
    document and it searched again — whatever the later search found. It pays for *when* to
    retry (after a search that missed), as often as the policy does it, where recovery also needs
    the retry to succeed and the sound reward the answer to be right: for a 135M warm-start both
    fire in 1–3% of samples. A retry after a first search that found a gold document earns
    nothing. ``None`` without ``gold_ids`` or retrieved ids (not applicable). It can be gamed by a
    worse first search, and GRPO found that in 12 steps (docs/EXPERIMENTS.md): recovery could be
    gamed the same way; the sound reward cannot.

    ``mode="spoiled"``: 1.0 when the episode ends with an answer and searched again after a first
    search that the tool's noise *spoiled* — the query found a gold document and the noise
    (``tool.noise``, e.g. ``fail_prob``) took it out of the results (:func:`first_search_spoiled`).
    Whether a search is spoiled is drawn by the environment, not chosen by the policy, and only a
    query that finds a gold document can be spoiled: unlike ``miss`` and ``recovery`` it cannot be
    earned by a worse first search. ``None`` without ``gold_ids`` or retrieved ids; 0 whenever the
    tool adds no noise.

    >>> two_searches = ["<search>a</search>", "<search>b</search>", "<answer>Lovell</answer>"]
    >>> retry_reward(two_searches, ["Lovell"])
    0.25
    >>> retry_reward(two_searches, ["Haise"])
    0.0
    >>> retry_reward(two_searches, mode="paper")
    0.5
    >>> record = {"messages": [{"role": "assistant", "content": "<answer>Lovell</answer>"}],
    ...           "searches": [{"doc_ids": ["c7"]}, {"doc_ids": ["c2"]}], "finish_reason": "answered"}
    >>> retry_reward(record, mode="recovery", gold_ids=["c2"]), retry_reward(record, mode="recovery", gold_ids=["c7"])
    (1.0, 0.0)
    >>> retry_reward(record, mode="miss", gold_ids=["c9"]), retry_reward(record, mode="miss", gold_ids=["c7"])
    (1.0, 0.0)
    >>> spoiled = dict(record, searches=[{"doc_ids": ["c5"], "before_noise": ["c7"]}, {"doc_ids": ["c7"]}])
    >>> retry_reward(spoiled, mode="spoiled", gold_ids=["c7"]), retry_reward(spoiled, mode="spoiled", gold_ids=["c9"])
    (1.0, 0.0)
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
    if mode == "recovery":
        if not gold_ids or view.retrieved is None:
            return None
        gold = set(gold_ids)
        found = [bool(gold.intersection(ids)) for ids in view.retrieved]
        answered = final_answer(view.assistant_turns) is not None
        return float(answered and len(found) > 1 and not found[0] and any(found[1:]))
    if mode == "miss":
        if not gold_ids or view.retrieved is None:
            return None
        answered = final_answer(view.assistant_turns) is not None
        return float(answered and searches > 1 and not first_search_found(view, gold_ids))
    if mode == "spoiled":
        if not gold_ids or view.retrieved is None:
            return None
        answered = final_answer(view.assistant_turns) is not None
        return float(answered and searches > 1 and bool(first_search_spoiled(view, gold_ids)))
    if mode != "sound":
        raise ConfigError(f"unknown retry mode {mode!r}", hint="use sound, paper, recovery, miss or spoiled")
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


def first_search_found(episode: Any, gold_ids: Sequence[str]) -> bool | None:
    """Whether the episode's first search returned a gold document; ``None`` when that cannot be told (no
    search, no gold ids, retrieved ids not recorded, or the tool failed).

    >>> record = {"messages": [], "searches": [{"doc_ids": ["c7"]}, {"doc_ids": ["c2"]}], "finish_reason": "answered"}
    >>> first_search_found(record, ["c2"]), first_search_found(record, ["c7"])
    (False, True)
    """
    view = episode_view(episode)
    if view.tool_failed or not gold_ids or not view.retrieved:
        return None
    return bool(set(gold_ids).intersection(view.retrieved[0]))


def first_search_spoiled(episode: Any, gold_ids: Sequence[str]) -> bool | None:
    """Whether the tool's noise spoiled the episode's first search: its query found a gold document
    and the noise left none in the results. ``None`` when that cannot be told (as
    :func:`first_search_found`).

    >>> record = {"messages": [], "searches": [{"doc_ids": ["c5"], "before_noise": ["c7", "c8"]}], "finish_reason": "answered"}
    >>> first_search_spoiled(record, ["c7"]), first_search_spoiled(record, ["c9"])
    (True, False)
    """
    found = first_search_found(episode, gold_ids)
    if found is None:
        return None
    view = episode_view(episode)
    before = view.before_noise[0] if view.before_noise else None
    return not found and before is not None and bool(set(gold_ids).intersection(before))


def retrieval_reward(episode: Any, gold_ids: Sequence[str], *, scope: RetrievalScope = "any") -> float | None:
    """1.0 if any search returned a gold document (``scope="first"``: if the first one did), else 0.0.

    A distractor paraphrasing a gold document has its own id and does not count. ``None`` when
    no gold ids are known, the episode form does not record retrieved ids, or the tool failed.

    ``scope="first"`` pairs with the ``miss`` retry reward: with ``any``, a first search that
    misses and a retry that finds earn the retrieval term *and* the retry term, more than finding
    at once, so a worse first search pays (measured: docs/EXPERIMENTS.md, "Paying for a retry
    after a missed search"). Read on the first search, finding at once earns the retrieval weight
    and a miss followed by a retry the retry weight; with the retry weight below the retrieval
    weight a deliberate miss always loses.

    >>> record = {"messages": [], "searches": [{"doc_ids": ["p7", "c2"]}, {"doc_ids": ["c9"]}], "finish_reason": "answered"}
    >>> retrieval_reward(record, ["c2"]), retrieval_reward(record, ["c5"])
    (1.0, 0.0)
    >>> retrieval_reward(record, ["c9"]), retrieval_reward(record, ["c9"], scope="first")
    (1.0, 0.0)
    """
    if scope not in get_args(RetrievalScope):
        raise ConfigError(f"unknown retrieval scope {scope!r}", hint="use any or first")
    view = episode_view(episode)
    if view.tool_failed or not gold_ids or view.retrieved is None:
        return None
    gold = set(gold_ids)
    searches = view.retrieved[:1] if scope == "first" else view.retrieved
    return float(any(gold.intersection(ids) for ids in searches))


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def answer_shown(answers: Sequence[str], passages: str) -> bool:
    """Whether any reference answer occurs in the passages (case and spacing ignored).

    >>> answer_shown(["Jim  Lovell"], "[1] Commander jim lovell said ..."), answer_shown(["Haise"], "[1] Lovell")
    (True, False)
    """
    text = _squash(passages)
    return any(_squash(a) and _squash(a) in text for a in answers)


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

    One function alone returns ``None`` only for its own term; to combine terms for TRL use
    :func:`build_reward_functions`, whose functions drop a sample from every term together.

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
            return [retrieval_reward(e, _column(columns, "gold_ids", i) or (), scope=options.get("scope", "any"))
                    for i, e in enumerate(episodes)]
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
    retry_mode: RetryMode = Field(
        "sound", description="sound: correct answer after a retry; paper: ReZero's formula; recovery: a retry found "
        "the gold document the first search missed; miss: searched again after a first search that missed the gold "
        "document (gameable by a worse first search, as measured); spoiled: searched again after a first search "
        "whose gold document the tool's noise removed (see retry_reward)"
    )
    max_searches: int = Field(5, ge=1)
    retrieval_scope: RetrievalScope = Field(
        "any", description="which searches the retrieval reward reads: any (a gold document in any search) or first "
        "(in the first search; with retry_mode miss and a retry weight below the retrieval weight, a worse first "
        "search cannot pay)"
    )


class RewardScorer:
    """Scores every reward term of a batch at once, so that a sample with an unscorable term drops out.

    TRL leaves a sample out of the GRPO update only when *every* reward function returns ``None``
    for it; otherwise it sums the terms that did score. A judge failure (unreadable verdict) nulls
    correctness and retry but not format or retrieval, so the sample would train on a partial
    reward as if its answer were wrong. The functions made by :meth:`functions` share this
    scorer: the first one called on a batch scores all terms (the judge is asked once), and a
    sample for which any term failed gets ``None`` from *every* function.

    A retrieval term is ``None`` also when the question has no gold ids (or the episode does not
    record what it retrieved): that means "not applicable", and the other terms still count.

    Per batch, ``rewards/unscorable_rate``, ``rewards/fired_<term>`` (the share of scored samples
    whose term is non-zero, see :func:`fired_rates`), ``rewards/retry_gap`` and ``retry_gap_<term>``
    (what searching again earned inside its question's group, see :func:`retry_gaps`) and
    ``rewards/judge_failure_rate`` with the
    judge metric go to TRL's ``log_metric`` when it is passed; :attr:`samples`, :attr:`unscorable` and
    :attr:`judge_failures` count over the scorer's life.
    """

    def __init__(self, terms: Sequence[str], *, weights: RewardWeights, judge: Any = None) -> None:
        self.terms = list(terms)
        self.weights = weights
        self.judge = judge
        self.samples = 0
        self.unscorable = 0
        self.judge_failures = 0
        self._batch: tuple[Any, Any] | None = None  # the scored batch's objects (kept alive so ids stay unique)
        self._scores: dict[str, list[float | None]] = {}
        self._served: set[str] = set()

    def functions(self) -> list[Callable[..., list[float | None]]]:
        """One TRL reward function per term, named ``<term>_reward``."""
        return [self._function(name) for name in self.terms]

    def _function(self, name: str) -> Callable[..., list[float | None]]:
        def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
            return self.scores(name, completions, columns)

        base = {"correctness": correctness_reward, "format": format_reward, "retry": retry_reward,
                "retrieval": retrieval_reward}[name]
        reward.__name__ = reward.__qualname__ = f"{name}_reward"
        reward.__doc__ = base.__doc__
        return reward

    def scores(self, name: str, completions: Sequence[Any], columns: Mapping[str, Any]) -> list[float | None]:
        """The ``name`` term of the batch, scoring the whole batch when it is a new one.

        TRL passes the same ``completions`` and ``episode`` objects to every reward function of
        one batch; a term asked for twice on the same objects means a new batch and is rescored.
        """
        batch = (completions, columns.get("episode"))
        same = self._batch is not None and all(a is b for a, b in zip(batch, self._batch))
        if not same or name in self._served:
            self._scores = self._score_batch(completions, columns)
            self._batch = batch
            self._served = set()
        self._served.add(name)
        return list(self._scores[name])

    def _score_batch(self, completions: Sequence[Any], columns: Mapping[str, Any]) -> dict[str, list[float | None]]:
        episodes = [
            # A completion is a string or a list of messages (only assistant messages are the model's).
            _column(columns, "episode", i) if columns.get("episode") is not None else c
            for i, c in enumerate(completions)
        ]
        n = len(episodes)
        weights = self.weights
        needs_answers = "correctness" in self.terms or ("retry" in self.terms and weights.retry_mode == "sound")
        answers = [_column(columns, "answers", i) for i in range(n)]
        if needs_answers and any(a is None for a in answers):
            raise ConfigError("the correctness and retry rewards need an 'answers' column", hint="add it to the training data set")

        scores: dict[str, list[float | None]] = {}
        correct: list[float | None] = [None] * n
        judge_failures = 0
        if needs_answers:
            if weights.metric == "judge":
                correct = _judge_batch(episodes, answers, columns, self.judge, {})
                judge_failures = sum(c is None and not episode_view(e).tool_failed for e, c in zip(episodes, correct))
            else:
                correct = [correctness_reward(e, a, metric=weights.metric) for e, a in zip(episodes, answers)]
        if "correctness" in self.terms:
            scores["correctness"] = correct
        if "format" in self.terms:
            scores["format"] = [format_reward(e) for e in episodes]
        if "retry" in self.terms:
            if weights.retry_mode == "paper":
                scores["retry"] = [retry_reward(e, mode="paper", max_searches=weights.max_searches) for e in episodes]
            elif weights.retry_mode in RETRIEVAL_RETRY_MODES:
                scores["retry"] = [
                    retry_reward(e, mode=weights.retry_mode, gold_ids=_column(columns, "gold_ids", i) or ())
                    for i, e in enumerate(episodes)
                ]
            else:
                threshold = 0.5 if weights.metric == "f1" else 1.0
                scores["retry"] = [
                    None if c is None else retry_reward(e, a, correct=c >= threshold, max_searches=weights.max_searches)
                    for e, a, c in zip(episodes, answers, correct)
                ]
        if "retrieval" in self.terms:
            scores["retrieval"] = [retrieval_reward(e, _column(columns, "gold_ids", i) or (), scope=weights.retrieval_scope)
                                   for i, e in enumerate(episodes)]

        # Any failed term (tool error, unreadable judge verdict, or a needed correctness that
        # failed) makes the whole sample unscorable; a retrieval (or recovery) None without gold ids does not.
        not_applicable = {"retrieval", "retry"} if weights.retry_mode in RETRIEVAL_RETRY_MODES else {"retrieval"}
        failed = [
            episode_view(e).tool_failed
            or (needs_answers and correct[i] is None)
            or any(scores[t][i] is None for t in scores if t not in not_applicable)
            for i, e in enumerate(episodes)
        ]
        for values in scores.values():
            for i in range(n):
                if failed[i]:
                    values[i] = None

        self.samples += n
        self.unscorable += sum(failed)
        self.judge_failures += judge_failures
        log_metric = columns.get("log_metric")
        if callable(log_metric) and n:
            log_metric("rewards/unscorable_rate", sum(failed) / n)
            for term, fired in fired_rates(scores).items():
                log_metric(f"rewards/fired_{term}", fired)
            views = [episode_view(e) for e in episodes]
            questions = [_column(columns, "question_id", i) or _column(columns, "question", i) or v.question
                         for i, v in enumerate(views)]  # a GRPO group: the samples of one question
            term_weights = {t: float(getattr(weights, t)) for t in scores}
            for key, value in retry_gaps(scores, questions, [v.num_searches for v in views], term_weights).items():
                log_metric(f"rewards/{key}", value)
            if weights.metric == "judge" and needs_answers:
                log_metric("rewards/judge_failure_rate", judge_failures / n)
        return scores


def fired_rates(scores: Mapping[str, Sequence[float | None]]) -> dict[str, float]:
    """Per term, the share of scored samples (not ``None``) whose value is non-zero.

    A term that pays nothing in a batch gives its samples no advantage, whatever its weight:
    this is how a run shows which terms actually drive learning.

    >>> fired_rates({"retry": [0.0, 0.25, None, 0.0], "format": [1.0, 1.0, None, 0.0]})
    {'retry': 0.3333333333333333, 'format': 0.6666666666666666}
    """
    rates = {}
    for term, values in scores.items():
        scored = [v for v in values if v is not None]
        rates[term] = sum(v != 0 for v in scored) / len(scored) if scored else 0.0
    return rates


def retry_gaps(
    scores: Mapping[str, Sequence[float | None]],
    groups: Sequence[Any],
    searches: Sequence[int],
    weights: Mapping[str, float],
) -> dict[str, float]:
    """What searching again earned against not doing so, inside the groups GRPO compares.

    Over the groups (samples of one question: equal ``groups`` keys) that hold both episodes that
    searched more than once and episodes that did not: the mean, over those groups, of the
    retrying episodes' mean score minus the others', per term (``retry_gap_<term>``) and for the
    weighted sum the advantage is computed from (``retry_gap``); ``retry_gap_groups`` counts the
    groups. Its sign is the direction GRPO moves retrying in; empty when no group holds both.
    Unscored samples (``None``) are left out.

    >>> gaps = retry_gaps({"correctness": [1.0, 0.0, 0.0, 1.0], "format": [1.0, 1.0, 0.0, 1.0]},
    ...                   ["q1", "q1", "q2", "q2"], [2, 1, 2, 1], {"correctness": 4.0, "format": 2.0})
    >>> gaps["retry_gap_correctness"], gaps["retry_gap_format"], gaps["retry_gap"], gaps["retry_gap_groups"]
    (0.0, -0.5, -1.0, 2.0)
    """
    members: dict[Any, list[int]] = {}
    for i, key in enumerate(groups):
        if key is not None and all(scores[t][i] is not None for t in scores):
            members.setdefault(key, []).append(i)
    gaps: dict[str, list[float]] = {t: [] for t in scores}
    totals: list[float] = []
    for rows in members.values():
        retried = [i for i in rows if searches[i] > 1]
        single = [i for i in rows if searches[i] <= 1]
        if not retried or not single:
            continue
        for term, values in scores.items():
            gaps[term].append(fmean(values[i] for i in retried) - fmean(values[i] for i in single))
        totals.append(sum(weights.get(t, 1.0) * gaps[t][-1] for t in scores))
    if not totals:
        return {}
    return {"retry_gap": fmean(totals), **{f"retry_gap_{t}": fmean(v) for t, v in gaps.items()},
            "retry_gap_groups": float(len(totals))}


def build_reward_functions(
    weights: RewardWeights | None = None, *, judge: Any = None
) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
    """The TRL reward functions and their weights (zero-weight parts are left out).

    The functions share one :class:`RewardScorer`: a sample with any term that cannot be scored
    (failed search tool, unreadable judge verdict) gets ``None`` from every function, so TRL
    leaves it out of the update instead of training on the terms that remain.
    """
    weights = weights or RewardWeights()
    if weights.metric == "judge" and judge is None and (weights.correctness or (weights.retry and weights.retry_mode == "sound")):
        raise ConfigError("metric 'judge' needs a judge", hint="pass judge=LLMJudge(engine, policy_model=...)")
    parts = [
        ("correctness", weights.correctness),
        ("format", weights.format),
        ("retry", weights.retry),
        ("retrieval", weights.retrieval),
    ]
    scorer = RewardScorer([name for name, weight in parts if weight != 0], weights=weights, judge=judge)
    return scorer.functions(), [weight for _, weight in parts if weight != 0]


def answer_reward_funcs(weights: RewardWeights) -> list[str]:
    """Names of the TRL reward functions that score what the final answer says (answer credit).

    The correctness term, and the retry term when it pays only for a correct answer
    (``retry_mode: sound``). Format (the tags), retrieval and the other retry modes are earned by
    the search and the episode's shape; with ``grpo.answer_credit: answer_terms`` the answer's
    words get only these terms' part of the advantage (:mod:`searchrl.training.credit`).

    >>> answer_reward_funcs(RewardWeights())
    ['correctness_reward', 'retry_reward']
    >>> answer_reward_funcs(RewardWeights(retry_mode="recovery"))
    ['correctness_reward']
    """
    terms = [("correctness", weights.correctness != 0),
             ("retry", weights.retry != 0 and weights.retry_mode == "sound")]
    return [f"{name}_reward" for name, used in terms if used]


def later_turn_reward_funcs(weights: RewardWeights) -> tuple[list[str], str]:
    """``(later terms, first-search outcome)``: the TRL reward functions whose part of the reward the tokens
    after the first search's results get under ``grpo.later_turn_credit``, and the one that says how the
    first search ended (the retrieval term read on the first search), for :mod:`searchrl.training.credit`.

    >>> later_turn_reward_funcs(RewardWeights(retrieval_scope="first"))
    (['correctness_reward', 'format_reward', 'retry_reward'], 'retrieval_reward')
    """
    if not weights.retrieval or weights.retrieval_scope != "first":
        raise ConfigError("later-turn credit reads how the first search ended from the retrieval term on the first "
                          "search", hint="set rewards.retrieval above 0 and rewards.retrieval_scope: first")
    terms = [("correctness", weights.correctness), ("format", weights.format), ("retry", weights.retry)]
    return [f"{name}_reward" for name, weight in terms if weight != 0], "retrieval_reward"


def episode_rewards(
    episode: Any, answers: Sequence[str], gold_ids: Sequence[str] = (), weights: RewardWeights | None = None, *, judge: Any = None
) -> dict[str, float | None]:
    """Every reward of one episode and their weighted ``total`` (``None`` parts are skipped).

    A tool failure makes every part and the total ``None``: the episode is not scored, not a 0.

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
            gold_ids=gold_ids,
        )
        if correct is not None or weights.retry_mode != "sound"
        else None,
        "retrieval": retrieval_reward(episode, gold_ids, scope=weights.retrieval_scope),
    }
    scored = {k: v for k, v in parts.items() if v is not None}
    parts["total"] = sum(getattr(weights, k) * v for k, v in scored.items()) if scored else None
    return parts
