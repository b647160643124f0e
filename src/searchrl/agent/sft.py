"""Supervised warm-start: teach a small model the ``<search>``/``<answer>`` protocol before RL.

SmolLM2-135M-Instruct never writes ``<search>`` on its own, and GRPO gets no signal from an agent
that never searches. So, before RL, the policy imitates synthetic transcripts built from the
training questions:

* direct: ``<think>…</think><search>keywords of the question</search>`` → real results from the
  search tool → ``<think>Passage [n] …</think><answer>gold answer</answer>``;
* retry (what ReZero rewards): a first search with only a few of the keywords that misses the gold
  chunk → results → a second search with all the keywords that finds it → results → the answer;
* retry after a real miss (``retry_after_miss``): when the full keyword query does not show the
  answer, a second query made of other keywords of the question (one half of them, or all but
  one) that does → the answer. These teach searching again exactly where it helps: after
  passages that do not answer the question;
* reading the results (``read_results``): the thought after each search says whether the passages
  mention one of the question's rarest keywords, so that answering and searching again follow a
  check written in the transcript (:class:`ResultReader`).

The transcripts are *played* through :func:`~searchrl.agent.episode.run_episodes` by a
:class:`~searchrl.agent.episode.ScriptedPolicy` with the real search tool, so their token ids and
loss masks come from exactly the code path RL episodes use: loss on every model-written token
(including the end-of-turn token: the warm-start learns to close its turns, while GRPO leaves the
end-of-turn token appended after a stop string out of its loss, as nothing samples it), none on the
prompt, the search results or the template tokens around them. Training is a short plain loop
(masked next-token loss, LoRA, AdamW) — TRL's SFTTrainer would re-tokenise the chat and compute
its own assistant mask, which could disagree with the RL masks at the turn boundaries.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from searchrl.agent.episode import EpisodeConfig, EpisodeResult, ScriptedPolicy, run_episodes, sample_key, search_key
from searchrl.agent.protocol import user_prompt
from searchrl.agent.rewards import answer_shown
from searchrl.agent.tool import SearchTool
from searchrl.data.types import Document, QAExample
from searchrl.errors import ConfigError, DataError
from searchrl.memory import release_freed_memory
from searchrl.progress import progress_bar

TranscriptKind = Literal["direct", "retry"]

# Function words dropped when a question becomes a keyword query ("What did the crew see?" ->
# "crew see"): a small list on purpose, so numbers, codes and names always survive.
QUERY_STOPWORDS = frozenset(
    """a an the of in on at to for by with from and or that this these those it its be been being has have had
    is was were are do does did what which who whom whose when where why how according during as into than then
    there their they them he she his her we our you your i me my can could would should will shall may might
    must about after before between under over not no any some all each other such only also""".split()
)

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-./']*")

_SEARCH_THOUGHTS = (
    "I need to look this up.",
    "I should search the documents for this.",
    "Let me search for the key terms.",
)
_RETRY_THOUGHTS = (
    "The passages do not answer the question. I will search again with different words.",
    "None of these passages has the answer. Let me rephrase the search.",
)


class SFTConfig(BaseModel):
    """The supervised warm-start stage."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    epochs: float = Field(1.0, gt=0, description="passes over the transcripts (fractions allowed)")
    max_steps: int | None = Field(None, ge=1, description="optimiser steps at most (overrides epochs when smaller)")
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    retry_fraction: float = Field(0.3, ge=0, le=1, description="share of transcripts that search twice")
    retry_after_miss: bool = Field(
        False, description="also make retry transcripts for questions whose keyword query misses, from another query"
    )
    read_results: bool = Field(
        False, description="the thought after each search says whether the passages mention one of the question's "
        "three rarest keywords: 'The passages mention X.' before an answer, 'No passage mentions X, Y or Z.' before a retry"
    )
    max_transcripts: int | None = Field(None, ge=1, description="train on at most this many transcripts")
    max_tokens: int = Field(2048, ge=16, description="transcripts longer than this are left out")
    seed: int = 0


@dataclass(frozen=True)
class Transcript:
    """The assistant turns of one synthetic episode and why it looks the way it does."""

    example: QAExample
    turns: tuple[str, ...]
    kind: TranscriptKind
    queries: tuple[str, ...]


def question_keywords(question: str) -> list[str]:
    """The content words of a question, in order, for a keyword query.

    >>> question_keywords("On what date did the mission PA-1 experience a first pad abort?")
    ['date', 'mission', 'PA-1', 'experience', 'first', 'pad', 'abort']
    """
    words = [w.rstrip(".'/-") for w in _WORD.findall(question)]
    return [w for w in words if w and w.lower() not in QUERY_STOPWORDS]


def keyword_query(question: str) -> str:
    """All content words of ``question`` joined by spaces (the question itself if none are left).

    >>> keyword_query("Who was the commander of Apollo 13?")
    'commander Apollo 13'
    """
    words = question_keywords(question)
    return " ".join(words) if words else question.strip()


def partial_query(question: str, rng: np.random.Generator) -> str | None:
    """A vaguer query: about a third of the keywords (at least one), in order; ``None`` if too short."""
    words = question_keywords(question)
    if len(words) < 2:
        return None
    size = max(1, len(words) // 3)
    chosen = sorted(rng.choice(len(words), size=size, replace=False).tolist())
    return " ".join(words[i] for i in chosen)


def alternative_queries(question: str) -> list[str]:
    """Other keyword queries for a question whose full keyword query failed, most different first.

    The two halves of the keywords, then the keywords with one word left out (never an empty
    query, never the full query, no duplicates).

    >>> alternative_queries("Who commanded the Apollo 13 crew?")
    ['commanded Apollo', '13 crew', 'Apollo 13 crew', 'commanded 13 crew', 'commanded Apollo crew', 'commanded Apollo 13']
    """
    words = question_keywords(question)
    if len(words) < 2:
        return []
    half = (len(words) + 1) // 2
    candidates = [words[:half], words[half:]] + [words[:i] + words[i + 1 :] for i in range(len(words))]
    full = " ".join(words)
    queries = [" ".join(c) for c in candidates if c]
    return [q for q in dict.fromkeys(queries) if q != full]


def _search_turn(query: str, thought: str) -> str:
    return f"<think>{thought}</think>\n<search>{query}</search>"


def _answer_turn(answer: str, rank: int, prefix: str = "") -> str:
    return f"<think>{prefix}Passage [{rank}] gives the answer.</think>\n<answer>{answer}</answer>"


def _words(text: str) -> set[str]:
    return {w.rstrip(".'/-").lower() for w in _WORD.findall(text)}


class ResultReader:
    """What a warm-start thought says about a result list: whether it mentions the question's key terms.

    The key terms are the question's ``terms`` keywords found in the fewest corpus documents (ties:
    the longer word, then the earlier). Passages that answer nearly always show one of them; a
    search that found nothing useful — random passages the noise put in, a vague query's off-topic
    hits — often shows none. Writing the check into the thought ("The passages mention X." before an
    answer, "No passage mentions X, Y or Z." before a retry) gives a small model a reading it can
    copy — are these words in the passages above? — to decide between answering and searching again.
    On the Apollo 13 training questions under ``fail_prob`` 0.3, "any of the three rarest keywords
    shown" agreed with the transcript's choice for 76 of 88 first result lists, the rarest one alone
    for 61.

    >>> from searchrl.data.types import Document
    >>> reader = ResultReader({"c1": Document("c1", "Lovell commanded Apollo 13."), "c2": Document("c2", "Apollo 12 landed.")}, terms=2)
    >>> reader.key_terms("Who commanded Apollo 13?")
    ['commanded', '13']
    >>> reader.found_prefix(["commanded", "13"], "[1] Lovell commanded Apollo 13.")
    'The passages mention commanded. '
    >>> reader.missed_thought(["commanded", "13"], "[1] Apollo 12 landed.")
    'No passage mentions commanded or 13. I will search again with different words.'
    """

    def __init__(self, corpus: Mapping[str, Document], *, terms: int = 3) -> None:
        if terms < 1:
            raise ConfigError(f"terms must be at least 1, got {terms}")
        self.terms = terms
        self._frequency = Counter(w for d in corpus.values() for w in _words(f"{d.title} {d.text}"))

    def frequency(self, word: str) -> int:
        """How many corpus documents contain ``word`` (case-insensitive)."""
        return self._frequency[word.lower()]

    def key_terms(self, question: str) -> list[str]:
        keywords = list(dict.fromkeys(question_keywords(question)))
        order = sorted(range(len(keywords)), key=lambda i: (self.frequency(keywords[i]), -len(keywords[i]), i))
        return [keywords[i] for i in order[: self.terms]]

    @staticmethod
    def mentions(term: str, passages: str) -> bool:
        return term.lower() in _words(passages)

    @staticmethod
    def _shown(terms: Sequence[str], passages: str) -> list[str]:
        words = _words(passages)
        return [t for t in terms if t.lower() in words]

    def found_prefix(self, terms: Sequence[str], passages: str) -> str | None:
        """The thought's opening before an answer, or ``None`` if the passages show no key term."""
        shown = self._shown(terms, passages)
        return f"The passages mention {shown[0]}. " if shown else None

    def missed_thought(self, terms: Sequence[str], passages: str) -> str | None:
        """The thought before a retry, or ``None`` if the passages show a key term (or there is none)."""
        if not terms or self._shown(terms, passages):
            return None
        named = terms[0] if len(terms) == 1 else f"{', '.join(terms[:-1])} or {terms[-1]}"
        return f"No passage mentions {named}. I will search again with different words."


def build_transcripts(
    examples: Sequence[QAExample],
    tool: SearchTool,
    *,
    retry_fraction: float = 0.3,
    retry_after_miss: bool = False,
    read_results: bool = False,
    seed: int = 0,
) -> tuple[list[Transcript], dict[str, int]]:
    """Synthetic transcripts for ``examples`` whose gold chunk the keyword query finds.

    A transcript is kept only if the gold answer can be read in the passages the model is shown
    (the tool may truncate passages). Every candidate query is run once through ``tool`` (batched) to see whether it finds a gold
    document. A question becomes a *retry* transcript (with probability ``retry_fraction``, when
    possible) if a partial query misses and the full keyword query hits; otherwise a *direct* one
    if the full query hits. With ``retry_after_miss``, a question whose full query does not show
    the answer becomes a retry transcript (kind ``retry``, counted as ``retry_after_miss``) when
    one of its :func:`alternative_queries` does: full query → the first alternative that shows
    the answer. Questions that no query answers are skipped — a transcript answering without
    evidence would teach the model to make answers up. With ``read_results``, each thought after a
    search says whether the passages mention the question's key terms (:class:`ResultReader`) where
    that agrees with what the turn does (counted as ``read_found`` and ``read_missed``); where it
    does not — an answer from passages without the terms, a retry after passages with one — the
    thought stays generic (``read_generic``). Returns the transcripts and counts.
    """
    if not examples:
        raise DataError("no training questions for the warm-start transcripts")
    missing_gold = [e.id for e in examples if not e.gold_ids]
    if len(missing_gold) == len(examples):
        raise DataError(
            "the training questions have no gold_ids, so retrieved results cannot be checked",
            hint="the warm-start needs gold_ids (the source documents) in the QA file",
        )
    rng = np.random.default_rng(seed)
    full_queries = [keyword_query(e.question) for e in examples]
    partial_queries = [partial_query(e.question, rng) for e in examples]
    wants_retry = rng.random(len(examples)) < retry_fraction
    thought_picks = rng.integers(0, 1 << 16, size=(len(examples), 2))

    # Each search is keyed as the played episode will key it (first or second search of the question's
    # episode), so a noisy tool shows the transcript exactly the results it is later played with.
    first, second = ([search_key(sample_key(e.id), turn) for e in examples] for turn in (1, 2))
    has_partial = [i for i, q in enumerate(partial_queries) if q is not None]
    results = tool.search_batch(
        full_queries + [partial_queries[i] for i in has_partial] + [full_queries[i] for i in has_partial],
        keys=first + [first[i] for i in has_partial] + [second[i] for i in has_partial],
    )
    full_results = results[: len(examples)]
    partial_results: list[Any] = [None] * len(examples)
    full_after_partial: list[Any] = [None] * len(examples)
    for n, i in enumerate(has_partial):
        partial_results[i] = results[len(examples) + n]
        full_after_partial[i] = results[len(examples) + len(has_partial) + n]
    second_chances = _second_chances(examples, full_results, tool) if retry_after_miss else {}

    transcripts: list[Transcript] = []
    counts = {"questions": len(examples), "direct": 0, "retry": 0, "skipped_not_found": 0, "skipped_answer_not_shown": 0}
    if retry_after_miss:
        counts["retry_after_miss"] = 0
    reader = ResultReader(tool.corpus) if read_results else None
    if reader is not None:
        counts.update(read_found=0, read_missed=0, read_generic=0)

    def retry_thought(i: int, terms: list[str], missed: Any) -> str:
        generic = _RETRY_THOUGHTS[thought_picks[i, 1] % len(_RETRY_THOUGHTS)]
        if reader is None:
            return generic
        thought = reader.missed_thought(terms, missed.text)
        counts["read_generic" if thought is None else "read_missed"] += 1
        return thought or generic

    def answer_turn(answer: str, rank: int, terms: list[str], shown: Any) -> str:
        if reader is None:
            return _answer_turn(answer, rank)
        prefix = reader.found_prefix(terms, shown.text)
        counts["read_generic" if prefix is None else "read_found"] += 1
        return _answer_turn(answer, rank, prefix or "")

    for i, example in enumerate(examples):
        gold = set(example.gold_ids)
        first_thought = _SEARCH_THOUGHTS[thought_picks[i, 0] % len(_SEARCH_THOUGHTS)]
        terms = reader.key_terms(example.question) if reader is not None else []
        if i in second_chances:
            second, rank = second_chances[i]
            turns = (
                _search_turn(full_queries[i], first_thought),
                _search_turn(second.query, retry_thought(i, terms, full_results[i])),
                answer_turn(example.answers[0], rank, terms, second),
            )
            transcripts.append(Transcript(example, turns, "retry", (full_queries[i], second.query)))
            counts["retry"] += 1
            counts["retry_after_miss"] += 1
            continue
        hit_ranks = [r for r, d in enumerate(full_results[i].doc_ids, start=1) if d in gold]
        if not hit_ranks:
            counts["skipped_not_found"] += 1
            continue
        if not answer_shown(example.answers, full_results[i].text):
            counts["skipped_answer_not_shown"] += 1
            continue
        partial, retried = partial_results[i], full_after_partial[i]
        retry_rank = _shows_answer(example, retried) if retried is not None else None
        if wants_retry[i] and partial is not None and not gold.intersection(partial.doc_ids) and retry_rank is not None:
            turns = (
                _search_turn(partial.query, first_thought),
                _search_turn(full_queries[i], retry_thought(i, terms, partial)),
                answer_turn(example.answers[0], retry_rank, terms, retried),
            )
            transcripts.append(Transcript(example, turns, "retry", (partial.query, full_queries[i])))
            counts["retry"] += 1
        else:
            turns = (_search_turn(full_queries[i], first_thought), answer_turn(example.answers[0], hit_ranks[0], terms, full_results[i]))
            transcripts.append(Transcript(example, turns, "direct", (full_queries[i],)))
            counts["direct"] += 1
    return transcripts, counts


def _shows_answer(example: QAExample, result: Any) -> int | None:
    """The rank of the first gold document in ``result`` if the shown passages hold the answer, else ``None``."""
    gold = set(example.gold_ids)
    ranks = [r for r, d in enumerate(result.doc_ids, start=1) if d in gold]
    return ranks[0] if ranks and answer_shown(example.answers, result.text) else None


def _second_chances(examples: Sequence[QAExample], full_results: Sequence[Any], tool: SearchTool) -> dict[int, tuple[Any, int]]:
    """For each question whose full query does not show the answer: the first alternative query that does, and its rank."""
    asks: list[tuple[int, str]] = [
        (i, query)
        for i, (example, result) in enumerate(zip(examples, full_results))
        if example.gold_ids and _shows_answer(example, result) is None
        for query in alternative_queries(example.question)
    ]
    if not asks:
        return {}
    found = tool.search_batch([q for _, q in asks], keys=[search_key(sample_key(examples[i].id), 2) for i, _ in asks])
    chances: dict[int, tuple[Any, int]] = {}
    for (i, _), result in zip(asks, found):
        if i not in chances:
            rank = _shows_answer(examples[i], result)
            if rank is not None:
                chances[i] = (result, rank)
    return chances


def play_transcripts(
    transcripts: Sequence[Transcript],
    tokenizer: Any,
    tool: SearchTool,
    config: EpisodeConfig | None = None,
) -> list[EpisodeResult]:
    """Run each transcript as an episode with the real tool; returns episodes with ids and masks.

    The loop, the chat-template pieces between turns and the masks are those of RL episodes, so
    what the warm-start trains on is token for token what GRPO later scores.
    """
    config = (config or EpisodeConfig()).model_copy(update={"temperature": 0.0})
    longest_turn = max((len(tokenizer.encode(t, add_special_tokens=False)) for s in transcripts for t in s.turns), default=1)
    updates: dict[str, Any] = {
        "max_turns": max(config.max_turns, max((len(s.turns) for s in transcripts), default=1)),
        "max_turn_tokens": max(config.max_turn_tokens, longest_turn + 8),
    }
    updates["max_model_tokens"] = max(config.max_model_tokens, updates["max_turns"] * updates["max_turn_tokens"])
    config = config.model_copy(update=updates)
    scripts = {user_prompt(s.example.question): list(s.turns) for s in transcripts}
    policy = ScriptedPolicy(tokenizer, scripts)
    return run_episodes(policy, tool, [s.example for s in transcripts], config)


def check_played(transcripts: Sequence[Transcript], episodes: Sequence[EpisodeResult]) -> list[bool]:
    """Whether each played episode went as scripted: answered, and its last search found a gold document."""
    keep = []
    for transcript, episode in zip(transcripts, episodes):
        gold = set(transcript.example.gold_ids)
        ok = (
            episode.finish_reason == "answered"
            and len(episode.searches) == len(transcript.queries)
            and bool(gold.intersection(episode.searches[-1]["doc_ids"]))
        )
        keep.append(ok)
    return keep


# ----------------------------------------------------------------------------------------
# The training loop


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def masked_batch(episodes: Sequence[EpisodeResult], pad_token_id: int):
    """``(input_ids, attention_mask, labels)`` tensors; labels are -100 wherever the mask is 0.

    Right padding; the causal-LM loss shifts labels by one itself, so ``labels[i]`` is the
    target predicted from position ``i - 1``.
    """
    import torch

    width = max(len(e.token_ids) for e in episodes)
    input_ids = torch.full((len(episodes), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(episodes), width), dtype=torch.long)
    labels = torch.full((len(episodes), width), -100, dtype=torch.long)
    for row, episode in enumerate(episodes):
        ids = torch.tensor(episode.token_ids, dtype=torch.long)
        mask = torch.tensor(episode.mask, dtype=torch.bool)
        n = len(episode.token_ids)
        input_ids[row, :n] = ids
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.where(mask, ids, torch.full_like(ids, -100))
    return input_ids, attention_mask, labels


def masked_lm_loss(model: Any, input_ids, attention_mask, labels):
    """Mean next-token cross-entropy over positions whose label is not -100.

    The vocabulary projection is applied only to the hidden states that predict a labelled token
    (a few percent of a transcript: the search results are masked) instead of to every position
    as ``model(labels=...)`` would: on a 49k-word vocabulary that full logits tensor, and its
    gradient, dominate the memory of a step.
    """
    import torch

    network = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = network.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != -100
    if not bool(selected.any()):
        raise DataError("a warm-start batch has no model-written tokens to learn from")
    logits = network.get_output_embeddings()(hidden[:, :-1][selected])
    return torch.nn.functional.cross_entropy(logits.float(), targets[selected])


def train_on_episodes(
    model: Any,
    episodes: Sequence[EpisodeResult],
    config: SFTConfig,
    *,
    pad_token_id: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[float]:
    """Minimise the next-token loss on model-written tokens of ``episodes``; returns per-step losses.

    ``model`` is trained in place (only its parameters with ``requires_grad``, e.g. a LoRA
    adapter). Linear warm-up then linear decay of the learning rate; gradients clipped.
    """
    import torch

    if not episodes:
        raise DataError("no transcripts to train on", hint="check that the search tool finds the gold documents")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters", hint="enable LoRA or unfreeze the model")
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = math.ceil(len(episodes) / config.batch_size)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = int(config.warmup_fraction * total)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
    )
    device = next(model.parameters()).device
    batches: list[np.ndarray] = []
    while len(batches) < total:
        batches += _batches(rng.permutation(len(episodes)), config.batch_size)
    losses: list[float] = []
    model.train()
    with progress_bar("warm-start", total=total, unit="step") as advance:
        for step, indices in enumerate(batches[:total], start=1):
            input_ids, attention_mask, labels = masked_batch([episodes[i] for i in indices], pad_token_id)
            loss = masked_lm_loss(model, input_ids.to(device), attention_mask.to(device), labels.to(device))
            if not torch.isfinite(loss):
                raise ConfigError(f"warm-start loss is {loss.item()} at step {step}", hint="lower sft.learning_rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            del loss
            release_freed_memory()  # batches differ in width: keep freed blocks from piling up on the heap
            if on_step is not None:
                on_step(step, {"loss": losses[-1], "learning_rate": schedule.get_last_lr()[0]})
            advance()
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------
# The stage inside a run directory


SFT_DONE = "sft.json"


def sft_adapter_dir(stage_dir: str | Path) -> Path:
    """Where the warm-start stage keeps its trained adapter."""
    return Path(stage_dir) / "adapter"


def sft_finished(stage_dir: str | Path) -> bool:
    """True when the stage completed (its summary is written last, after the adapter)."""
    return (Path(stage_dir) / SFT_DONE).is_file() and (sft_adapter_dir(stage_dir) / "adapter_config.json").is_file()


def run_sft_stage(
    stage_dir: str | Path,
    model: Any,
    tokenizer: Any,
    tool: SearchTool,
    examples: Sequence[QAExample],
    config: SFTConfig,
    episode_config: EpisodeConfig | None = None,
    *,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Build, play and train on the warm-start transcripts; save the adapter to ``stage_dir/adapter``.

    ``model`` must already carry a trainable adapter (e.g. ``peft.get_peft_model``). The
    transcripts are written to ``stage_dir/transcripts.jsonl``, per-step losses to
    ``stage_dir/metrics.jsonl`` and a summary to ``sft.json``
    (written last: its presence marks the stage as done, see :func:`sft_finished`). A stage cut
    short is simply run again — it takes minutes.
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    transcripts, counts = build_transcripts(
        examples, tool, retry_fraction=config.retry_fraction, retry_after_miss=config.retry_after_miss,
        read_results=config.read_results, seed=config.seed,
    )
    if not transcripts:
        raise DataError(
            "the search tool showed the gold answer for none of the training questions",
            hint="check that the corpus matches the questions' gold_ids, or raise tool.k / tool.max_chars",
        )
    if config.max_transcripts is not None and len(transcripts) > config.max_transcripts:
        picks = np.random.default_rng(config.seed).choice(len(transcripts), size=config.max_transcripts, replace=False)
        transcripts = [transcripts[i] for i in np.sort(picks)]
    episodes = play_transcripts(transcripts, tokenizer, tool, episode_config)
    kept = check_played(transcripts, episodes)
    counts["dropped_unplayable"] = len(kept) - sum(kept)
    pairs = [(t, e) for t, e, ok in zip(transcripts, episodes, kept) if ok and len(e.token_ids) <= config.max_tokens]
    counts["dropped_too_long"] = sum(kept) - len(pairs)
    if not pairs:
        raise DataError("no usable warm-start transcripts", hint=f"counts: {counts}; raise sft.max_tokens?")
    with (stage_dir / "transcripts.jsonl").open("w", encoding="utf-8") as handle:
        for transcript, episode in pairs:
            record = episode.to_dict(tokens=False)
            record["kind"] = transcript.kind
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    train_episodes = [e for _, e in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    metrics_path = stage_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)  # a stage cut short starts over

    def on_step(step: int, metrics: dict[str, float]) -> None:
        with metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if log is not None:
            log(step, metrics)

    losses = train_on_episodes(model, train_episodes, config, pad_token_id=pad, on_step=on_step)
    adapter = sft_adapter_dir(stage_dir)
    model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    summary = {
        "transcripts": counts,
        "trained_on": len(train_episodes),
        "retry_transcripts": sum(t.kind == "retry" for t, _ in pairs),
        "model_tokens": int(sum(sum(e.mask) for e in train_episodes)),
        "total_tokens": int(sum(len(e.token_ids) for e in train_episodes)),
        "steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_last10_mean": float(np.mean(losses[-10:])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (stage_dir / SFT_DONE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
