"""Train the search agent: split → supervised warm-start → GRPO with honest checkpoint selection.

This file is the composition root; it reads top to bottom. The settings live in
:mod:`searchrl.agent.config`, the rollout plumbing for TRL's ``GRPOTrainer`` in
:mod:`searchrl.agent.rollout`, rewards in :mod:`searchrl.agent.rewards`, the warm-start in
:mod:`searchrl.agent.sft`. One run directory (see :mod:`searchrl.runs`) holds everything::

    RUN/split/            chunk-disjoint train.jsonl / dev.jsonl (made once, reused on resume)
    RUN/selection.json    which dev questions choose best/ ("select") and which are only reported ("report")
    RUN/sft/              optional warm-start: transcripts, adapter/, sft.json (done marker)
    RUN/checkpoints/      GRPO checkpoints, resumed from after an interruption
    RUN/dev/              dev transcripts of every evaluation (step-000010.jsonl, ...)
    RUN/train_eval/       with eval.train_questions: transcripts of a fixed sample of training questions
    RUN/best/, best.json  the adapter with the best *selection* score; step 0 is the policy GRPO
                          started from, so best/ is the warm-start itself when no step beats it
    RUN/final/            the adapter after the last step
    RUN/metrics.jsonl     trainer logs (train/...), reward terms and how often each fired
                          (train/rewards/fired_<term>), rollout statistics (rollout/...), dev
                          metrics on the selection part (dev/...), the report part (dev_report/...)
                          and the training-question sample (train_eval/...)

The KL reference: with ``grpo.beta > 0`` and a warm-start (or ``init_adapter``), TRL 1.16 keeps a
frozen copy of the starting adapter (named ``ref``) and measures the KL against it — so the
penalty keeps the policy near the warm-start, not near the untrained base model.
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from searchrl.agent.config import (
    RESUMABLE_KEYS,
    AgentDataConfig,
    AgentTrainConfig,
    DevEvalSettings,
    GRPOSettings,
    load_agent_config,
)
from searchrl.agent.episode import EnginePolicy, EpisodeConfig
from searchrl.agent.rewards import answer_reward_funcs, build_reward_functions, later_turn_reward_funcs
from searchrl.agent.rollout import AgentRollout, TrainerVLLMPolicy, agent_dataset_rows, rollout_statistics, trainer_policy
from searchrl.agent.sft import run_sft_stage, sft_adapter_dir, sft_finished
from searchrl.agent.splits import make_split, split_by_source
from searchrl.agent.tool import SearchTool, build_search_tool
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, ModelError
from searchrl.memory import release_freed_memory

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"


# ----------------------------------------------------------------------------------------
# Entry points


def train_agent_from_yaml(
    config_path: str | Path | None, overrides: Sequence[str] | None = None, *, force: bool = False
) -> Path:
    """Load an :class:`AgentTrainConfig` from YAML (or a packaged recipe's name) plus ``key=value``
    overrides, train, return the run directory. Rerunning the same command resumes the run."""
    return train_agent(load_agent_config(config_path, overrides), force=force)


def train_agent(config: AgentTrainConfig, *, force: bool = False) -> Path:
    """Train the search agent as configured; returns the run directory.

    Stages, each skipped when already done so that rerunning resumes: split → optional
    supervised warm-start (``sft.enabled``) → GRPO with dev evaluations every ``eval.every``
    steps (and before the first), ``best/`` chosen on the selection part of dev and optional
    early stopping → ``final/`` and the report.
    """
    import torch

    from searchrl.runs import RunDirectory
    from searchrl.training import TimeLimitCallback, resolve_device, save_policy, train_with_resume

    config = config.model_copy(update={"data": config.data.resolved()})
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    run = RunDirectory.create_or_resume(
        config.output_dir, config, input_files=input_files(config), force=force, mutable_keys=RESUMABLE_KEYS
    )
    if config.wandb_project:
        run.enable_wandb(config.wandb_project)
    started = time.perf_counter()
    questions = split_questions(config, run.path)
    tool = build_tool(config)

    # Stage 1: the warm-start (skipped when done), then the policy GRPO starts from.
    adapter, sft_summary = warm_start(config, run, tool, questions.train, device)
    model, tokenizer = load_policy_model(config, adapter, device)

    # Stage 2: GRPO, with dev evaluations that keep best/.
    evaluation = DevEvaluation(config, run, tool, questions)
    trainer = build_trainer(config, run, model, tokenizer, tool, questions.train, evaluation)
    if config.grpo.steps > 0:
        if config.grpo.max_minutes is not None:
            trainer.add_callback(TimeLimitCallback(60 * config.grpo.max_minutes))
        train_with_resume(trainer, run)
    elif not evaluation.done(0):  # evaluate the warm-started (or untrained) policy only
        metrics = evaluation(model, tokenizer, 0)
        run.log_metrics(0, metrics, prefix="dev/")
        run.update_best(0, config.eval.metric, metrics[config.eval.metric],
                        save=lambda folder: save_policy(model, tokenizer, folder))
    save_policy(trainer.model, tokenizer, run.path / "final")

    write_agent_report(config, run, questions, sft_summary, seconds=time.perf_counter() - started)
    run.close()
    return run.path


def run_agent_training(config_path: str | Path | None, overrides: Sequence[str] | None = None, *, force: bool = False) -> Path:
    """The former name of :func:`train_agent_from_yaml`, kept for existing callers."""
    return train_agent_from_yaml(config_path, overrides, force=force)


# ----------------------------------------------------------------------------------------
# Data: the split, the selection/report parts of dev, the search tool


@dataclass(frozen=True)
class AgentSplit:
    """Training questions and the two parts of the chunk-disjoint dev split."""

    train: list[QAExample]
    select: list[QAExample]
    """Dev questions whose score chooses ``best/``."""
    report: list[QAExample]
    """Dev questions evaluated alongside but never used to choose (empty with ``report_fraction: 0``)."""
    train_eval: list[QAExample] = field(default_factory=list)
    """Training questions played at each evaluation (``eval.train_questions``): fit, not generalisation."""

    @property
    def dev(self) -> list[QAExample]:
        return self.select + self.report


def input_files(config: AgentTrainConfig) -> list[Path]:
    """The files a run depends on (their hashes go to ``RUN/inputs.json``)."""
    data = config.data.resolved()
    files = [data.questions, data.corpus]
    if config.tool.noise.distractors is not None:
        files.append(config.tool.noise.distractors)
    if config.init_adapter is not None:
        files.append(config.init_adapter)
    return [Path(f) for f in files]


def split_questions(config: AgentTrainConfig, run_path: Path) -> AgentSplit:
    """The chunk-disjoint train/dev split (``RUN/split``), dev cut again by chunk into select/report.

    The cut is a pure function of the dev questions and the split seed, written to
    ``RUN/selection.json`` for the record.
    """
    data = config.data
    split_dir = data.split_dir or run_path / "split"
    split = make_split(data.questions, split_dir, dev_fraction=data.dev_fraction, dev_size=data.dev_size, seed=data.split_seed)
    train = split.train[: data.max_train_questions] if data.max_train_questions else split.train
    dev = split.dev[: config.eval.max_questions] if config.eval.max_questions else split.dev
    select, report = list(dev), []
    if config.eval.report_fraction > 0 and len(dev) >= 2:
        parts = split_by_source(dev, dev_fraction=config.eval.report_fraction, seed=data.split_seed)
        select, report = parts.train, parts.dev
    # A seeded sample of the questions GRPO trains on, fixed for the run: the same ones at every evaluation.
    train_eval = random.Random(data.split_seed).sample(list(train), min(config.eval.train_questions, len(train)))
    record = {"select": [e.id for e in select], "report": [e.id for e in report],
              "disjoint_by": "gold_ids", "chooses_best": "select", "train_eval": [e.id for e in train_eval]}
    (run_path / SELECTION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return AgentSplit(train=list(train), select=select, report=report, train_eval=train_eval)


def build_tool(config: AgentTrainConfig) -> SearchTool:
    """Index the configured corpus (plus any distractors) for the search tool."""
    from searchrl.data.beir import load_corpus

    return build_search_tool(load_corpus(config.data.resolved().corpus), config.tool)


# ----------------------------------------------------------------------------------------
# The policy: warm-start, then the model GRPO trains


def warm_start(
    config: AgentTrainConfig, run: Any, tool: SearchTool, train: Sequence[QAExample], device: str
) -> tuple[Path | None, dict[str, Any] | None]:
    """Run the supervised warm-start once (``RUN/sft``); returns the adapter GRPO starts from and its summary."""
    if not config.sft.enabled:
        return config.init_adapter, None
    stage = run.path / "sft"
    if not sft_finished(stage):
        model, tokenizer = load_policy_model(config, config.init_adapter, device)
        run_sft_stage(stage, model, tokenizer, tool, train, config.sft, config.episode)
        del model
    summary = json.loads((stage / "sft.json").read_text(encoding="utf-8"))
    if not any("sft/loss_last" in r for r in run.read_metrics()):
        # Logged at step 0 so that resuming GRPO (which drops records after its checkpoint) keeps it.
        run.log_metrics(0, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, prefix="sft/")
    return sft_adapter_dir(stage), summary


def load_policy_model(config: AgentTrainConfig, adapter: Path | None, device: str):
    """``(model, tokenizer)``: the base model (in ``config.precision``) with a trainable LoRA adapter, new or loaded."""
    from searchrl.training import build_lora_config, load_policy

    model, tokenizer = load_policy(config.model, device=device, precision=config.precision)
    if not config.lora.enabled:
        return model.to(device), tokenizer
    from peft import PeftModel, get_peft_model

    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelError("not a LoRA adapter folder (no adapter_config.json)", path=adapter)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        model = get_peft_model(model, build_lora_config(config.lora))
    return model.to(device), tokenizer


# ----------------------------------------------------------------------------------------
# Dev evaluation: greedy episodes on both parts of dev, the selection part decides


def evaluate_on_dev(
    model: Any,
    tokenizer: Any,
    tool: SearchTool,
    dev: Sequence[QAExample],
    episode_config: EpisodeConfig,
    *,
    out_path: str | Path | None = None,
    batch_size: int = 20,
    run_info: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Greedy episodes on ``dev`` with ``model``; numeric metrics (em, f1, searches_per_episode, ...)."""
    return _numbers(_play_dev(model, tokenizer, tool, dev, episode_config, out_path=out_path,
                              batch_size=batch_size, run_info=run_info).metrics)


def _play_dev(model, tokenizer, tool, dev, episode_config, *, out_path, batch_size, run_info, overwrite=True):
    """Greedy (or as ``episode_config`` says) episodes of ``model`` on ``dev``, scored; an :class:`AgentEvalReport`."""
    import torch

    from searchrl.agent.evaluate import evaluate_agent
    from searchrl.llm.transformers_engine import TransformersEngine
    from searchrl.training.trainer import merged_lora

    policy = EnginePolicy(TransformersEngine.from_model(model, tokenizer, batch_size=batch_size), logprobs=False)
    try:
        # adapter merged, as a saved checkpoint is loaded for evaluation (and faster)
        with torch.no_grad(), merged_lora(model):
            return evaluate_agent(policy, tool, list(dev), episode_config, out_path=out_path, batch_size=batch_size,
                                  run_info=dict(run_info or {}), overwrite=overwrite, show_progress=False)
    finally:
        release_freed_memory()


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics, rounded to 10 decimals: the same answers summed in another order must tie, so that a
    later step never replaces ``best/`` by a rounding error (a step that only ties the warm-start does not beat it)."""
    return {k: round(float(v), 10) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class DevEvaluation:
    """``evaluate(model, tokenizer, step)`` for :class:`~searchrl.training.DevEvaluationCallback`.

    Plays greedy episodes on the whole dev split at once (transcripts in ``RUN/dev/``), returns
    the metrics of the *selection* part — which the callback logs as ``dev/...`` and uses to
    keep ``best/`` — and logs the *report* part's as ``dev_report/...`` itself. With
    ``eval.train_questions``, it also plays that fixed sample of training questions
    (``RUN/train_eval/``, logged as ``train_eval/...``): a policy that gains there and not on
    dev is learning its training questions, not the skill. With ``eval.samples``, the selection
    part is also played that many times sampled as GRPO samples (``RUN/dev/step-*.sampled-N.jsonl``):
    their mean chooses ``best/`` and the greedy figures are logged as ``dev_greedy/...``.
    """

    def __init__(self, config: AgentTrainConfig, run: Any, tool: SearchTool, questions: AgentSplit) -> None:
        self.config = config
        self.run = run
        self.tool = tool
        self.questions = questions
        self.episode_config = config.eval_episode_config()
        self.run_info = {"model": config.model, "retriever": config.tool.model_dump(mode="json")}

    def done(self, step: int) -> bool:
        key = "dev/" + self.config.eval.metric
        return any(key in r and int(r["step"]) == step for r in self.run.read_metrics())

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        from searchrl.agent.evaluate import summarize

        report = _play_dev(
            model, tokenizer, self.tool, self.questions.dev, self.episode_config,
            out_path=self.run.path / "dev" / f"step-{step:06d}.jsonl",
            batch_size=self.config.eval.batch_size, run_info=self.run_info,
        )
        by_id = {r["question_id"]: r for r in report.records}
        if self.questions.report:
            reported = summarize([by_id[e.id] for e in self.questions.report])
            self.run.log_metrics(step, _numbers(reported), prefix="dev_report/")
        selection = _numbers(summarize([by_id[e.id] for e in self.questions.select]))
        if samples := self.config.eval.samples:
            from searchrl.agent.recipe import sampled_copies

            self.run.log_metrics(step, selection, prefix="dev_greedy/")
            sampled = _play_dev(
                model, tokenizer, self.tool, sampled_copies(self.questions.select, samples),
                self.config.rollout_episode_config(),
                out_path=self.run.path / "dev" / f"step-{step:06d}.sampled-{samples}.jsonl",
                batch_size=self.config.eval.batch_size, run_info={**self.run_info, "samples": samples},
            )
            selection = _numbers(sampled.metrics)
        if self.questions.train_eval:
            fit = _play_dev(
                model, tokenizer, self.tool, self.questions.train_eval, self.episode_config,
                out_path=self.run.path / "train_eval" / f"step-{step:06d}.jsonl",
                batch_size=self.config.eval.batch_size, run_info=self.run_info,
            )
            self.run.log_metrics(step, _numbers(fit.metrics), prefix="train_eval/")
        return selection


# ----------------------------------------------------------------------------------------
# The GRPO trainer


def build_trainer(
    config: AgentTrainConfig, run: Any, model: Any, tokenizer: Any, tool: SearchTool,
    train: Sequence[QAExample], evaluation: DevEvaluation,
):
    """TRL's ``GRPOTrainer`` with the agent's rollout function, rewards and dev-evaluation callback."""
    from datasets import Dataset

    from searchrl.training import (
        DevEvaluationCallback,
        ReleaseMemoryCallback,
        RunLoggingCallback,
        quiet_trainer,
        resolve_device,
    )
    from searchrl.training.trainer import grpo_trainer_class

    functions, weights = build_reward_functions(config.reward_weights(), judge=_judge(config))
    grpo = config.grpo
    credit = grpo.answer_credit == "answer_terms"
    answer_funcs = answer_reward_funcs(config.reward_weights()) if credit else []
    if credit and not answer_funcs:
        raise ConfigError("grpo.answer_credit: answer_terms needs a reward term that scores the answer",
                          hint="give rewards.correctness a weight, or use answer_credit: all_terms")
    baseline = grpo.answer_credit == "context_baseline"
    later_funcs, outcome_func = later_turn_reward_funcs(config.reward_weights()) if grpo.later_turn_credit else ([], None)
    rollout = AgentRollout(tool, train, config.rollout_episode_config(), run=run,
                           generation_batch_size=grpo.generation_batch_size, train_answer_text=grpo.train_answer_text,
                           answer_credit=credit, answer_samples=grpo.answer_samples if baseline else 0,
                           answer_metric=config.rewards.metric, greedy_member=grpo.greedy_member)
    dev_callback = DevEvaluationCallback(
        run, evaluation, metric=config.eval.metric, every=config.eval.every,
        patience=config.eval.patience, evaluate_at_start=config.eval.at_start, min_delta=config.eval.min_delta,
    )
    with warnings.catch_warnings():
        # rollout_func is experimental in TRL; the version is pinned for exactly that reason.
        warnings.filterwarnings("ignore", message=".*rollout_func.*experimental")
        trainer = grpo_trainer_class()(
            model=model,
            reward_funcs=functions,
            args=grpo_arguments(config, run.checkpoints_dir, resolve_device(config.device), weights),
            train_dataset=Dataset.from_list(agent_dataset_rows(train, config.episode.system_prompt)),
            processing_class=tokenizer,
            callbacks=[RunLoggingCallback(run), dev_callback, ReleaseMemoryCallback()],
            rollout_func=rollout,
            answer_reward_funcs=answer_funcs,
            answer_advantage_floor=grpo.answer_advantage_floor,
            later_turn_funcs=later_funcs,
            first_outcome_func=outcome_func,
            **grpo.trainer_options(),
        )
    return quiet_trainer(trainer, "GRPO")  # the same logs go to metrics.jsonl and TensorBoard


def grpo_arguments(config: AgentTrainConfig, output_dir: Path, device: str, reward_weights: list[float]):
    """TRL's ``GRPOConfig`` for ``config.grpo`` (one generation batch = one RL step)."""
    from searchrl.training import build_grpo_config

    grpo = config.grpo
    extra = {"reward_weights": reward_weights, "mask_truncated_completions": grpo.mask_truncated_completions}
    extra.update(grpo.extra)
    options = grpo.trl_options() | {"max_steps": max(grpo.steps, 1)}
    return build_grpo_config(
        output_dir=output_dir,
        **options,
        prompts_per_step=grpo.prompts_per_step,
        max_completion_length=config.episode.max_model_tokens,
        loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        shuffle_dataset=grpo.shuffle,
        seed=config.seed,
        device=device,
        extra=extra,
    )


def _judge(config: AgentTrainConfig):
    if config.rewards.metric != "judge":
        return None
    from searchrl.agent.judge import LLMJudge
    from searchrl.llm import build_engine

    return LLMJudge(build_engine("transformers", model=config.judge_model), policy_model=config.model)


# ----------------------------------------------------------------------------------------
# The report


def write_agent_report(
    config: AgentTrainConfig, run: Any, questions: AgentSplit, sft_summary: dict[str, Any] | None, *, seconds: float
) -> None:
    """``report.md``: data, rewards, warm-start, every dev evaluation (selection and report part), best/."""
    metric = config.eval.metric
    records = run.read_metrics()
    sections: dict[str, Any] = {
        "Data": {
            "train questions": len(questions.train),
            "dev questions choosing best/ (selection part)": len(questions.select),
            "dev questions only reported (report part)": len(questions.report),
            "training questions replayed at each evaluation (train f1)": len(questions.train_eval),
            "split": str(config.data.split_dir or run.path / "split"),
        },
        "Rewards": {**config.reward_weights().model_dump(), "retry_reward": config.retry_reward},
        "Loss": {k: getattr(config.grpo, k) for k in ("preset", "loss_type", "scale_rewards", "beta", "max_grad_norm",
                                                         "learning_rate", "temperature", "num_generations",
                                                         "prompts_per_step")},
        "Wall time (this invocation, s)": f"{seconds:.0f}",
    }
    if sft_summary is not None:
        sections["Warm-start"] = {k: v for k, v in sft_summary.items() if not isinstance(v, dict)} | sft_summary["transcripts"]
    reported = {int(r["step"]): r for r in records if f"dev_report/{metric}" in r}
    fit = {int(r["step"]): r for r in records if "train_eval/f1" in r}
    rows = [r for r in records if f"dev/{metric}" in r]
    if rows:
        def cell(record: dict | None, key: str) -> str:
            value = None if record is None else record.get(key)
            return "-" if value is None else f"{value:.3f}"

        # With eval.samples the selection columns are sampled means, and the greedy f1 of the same questions sits beside them.
        greedy = {int(r["step"]): r for r in records if "dev_greedy/f1" in r}
        sampled = f" ({config.eval.samples} sampled)" if config.eval.samples else ""
        header = [f"select em{sampled}", f"select f1{sampled}", *(["select greedy f1"] if greedy else []),
                  "report em", "report f1", "train f1", "searches/episode", "retries/episode"]

        def greedy_cell(step: int) -> str:
            return f"{cell(greedy.get(step), 'dev_greedy/f1')} | " if greedy else ""

        sections["Dev evaluations" if sampled else "Dev evaluations (greedy)"] = "\n".join(
            ["| step | " + " | ".join(header) + " |", "| --- " * (len(header) + 1) + "|"]
            + [f"| {r['step']} | {cell(r, 'dev/em')} | {cell(r, 'dev/f1')} | {greedy_cell(int(r['step']))}"
               f"{cell(reported.get(int(r['step'])), 'dev_report/em')} "
               f"| {cell(reported.get(int(r['step'])), 'dev_report/f1')} | {cell(fit.get(int(r['step'])), 'train_eval/f1')} "
               f"| {cell(r, 'dev/searches_per_episode')} | {cell(r, 'dev/retries_per_episode')} |" for r in rows]
        )
    best = run.best()
    if best is not None:
        start = "the policy GRPO started from (the warm-start): no GRPO step beat it" if int(best["step"]) == 0 else f"GRPO step {best['step']}"
        note = f"best/ holds {start}, chosen on the selection part ({metric} {best['value']:.3f}, {config.eval.chosen_by})."
        if int(best["step"]) in reported:
            note += f" On the report part, which took no part in choosing it: {metric} {reported[int(best['step'])][f'dev_report/{metric}']:.3f}."
        sections["Selection"] = note
    run.write_report("Search agent training", sections)


__all__ = [
    "AgentDataConfig",
    "AgentRollout",
    "AgentSplit",
    "AgentTrainConfig",
    "DevEvalSettings",
    "DevEvaluation",
    "GRPOSettings",
    "TrainerVLLMPolicy",
    "agent_dataset_rows",
    "build_tool",
    "build_trainer",
    "evaluate_on_dev",
    "grpo_arguments",
    "input_files",
    "load_agent_config",
    "load_policy_model",
    "rollout_statistics",
    "run_agent_training",
    "split_questions",
    "train_agent",
    "train_agent_from_yaml",
    "trainer_policy",
    "warm_start",
    "write_agent_report",
]
