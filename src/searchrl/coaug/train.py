"""Co-augmentation training: one policy expands queries and documents, trained with GRPO (TRL).

How one RL step maps onto TRL's ``GRPOTrainer`` (checked against TRL 1.16's source):

* **One generation batch = one step.** The training dataset is laid out step by step — step
  ``s`` occupies rows ``s·P … s·P+P-1`` with the ``P`` expanded prompts of
  ``CoAugBatchBuilder.build(s)`` — and is not shuffled. TRL's ``RepeatSampler`` then yields
  each chunk of ``generation_batch_size / num_generations = P`` consecutive rows, each row
  ``G`` times in a row, and the trainer generates and scores that whole chunk in one reward
  call. :class:`CoAugReward` checks this on every call (one step id, every prompt of the step
  exactly ``G`` times) and raises otherwise, because the entangled reward is meaningless on a
  partial step.
* **Advantages.** With ``scale_rewards="none"`` TRL computes ``advantage = r − mean(r of the
  prompt's G samples)``. Every sample of a group shares its prompt's role, so returning
  ``role_scale × r`` gives exactly ``role_scale × (r − mean)`` — the CoAug advantage (×1
  query, ×0.2 relevant document, ×0.1 negative document) — with no trainer subclass. A sample
  without a reward (a document sample never drawn into a pool) is returned as ``None``: TRL
  leaves it out of the group mean and gives it advantage 0, as
  CoAug's advantage does (``tests/coaug_oracle.py`` computes it directly).
* **Loss.** PPO clipped surrogate with ``epsilon=0.2, epsilon_high=0.28`` (range [0.8, 1.28]),
  token-mean (``loss_type="dapo"``), grad clip 1.0, optional KL ``beta`` (0 = no reference model).
* **Several processes** (``accelerate launch --num_processes N -m searchrl train coaug ...``).
  TRL calls each process's reward function on that process's share of the step; the reward
  gathers the shares first (:class:`~searchrl.coaug.reward.CoAugReward`), so the pool is the
  whole step's and N processes compute the rewards one process would.
* **The trainer class** is TRL's with savings that change no result
  (:mod:`searchrl.training.trainer`): it samples with the LoRA adapter merged, keeps each prompt's
  samples in one micro-batch and scores the prompt once, and projects only the positions the loss
  reads onto the vocabulary (single process; TRL's own code otherwise).

Everything else — run directory, resume, dev evaluation and best checkpoint — comes from
:mod:`searchrl.runs` and :mod:`searchrl.training`. The best checkpoint ``RUN/best`` is a LoRA
adapter folder (or a full model) that ``searchrl augment --model RUN/best`` loads directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from searchrl.coaug.batch import CoAugBatchBuilder
from searchrl.coaug.bm25 import CorpusStatistics
from searchrl.coaug.config import RESUMABLE_KEYS, CoAugConfig, augment_flags
from searchrl.coaug.dataset import CoAugData, DevSelection, build_step_dataset, load_coaug_data
from searchrl.coaug.evaluate import BatchScorer, DevEvaluator, top_documents_per_query
from searchrl.coaug.reward import AdvantageScales, CoAugReward
from searchrl.config import load_config
from searchrl.errors import ConfigError
from searchrl.runs import RunDirectory
from searchrl.training import (
    DevEvaluationCallback,
    RunLoggingCallback,
    build_grpo_config,
    build_lora_config,
    load_policy,
    quiet_trainer,
    resolve_device,
    train_with_resume,
)

log = logging.getLogger(__name__)


def dev_evaluator(
    config: CoAugConfig, data: CoAugData, scorer: BatchScorer, query_ids: Sequence[str], *, max_queries: int | None,
    split: str = "dev",
) -> DevEvaluator:
    """A :class:`DevEvaluator` over ``query_ids`` of ``split`` (dev, or train for held-out training queries)."""
    queries, qrels = (data.train_queries, data.train_qrels) if split == "train" else (data.dev_queries, data.dev_qrels)
    return DevEvaluator.build(
        data.corpus,
        {q: queries[q] for q in query_ids},
        qrels,
        scorer,
        config.expansion_policy(),
        mode=config.mode,
        max_queries=max_queries,
        candidate_docs=config.eval.candidate_docs,
        candidate_depth=config.eval.candidate_depth,
        expand_depth=config.eval.expand_depth,
        seed=config.seed,
        batch_size=config.eval.batch_size,
    )


@dataclass
class CoAugSetup:
    """Everything :func:`train_coaug` builds before training (tests use it to reach inside)."""

    config: CoAugConfig
    run: RunDirectory
    data: CoAugData
    builder: CoAugBatchBuilder
    reward: CoAugReward
    evaluator: DevEvaluator
    trainer: Any
    scorer: BatchScorer | None = None
    selection: DevSelection | None = None

    def report_evaluator(self) -> DevEvaluator:
        """The same evaluation on the dev queries that took no part in choosing the checkpoint."""
        if self.selection is None or not self.selection.report or self.scorer is None:
            raise ConfigError("this run holds out no dev queries for reporting", hint="set eval.report_fraction > 0")
        return dev_evaluator(self.config, self.data, self.scorer, self.selection.report, max_queries=None)


def _top_candidates(config: CoAugConfig, data: CoAugData, scorer: BatchScorer) -> dict[str, list[str]] | None:
    """Each training query's top documents under the unexpanded retriever over the whole corpus.

    Deep enough for both uses: hard negatives (drawn from the top ``hard_negative_depth``) and
    the background pool (the top ``background``). ``None`` when neither is asked for.
    """
    depth = max(config.batch.hard_negative_depth if config.batch.hard_negatives else 0, config.batch.background)
    if depth == 0:
        return None
    return top_documents_per_query(data.corpus, data.train_queries, scorer, depth)


def _informative_queries(
    config: CoAugConfig, data: CoAugData, scorer: BatchScorer, candidates: Mapping[str, list[str]] | None
) -> dict[str, str]:
    """The training queries, without those the unexpanded retriever already ranks perfectly (``skip_solved``).

    A query whose relevant documents already fill the top of the unexpanded ranking has nDCG@k 1
    before any expansion; every sample of it tends to tie at 1, so its group carries no gradient
    (DAPO drops such groups after sampling; dropping them before costs nothing).
    """
    if not config.batch.skip_solved:
        return data.train_queries
    from searchrl.metrics import evaluate_run

    k = config.reward.k
    ranked = candidates if candidates is not None else top_documents_per_query(data.corpus, data.train_queries, scorer, k)
    run = {q: {doc: float(len(docs) - rank) for rank, doc in enumerate(docs[:k])} for q, docs in ranked.items()}
    qrels = {q: data.train_qrels[q] for q in data.train_queries if q in data.train_qrels}
    _, per_query = evaluate_run(qrels, run, [f"ndcg@{k}"])
    kept = {q: text for q, text in data.train_queries.items() if per_query.get(q, {}).get(f"ndcg@{k}", 0.0) < 1.0}
    log.info("skip_solved: %d of %d training queries are already ranked perfectly and left out",
             len(data.train_queries) - len(kept), len(data.train_queries))
    return kept if len(kept) >= config.batch.queries_per_step else data.train_queries


def _prefixes(candidates: Mapping[str, list[str]] | None, depth: int) -> dict[str, list[str]] | None:
    return None if candidates is None else {q: docs[:depth] for q, docs in candidates.items()}


def prepare_coaug(config: CoAugConfig, *, force: bool = False, callbacks: Sequence[Any] = ()) -> CoAugSetup:
    """Load data and model, create/resume the run directory and build the GRPO trainer."""
    from searchrl.training.trainer import grpo_trainer_class

    device = resolve_device(config.device)
    data = load_coaug_data(config)
    run = RunDirectory.create_or_resume(
        config.output_dir, config, input_files=data.files, force=force, mutable_keys=RESUMABLE_KEYS
    )
    if config.wandb_project:
        run.enable_wandb(config.wandb_project)
    policy = config.expansion_policy()
    statistics = CorpusStatistics.from_documents(data.corpus.values()) if config.retriever == "bm25" else None
    scorer = BatchScorer(
        config.retriever,
        statistics=statistics,
        encoder=config.encoder,
        k1=config.bm25.k1,
        b=config.bm25.b,
        unseen=config.reward.unseen_terms,
        query_repeat=config.bm25.query_repeat,
    )
    if config.eval.select_on == "train":
        selection = DevSelection.held_out_training(
            data.train_queries, data.train_qrels, config.eval.max_queries or 0, data.dev_queries, data.dev_qrels,
            seed=config.seed,
        )
        held_out = set(selection.select)
        selecting = data  # the held-out training queries are evaluated, never trained on
        data = replace(data, train_queries={q: t for q, t in data.train_queries.items() if q not in held_out})
    else:
        selection = DevSelection.split(data.dev_queries, data.dev_qrels, config.eval.report_fraction, seed=config.seed)
    candidates = _top_candidates(config, data, scorer)
    train_queries = _informative_queries(config, data, scorer, candidates)
    builder = CoAugBatchBuilder(
        data.corpus,
        train_queries,
        data.train_qrels,
        mode=config.mode,
        queries_per_step=config.batch.queries_per_step,
        group_size=config.batch.group_size,
        relevant_per_query=config.batch.relevant_per_query,
        hard_negatives=config.batch.hard_negatives,
        hard_negative_candidates=_prefixes(candidates, config.batch.hard_negative_depth),
        background=config.batch.background,
        background_candidates=candidates,
        background_corpus=config.batch.background_corpus,
        seed=config.seed,
    )
    scales = AdvantageScales(**config.role_scales.model_dump())
    reward = CoAugReward(
        builder,
        policy,
        scorer,
        samples_per_prompt=config.grpo.num_generations,
        rounds=config.reward.rounds,
        k=config.reward.k,
        relevant_weight=config.reward.relevant_weight,
        ties=config.reward.ties,
        scales=scales,
        merge_duplicates=config.reward.merge_duplicates,
        seed=config.seed,
    )
    selection.save(run.path / "selection.json")
    if selection.select_split == "train":
        evaluator = dev_evaluator(config, selecting, scorer, selection.select, max_queries=None, split="train")
    else:
        evaluator = dev_evaluator(config, data, scorer, selection.select, max_queries=config.eval.max_queries)
    (run.path / "expansion_policy.json").write_text(policy.model_dump_json(indent=2) + "\n", encoding="utf-8")
    baseline_path = run.path / "baseline.json"
    if not baseline_path.exists():
        baseline = evaluator.baseline()
        baseline_path.write_text(json.dumps({"retriever": config.retriever, **baseline}, indent=2) + "\n")

    prompts_per_step = config.prompts_per_step()
    grpo = config.grpo
    updates = config.batch.updates_per_step  # with several updates per step, TRL's steps count updates
    options = grpo.trl_options() | {"max_steps": grpo.steps * updates, "save_steps": grpo.save_steps * updates}
    generation_kwargs = dict(config.generation.generation_kwargs)
    grpo_args = build_grpo_config(
        output_dir=run.checkpoints_dir,
        **options,
        prompts_per_step=prompts_per_step,
        updates_per_step=updates,
        max_completion_length=config.generation.max_new_tokens,
        repetition_penalty=config.generation.repetition_penalty,
        loss_type="dapo",
        scale_rewards="none",
        shuffle_dataset=False,
        seed=config.seed,
        device=device,
        extra=({"generation_kwargs": generation_kwargs} if generation_kwargs else {}) | dict(grpo.extra),
    )
    model, tokenizer = load_policy(config.model, device=device, precision=config.precision)
    dataset = build_step_dataset(builder, policy, config.grpo.steps, tokenizer)
    dev_callback = DevEvaluationCallback(
        run,
        evaluator,
        metric="ndcg@10",
        every=config.eval.every * config.batch.updates_per_step,
        patience=config.eval.patience,
        evaluate_at_start=config.eval.at_start,
        min_delta=config.eval.min_delta,
    )
    trainer = grpo_trainer_class()(
        model=model,
        reward_funcs=[reward],
        args=grpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=build_lora_config(config.lora),
        callbacks=[RunLoggingCallback(run), dev_callback, *callbacks],
        **config.grpo.trainer_options(),
    )
    quiet_trainer(trainer, "co-augmentation")
    return CoAugSetup(config, run, data, builder, reward, evaluator, trainer, scorer, selection)


def train_coaug(config: CoAugConfig, *, force: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Train (or resume) the run described by ``config``; returns the run directory."""
    started = time.time()
    return train_prepared(prepare_coaug(config, force=force, callbacks=callbacks), started=started)


def train_prepared(setup: CoAugSetup, *, started: float | None = None) -> Path:
    """Train (or resume) the run :func:`prepare_coaug` built, save ``final/``, write the report; returns the run directory."""
    started = time.time() if started is None else started
    config = setup.config
    run = setup.run
    resumed_from = train_with_resume(setup.trainer, run)
    # Save the final state too, so a finished run is complete on disk whatever save_every was.
    setup.trainer.save_model(str(run.path / "final"))
    setup.trainer.processing_class.save_pretrained(str(run.path / "final"))
    run.write_report(
        "Co-augmentation training",
        {
            "Summary": {
                "mode": config.mode,
                "retriever": config.retriever,
                "model": config.model,
                "steps done": setup.trainer.state.global_step // config.batch.updates_per_step,
                "prompts per step": config.prompts_per_step(),
                "samples per prompt": config.grpo.num_generations,
                "resumed from": str(resumed_from) if resumed_from else "-",
                "wall time this invocation (s)": round(time.time() - started, 1),
            },
            "Dev baseline (no expansion, same slice)": json.loads((run.path / "baseline.json").read_text()),
            "Use the trained policy": (
                f"`searchrl augment {{queries|corpus}} --model {run.best_dir} --data {config.data} "
                f"{augment_flags(config)} --out OUT` (the best checkpoint; `final/` holds the last one; "
                "the flags repeat the expansion policy used in training, see expansion_policy.json)."
            ),
        },
    )
    run.close()
    return run.path


def train_coaug_from_yaml(
    config_path: str | Path | None, overrides: Sequence[str] | None = None, *, force: bool = False,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Load a :class:`CoAugConfig` from YAML + ``key=value`` overrides, train, return the run directory.

    Rerunning with the same config continues from the last checkpoint in ``RUN/checkpoints``.
    """
    config = load_config(CoAugConfig, config_path, list(overrides or []))
    return train_coaug(config, force=force, callbacks=callbacks)


__all__ = [
    "CoAugSetup",
    "dev_evaluator",
    "prepare_coaug",
    "train_coaug",
    "train_coaug_from_yaml",
    "train_prepared",
]
