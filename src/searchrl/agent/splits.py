"""Train/dev splits of a QA set that never share a source document.

ReZero split its 318 questions at random, so most test questions came from a chunk a training
question was also written from. Here questions are grouped by their gold documents (two
questions that share any gold id land in the same group, transitively) and whole groups are
assigned to one side, so the dev set measures answering about chunks the policy never trained
on. The assignment is a pure function of the question ids, gold ids and the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searchrl.data.io import write_jsonl
from searchrl.data.qa import load_qa
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, DataError

SPLIT_FILES = ("train.jsonl", "dev.jsonl")


@dataclass(frozen=True)
class QASplit:
    """Two disjoint lists of questions; no gold id appears on both sides."""

    train: list[QAExample]
    dev: list[QAExample]


def source_groups(examples: list[QAExample]) -> list[list[int]]:
    """Indices of ``examples`` grouped so that questions sharing any gold id share a group.

    A question without gold ids forms a group of its own. Groups are ordered by their first
    member, members in input order.

    >>> from searchrl.data.types import QAExample as Q
    >>> source_groups([Q("a", "?", ("x",), ("c1",)), Q("b", "?", ("y",), ("c2",)), Q("c", "?", ("z",), ("c1", "c3"))])
    [[0, 2], [1]]
    """
    parent = list(range(len(examples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, example in enumerate(examples):
        for gold_id in example.gold_ids:
            if gold_id in owner:
                a, b = find(owner[gold_id]), find(index)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[gold_id] = index
    groups: dict[int, list[int]] = {}
    for index in range(len(examples)):
        groups.setdefault(find(index), []).append(index)
    return sorted(groups.values(), key=lambda members: members[0])


def split_by_source(
    examples: list[QAExample],
    *,
    dev_fraction: float = 0.15,
    dev_size: int | None = None,
    seed: int = 0,
) -> QASplit:
    """Split ``examples`` into train and dev with no gold document on both sides.

    Groups of questions (see :func:`source_groups`) are visited in an order shuffled with
    ``seed`` and moved to dev whenever they fit, until dev holds ``dev_size`` questions (or
    ``dev_fraction`` of them); a group is never split, so dev can end up slightly smaller.
    Both sides keep the input order.

    >>> from searchrl.data.types import QAExample as Q
    >>> qs = [Q(f"q{i}", "?", ("a",), (f"c{i // 2}",)) for i in range(10)]
    >>> split = split_by_source(qs, dev_size=4, seed=1)
    >>> len(split.dev), {g for q in split.dev for g in q.gold_ids} & {g for q in split.train for g in q.gold_ids}
    (4, set())
    """
    if not examples:
        raise DataError("cannot split an empty QA set", hint="check the questions file")
    if dev_size is None:
        if not 0.0 < dev_fraction < 1.0:
            raise ConfigError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
        dev_size = max(1, round(dev_fraction * len(examples)))
    groups = source_groups(examples)
    if dev_size < 1 or dev_size >= len(examples):
        raise ConfigError(
            f"dev_size {dev_size} leaves no questions on one side of a set of {len(examples)}",
            hint="choose 1 <= dev_size < number of questions",
        )
    if len(groups) < 2:
        raise DataError(
            "all questions share gold documents, so no source-disjoint split exists",
            hint="check the gold_ids of the QA set",
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    dev_indices: set[int] = set()
    for group_index in order:
        members = groups[group_index]
        if len(dev_indices) + len(members) <= dev_size:
            dev_indices.update(members)
        if len(dev_indices) == dev_size:
            break
    if not dev_indices:  # every group is larger than dev_size: take the first one whole
        dev_indices.update(groups[order[0]])
    train = [ex for i, ex in enumerate(examples) if i not in dev_indices]
    dev = [ex for i, ex in enumerate(examples) if i in dev_indices]
    if not train:
        raise DataError("the split left no training questions", hint="lower dev_size")
    return QASplit(train=train, dev=dev)


def _example_record(example: QAExample) -> dict:
    return {
        "id": example.id,
        "question": example.question,
        "answers": list(example.answers),
        "gold_ids": list(example.gold_ids),
    }


def write_split(split: QASplit, directory: str | Path, *, source: str | Path | None = None, seed: int | None = None) -> Path:
    """Write ``train.jsonl``, ``dev.jsonl`` (readable by :func:`searchrl.data.qa.load_qa`) and ``split.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "train.jsonl", (_example_record(e) for e in split.train))
    write_jsonl(directory / "dev.jsonl", (_example_record(e) for e in split.dev))
    manifest = {
        "source": None if source is None else str(source),
        "seed": seed,
        "train": len(split.train),
        "dev": len(split.dev),
        "disjoint_by": "gold_ids",
    }
    (directory / "split.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def load_split(directory: str | Path) -> QASplit:
    """Read a split written by :func:`write_split` and check that it is still source-disjoint."""
    directory = Path(directory)
    split = QASplit(train=load_qa(directory / "train.jsonl"), dev=load_qa(directory / "dev.jsonl"))
    shared = {g for e in split.train for g in e.gold_ids} & {g for e in split.dev for g in e.gold_ids}
    if shared:
        raise DataError(
            f"train and dev share gold documents {sorted(shared)[:5]}",
            path=directory,
            hint="rebuild the split with searchrl.agent.splits.make_split",
        )
    return split


def make_split(
    questions: str | Path,
    directory: str | Path,
    *,
    dev_fraction: float = 0.15,
    dev_size: int | None = None,
    seed: int = 0,
) -> QASplit:
    """Split the QA file ``questions`` and write it to ``directory``; reuse the files if already there.

    Reuse keeps a resumed run on exactly the questions it started with; a split written with
    another seed or size is rejected rather than silently replaced.
    """
    directory = Path(directory)
    manifest_path = directory / "split.json"
    if manifest_path.exists() and all((directory / name).exists() for name in SPLIT_FILES):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("seed") != seed:
            raise ConfigError(
                f"{directory} holds a split made with seed {manifest.get('seed')}, not {seed}",
                path=manifest_path,
                hint="use another directory or the seed the split was made with",
            )
        return load_split(directory)
    split = split_by_source(load_qa(questions), dev_fraction=dev_fraction, dev_size=dev_size, seed=seed)
    write_split(split, directory, source=questions, seed=seed)
    return split
