"""The data of a co-augmentation run and its layout as TRL training rows.

* :func:`load_coaug_data` reads the BEIR folder: corpus, training split, dev split.
* :class:`DevSelection` splits dev into queries that choose the checkpoint and queries that
  only report results.
* :func:`build_step_dataset` lays the steps out back to back, one row per expanded prompt,
  with the prompt rendered exactly as the generation engines render it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from searchrl.augment import ExpansionPolicy
from searchrl.coaug.batch import CoAugBatch, CoAugBatchBuilder
from searchrl.coaug.config import CoAugConfig
from searchrl.data.types import Document, judged_queries
from searchrl.errors import ConfigError, DataError
from searchrl.llm.engine import render_chat


@dataclass
class CoAugData:
    """Training and dev data of a run, loaded once."""

    corpus: dict[str, Document]
    train_queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    dev_queries: dict[str, str]
    dev_qrels: dict[str, dict[str, int]]
    files: list[Path] = field(default_factory=list)


def load_coaug_data(config: CoAugConfig) -> CoAugData:
    """Load the BEIR folder's corpus (once), and the queries and qrels of the training and dev splits.

    The split files come from ``DATA/qrels/`` or, when ``config.qrels_dir`` is set, from that
    folder (e.g. a dev split the quickstart derived into its run directory).
    """
    from searchrl.data.beir import load_corpus, load_qrels, load_queries, qrels_path
    from searchrl.data.hub import resolve_data_path
    from searchrl.data.io import resolve_data_file

    directory = resolve_data_path(config.data)
    corpus_file = resolve_data_file(directory, "corpus.jsonl")
    queries_file = resolve_data_file(directory, "queries.jsonl")
    corpus = load_corpus(corpus_file)
    all_queries = load_queries(queries_file)

    def split(name: str) -> tuple[dict[str, str], dict[str, dict[str, int]], Path]:
        path = Path(config.qrels_dir) / f"{name}.tsv" if config.qrels_dir else qrels_path(directory, name)
        qrels = load_qrels(path, query_ids=all_queries.keys(), doc_ids=corpus.keys())
        if not qrels:
            raise DataError("the qrels file has no judgments", path=path)
        return {q: all_queries[q] for q in qrels}, qrels, path

    train_queries, train_qrels, train_file = split(config.train_split)
    dev_queries, dev_qrels, dev_file = split(config.dev_split)
    overlap = set(train_queries) & set(dev_queries)
    if overlap:
        raise DataError(
            f"{len(overlap)} queries are in both the {config.train_split} and {config.dev_split} qrels, "
            f"e.g. {sorted(overlap)[0]!r}",
            path=config.data,
            hint="split the queries so dev is held out",
        )
    if config.max_train_queries is not None and config.max_train_queries < len(train_queries):
        rng = np.random.default_rng(config.seed)
        ids = list(train_queries)
        keep = sorted(rng.choice(len(ids), size=config.max_train_queries, replace=False))
        train_queries = {ids[i]: train_queries[ids[i]] for i in keep}
    files = [corpus_file, queries_file, train_file, dev_file]
    return CoAugData(corpus, train_queries, train_qrels, dev_queries, dev_qrels, files)


def render_training_prompt(tokenizer: Any, chat: Sequence[Mapping[str, str]]) -> str:
    """``chat`` as prompt text for TRL, tokenising to exactly the ids the generation engines use.

    TRL 1.16 renders a conversational prompt with ``add_generation_prompt=True`` whatever its
    last message, so the ``<answer>`` prefill would be closed and followed by a fresh assistant
    turn. Rows therefore carry the prompt already rendered the way
    :meth:`searchrl.llm.transformers_engine.TransformersEngine.encode_chat` and the vLLM engine
    render it (a final assistant message is continued, otherwise the assistant turn is opened),
    and TRL only tokenises the text, with the tokenizer's special tokens added: a
    beginning-of-sequence token that the template already wrote is taken off the text when the
    tokenizer would add it again.
    """
    text = render_chat(tokenizer, chat)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        added = tokenizer("", add_special_tokens=True)["input_ids"]
        if added and added[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text


def check_training_prompt(tokenizer: Any, chat: Sequence[Mapping[str, str]], text: str) -> None:
    """Raise :class:`~searchrl.errors.ModelError` unless TRL's tokenisation of ``text`` equals the engine's of ``chat``."""
    from searchrl.errors import ModelError

    rendered = render_chat(tokenizer, chat)
    engine_ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    trainer_ids = list(tokenizer(text)["input_ids"])
    if engine_ids != trainer_ids:
        raise ModelError(
            f"training would see a different prompt than generation ({len(trainer_ids)} vs {len(engine_ids)} tokens)",
            hint="this tokenizer adds special tokens the chat template does not expect; set expansion.prefill=false",
        )


def step_rows(batch: CoAugBatch, policy: ExpansionPolicy, render: Any = None) -> list[dict[str, Any]]:
    """Dataset rows of one step: its expanded prompts, in batch order, with the reward's columns.

    Columns: ``prompt`` (the chat, or the text ``render(chat)`` returns — see
    :func:`render_training_prompt`), ``step``, ``prompt_index`` (position in the step),
    ``role``, ``kind``, ``item_id``, ``group``.
    """
    return [
        {
            "prompt": policy.prompt(item.role, item.text) if render is None else render(policy.prompt(item.role, item.text)),
            "step": batch.step,
            "prompt_index": index,
            "role": item.role,
            "kind": item.kind,
            "item_id": item.item_id,
            "group": item.group,
        }
        for index, item in enumerate(batch.prompts)
    ]


def build_step_dataset(builder: CoAugBatchBuilder, policy: ExpansionPolicy, steps: int, tokenizer: Any = None):
    """A ``datasets.Dataset`` holding ``steps`` steps back to back (read in order, never shuffled).

    With ``tokenizer`` the prompts are rendered text (:func:`render_training_prompt`), checked
    on the first step to tokenise exactly as the generation engines tokenise the chats.
    """
    from datasets import Dataset

    render = None if tokenizer is None else (lambda chat: render_training_prompt(tokenizer, chat))
    rows: list[dict[str, Any]] = []
    for step in range(steps):
        rows.extend(step_rows(builder.build(step), policy, render))
    if tokenizer is not None and rows:
        first = builder.build(0).prompts
        for item, row in list(zip(first, rows))[:4]:
            check_training_prompt(tokenizer, policy.prompt(item.role, item.text), row["prompt"])
    return Dataset.from_list(rows)


def _seeded_pick(ids: Sequence[str], count: int, seed: int, stream: int) -> set[str]:
    """``count`` of ``ids`` drawn by a seeded permutation (``stream`` keeps different draws apart)."""
    order = np.random.default_rng([seed, stream]).permutation(len(ids))
    return {ids[i] for i in order[:count]}


@dataclass(frozen=True)
class DevSelection:
    """Which dev queries choose the checkpoint (``select``) and which only report results (``report``).

    A checkpoint chosen as the best of several noisy evaluations looks better on the queries
    that chose it than it is; its result is therefore reported on queries that took no part in
    choosing it. The split is seeded and saved as ``RUN/selection.json``.

    >>> qrels = {f"q{i}": {"d": 1} for i in range(6)}
    >>> s = DevSelection.split({q: "text" for q in qrels}, qrels, 0.5, seed=0)
    >>> len(s.select), len(s.report), set(s.select) & set(s.report)
    (3, 3, set())
    """

    select: list[str]
    report: list[str]
    select_split: str = "dev"
    """The split the ``select`` queries come from: ``dev``, or ``train`` (held out of RL training)."""

    @classmethod
    def held_out_training(
        cls, train_queries: Mapping[str, str], train_qrels: Mapping[str, Mapping[str, int]], count: int,
        dev_queries: Mapping[str, str], dev_qrels: Mapping[str, Mapping[str, int]], *, seed: int = 0,
    ) -> "DevSelection":
        """``count`` seeded judged training queries choose checkpoints; every judged dev query only reports.

        >>> qrels = {f"t{i}": {"d": 1} for i in range(10)}
        >>> s = DevSelection.held_out_training({q: "x" for q in qrels}, qrels, 4, {"v1": "x"}, {"v1": {"d": 1}})
        >>> len(s.select), s.report, s.select_split
        (4, ['v1'], 'train')
        """
        judged = judged_queries(train_queries, train_qrels)
        if count >= len(judged):
            raise ConfigError(
                f"cannot hold out {count} of the {len(judged)} judged training queries to choose checkpoints "
                "and train on the rest",
                hint="lower eval.max_queries",
            )
        chosen = _seeded_pick(judged, count, seed, stream=3)
        return cls([q for q in judged if q in chosen], judged_queries(dev_queries, dev_qrels), "train")

    @classmethod
    def split(cls, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], report_fraction: float,
              *, seed: int = 0) -> "DevSelection":
        judged = judged_queries(queries, qrels)
        if not judged:
            raise ConfigError("the dev split has no query with a relevant document", hint="check the dev qrels")
        report_count = int(round(len(judged) * report_fraction))
        if report_fraction > 0 and (report_count < 1 or report_count >= len(judged)):
            raise ConfigError(
                f"cannot hold out {report_fraction:.0%} of {len(judged)} judged dev queries for reporting "
                "and keep some for selection",
                hint="use a larger dev split, or eval.report_fraction=0 to select and report on the same queries",
            )
        report = _seeded_pick(judged, report_count, seed, stream=2)
        return cls([q for q in judged if q not in report], [q for q in judged if q in report])

    def save(self, path: Path) -> None:
        payload = {"select_split": self.select_split, "select": self.select, "report": self.report}
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "DevSelection":
        payload = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(payload["select"]), list(payload["report"]), payload.get("select_split", "dev"))


__all__ = [
    "CoAugData",
    "DevSelection",
    "build_step_dataset",
    "check_training_prompt",
    "load_coaug_data",
    "render_training_prompt",
    "step_rows",
]
