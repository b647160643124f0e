"""Noise for the search tool: distractor documents, corrupted result lists, random backends.

ReZero's paper speaks of three kinds of noise; its code implemented only the first:

* distractors — near-duplicate paraphrases added to the index; only the original document
  counts as a correct retrieval (:func:`load_distractors`, :func:`with_distractors`);
* noisy results — with probability ``p`` a result is replaced by a random document, the list is
  shuffled, or results are dropped; or the whole call fails, every result replaced
  (:func:`corrupt_results`); ``p`` may follow a schedule over
  training steps (:class:`ProbabilitySchedule`), a curriculum as in ZeroSearch;
* several search engines — each call picks one backend at random (:func:`choose_backend`).

Every random choice comes from :func:`call_rng`, seeded by ``(seed, step, key)``, so a call's
noise does not depend on which other episodes share its batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from searchrl.data.types import Document
from searchrl.errors import ConfigError, DataError


class ProbabilitySchedule(BaseModel):
    """A probability that may change with the training step.

    * ``constant``: ``value`` at every step;
    * ``linear``: from ``start`` at step 0 to ``end`` at step ``steps``, then flat;
    * ``step``: ``values[i]`` from ``milestones[i-1]`` on (``values[0]`` before the first milestone).

    A bare number in a config file means a constant.

    >>> ProbabilitySchedule.linear(0.0, 0.4, steps=100).at(50)
    0.2
    >>> ProbabilitySchedule.stepwise([10, 20], [0.0, 0.1, 0.3]).at(15)
    0.1
    >>> ProbabilitySchedule.model_validate(0.25).at(1000)
    0.25
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "linear", "step"] = "constant"
    value: float = Field(0.0, ge=0.0, le=1.0)
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(0.0, ge=0.0, le=1.0)
    steps: int = Field(1, ge=1)
    milestones: list[int] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _number_means_constant(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"kind": "constant", "value": float(data)}
        return data

    @model_validator(mode="after")
    def _check_step_lists(self) -> "ProbabilitySchedule":
        if self.kind == "step":
            if len(self.values) != len(self.milestones) + 1:
                raise ValueError("a step schedule needs one more value than milestones")
            if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
                raise ValueError("milestones must be strictly increasing")
            if any(not 0.0 <= v <= 1.0 for v in self.values):
                raise ValueError("probabilities must lie in [0, 1]")
        return self

    @classmethod
    def constant(cls, value: float) -> "ProbabilitySchedule":
        return cls(kind="constant", value=value)

    @classmethod
    def linear(cls, start: float, end: float, steps: int) -> "ProbabilitySchedule":
        return cls(kind="linear", start=start, end=end, steps=steps)

    @classmethod
    def stepwise(cls, milestones: Sequence[int], values: Sequence[float]) -> "ProbabilitySchedule":
        return cls(kind="step", milestones=list(milestones), values=list(values))

    @property
    def can_fire(self) -> bool:
        """False only for a constant 0: a schedule may be above 0 at some step."""
        return self.kind != "constant" or self.value > 0

    def at(self, step: int) -> float:
        """The probability at training step ``step`` (0 for evaluation)."""
        if self.kind == "constant":
            return self.value
        if self.kind == "linear":
            fraction = min(max(step, 0) / self.steps, 1.0)
            return round(self.start + (self.end - self.start) * fraction, 12)
        return self.values[int(np.searchsorted(self.milestones, step, side="right"))]


class NoiseConfig(BaseModel):
    """What noise the search tool adds; the default adds none."""

    model_config = ConfigDict(extra="forbid")

    replace_prob: ProbabilitySchedule = Field(default_factory=ProbabilitySchedule, description="per result")
    shuffle_prob: ProbabilitySchedule = Field(default_factory=ProbabilitySchedule, description="per call")
    drop_prob: ProbabilitySchedule = Field(default_factory=ProbabilitySchedule, description="per result")
    fail_prob: ProbabilitySchedule = Field(
        default_factory=ProbabilitySchedule,
        description="per call: every result replaced by a random document (a search engine that returns nothing useful)",
    )
    backends: list[str] = Field(
        default_factory=list, description="retrievers (bm25/dense/hybrid) to pick from at random per call"
    )
    distractors: Path | None = Field(None, description="JSONL of distractor documents added to the index")

    @property
    def can_remove_results(self) -> bool:
        """Whether this noise can take a result out of a list (replace, drop or fail; not shuffle or backends)."""
        return any(s.can_fire for s in (self.replace_prob, self.drop_prob, self.fail_prob))

    @property
    def active(self) -> bool:
        return bool(self.backends) or any(
            s.can_fire for s in (self.replace_prob, self.shuffle_prob, self.drop_prob, self.fail_prob)
        )


def call_rng(seed: int, step: int, key: str) -> np.random.Generator:
    """The random generator of one search call: a pure function of ``(seed, step, key)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, max(int(step), 0), zlib.crc32(key.encode("utf-8"))])


def choose_backend(backends: Sequence[str], rng: np.random.Generator) -> str:
    """One of ``backends``, uniformly at random."""
    if not backends:
        raise ConfigError("no search backends to choose from")
    return backends[int(rng.integers(len(backends)))]


def corrupt_results(
    doc_ids: Sequence[str],
    pool: Sequence[str],
    config: NoiseConfig,
    *,
    step: int,
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """Apply result-list noise; returns ``(new_doc_ids, what_was_done)``.

    Order of operations: replace each result with probability ``replace_prob`` by a document
    drawn from ``pool`` that is not already in the list, then shuffle the whole list with
    probability ``shuffle_prob``, then drop each result with probability ``drop_prob``. With
    probability ``fail_prob`` the call fails instead: every result is replaced by a document from
    ``pool`` not in the retriever's list, and nothing else is done.

    >>> rng = np.random.default_rng(0)
    >>> ids, done = corrupt_results(["a", "b"], ["a", "b", "z"], NoiseConfig(replace_prob=1.0), step=0, rng=rng)
    >>> ids, done
    (['z', 'z'], ['replaced [1] a -> z', 'replaced [2] b -> z'])
    """
    results = list(doc_ids)
    applied: list[str] = []
    p_replace, p_shuffle, p_drop = (s.at(step) for s in (config.replace_prob, config.shuffle_prob, config.drop_prob))
    # Draw every random number up front, always the same count, so that one option's
    # probability does not shift the random stream of another.
    replace_draws = rng.random(len(results))
    replacement_picks = rng.integers(0, max(len(pool), 1), size=len(results))
    shuffle_draw = rng.random()
    permutation = rng.permutation(len(results))
    drop_draws = rng.random(len(results))
    # drawn last, so that the streams of the options above are those of configurations without it
    fail_draw = rng.random()
    fail_picks = rng.integers(0, max(len(pool), 1), size=len(results))

    original = set(results)
    p_fail = config.fail_prob.at(step)
    if p_fail > 0 and fail_draw < p_fail and len(pool) and results:
        taken, picks = set(original), []
        for start in fail_picks:
            picks.append(_not_in(pool, int(start), taken))
            taken.add(picks[-1])
        return picks, ["failed: every result replaced (" + ", ".join(f"{a} -> {b}" for a, b in zip(results, picks)) + ")"]
    if p_replace > 0 and len(pool):
        for position in np.flatnonzero(replace_draws < p_replace):
            pick = _not_in(pool, int(replacement_picks[position]), original)
            applied.append(f"replaced [{position + 1}] {results[position]} -> {pick}")
            results[position] = pick
    if p_shuffle > 0 and shuffle_draw < p_shuffle and len(results) > 1:
        results = [results[i] for i in permutation]
        applied.append("shuffled")
    if p_drop > 0:
        dropped = drop_draws < p_drop
        if dropped.any():
            applied.append("dropped " + ", ".join(results[i] for i in np.flatnonzero(dropped)))
            results = [r for r, gone in zip(results, dropped) if not gone]
    return results, applied


def _not_in(pool: Sequence[str], start: int, taken: set[str]) -> str:
    """``pool[start]``, or when the list already holds it (rare on a real corpus) the next id that it does not."""
    pick = pool[start]
    if pick in taken:
        pick = next((pool[(start + j) % len(pool)] for j in range(len(pool)) if pool[(start + j) % len(pool)] not in taken), pick)
    return pick


@dataclass(frozen=True)
class DistractorSet:
    """Distractor documents and, for each, the id of the document it paraphrases (if known)."""

    documents: list[Document]
    source_ids: dict[str, str]


def load_distractors(path: str | Path) -> DistractorSet:
    """Read distractor documents from JSONL (``_id``/``id``, ``text``, optional ``title``, ``source_id``).

    The Apollo 13 ``paraphrases.jsonl`` has this shape. Empty texts are skipped (they cannot
    distract); duplicate ids raise :class:`DataError`.
    """
    from searchrl.data.io import iter_jsonl, record_id, string_field

    path = Path(path)
    documents: list[Document] = []
    sources: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line, record in iter_jsonl(path):
        doc_id = record_id(record, path, line)
        if doc_id in seen:
            raise DataError(f"duplicate distractor id {doc_id!r} (first on line {seen[doc_id]})", path=path, line=line)
        seen[doc_id] = line
        text = string_field(record, "text", path, line)
        if not text.strip():
            continue
        documents.append(Document(id=doc_id, text=text, title=string_field(record, "title", path, line)))
        source = record.get("source_id")
        if source is not None:
            sources[doc_id] = str(source)
    if not documents:
        raise DataError("no distractor documents with text", path=path)
    return DistractorSet(documents=documents, source_ids=sources)


def with_distractors(corpus: Mapping[str, Document], distractors: DistractorSet | Sequence[Document]) -> dict[str, Document]:
    """``corpus`` plus the distractors; an id present in both raises :class:`DataError`."""
    documents = distractors.documents if isinstance(distractors, DistractorSet) else list(distractors)
    merged = dict(corpus)
    clashes = [d.id for d in documents if d.id in merged]
    if clashes:
        raise DataError(
            f"{len(clashes)} distractor ids are also corpus ids (e.g. {clashes[0]!r})",
            hint="distractor ids must differ from the corpus ids so that a retrieved original can be told apart",
        )
    merged.update((d.id, d) for d in documents)
    return merged
