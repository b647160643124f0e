"""GRPO training of the search agent with TRL's ``GRPOTrainer`` and a multi-turn ``rollout_func``.

One run directory (see :mod:`searchrl.runs`) holds everything::

    RUN/split/            chunk-disjoint train.jsonl / dev.jsonl (made once, reused on resume)
    RUN/sft/              optional warm-start: transcripts, adapter/, sft.json (done marker)
    RUN/checkpoints/      GRPO checkpoints, resumed from after an interruption
    RUN/dev/              dev transcripts of every evaluation (step-000010.jsonl, ...)
    RUN/best/, best.json  the adapter with the best dev score (early stopping on a held-out set)
    RUN/final/            the adapter after the last step
    RUN/metrics.jsonl     trainer logs, rollout statistics, dev metrics

Rollouts: TRL's sampler already repeats every prompt ``num_generations`` times, so the
``rollout_func`` plays exactly one episode per prompt it receives — ``num_generations`` episodes
per question — with :func:`~searchrl.agent.episode.run_episodes` and the trainer's *current*
policy: on CPU (or GPU without vLLM) through ``transformers`` generation on the trainer's model
itself; with ``use_vllm`` through the vLLM engine TRL colocates and keeps in sync with the
trained weights (``trainer.vllm_generation.llm``). Completions are the whole multi-turn
continuation after the prompt; ``env_mask`` is 0 on search results and inserted template tokens,
so only model-written tokens (and the end-of-turn tokens that close its turns) get gradient.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import TrainerCallback

from searchrl.agent.episode import EpisodeConfig, EnginePolicy, TurnOutput, rollout_batch, run_episodes
from searchrl.agent.protocol import SYSTEM_PROMPT, user_prompt
from searchrl.agent.rewards import RewardWeights, build_reward_functions
from searchrl.agent.sft import SFTConfig, run_sft_stage, sft_adapter_dir, sft_finished
from searchrl.agent.splits import make_split
from searchrl.agent.tool import SearchTool, SearchToolConfig, build_search_tool
from searchrl.config import load_config
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, DataError, ModelError
from searchrl.llm.engine import SamplingParams
from searchrl.llm.precision import Precision
from searchrl.progress import progress_bar
from searchrl.resolver import DEFAULT_LLM
from searchrl.training import LoraSettings

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Configuration


class AgentDataConfig(BaseModel):
    """The QA set, its corpus and the chunk-disjoint split (default: Apollo 13 from the shared data)."""

    model_config = ConfigDict(extra="forbid")

    questions: Path | None = Field(None, description="QA JSONL; default $SEARCHRL_DATA/apollo13/questions.jsonl")
    corpus: Path | None = Field(None, description="corpus JSONL (_id, title, text); default the Apollo 13 chunks")
    split_dir: Path | None = Field(None, description="existing split (train.jsonl, dev.jsonl); default RUN/split")
    dev_size: int | None = Field(40, ge=1, description="dev questions (None: use dev_fraction)")
    dev_fraction: float = Field(0.15, gt=0, lt=1)
    split_seed: int = 0
    max_train_questions: int | None = Field(None, ge=1, description="use only the first N training questions")

    def resolved(self) -> "AgentDataConfig":
        from searchrl.paths import shared_data_dir

        apollo = shared_data_dir() / "apollo13"
        return self.model_copy(
            update={
                "questions": Path(self.questions or apollo / "questions.jsonl").expanduser(),
                "corpus": Path(self.corpus or apollo / "corpus.jsonl").expanduser(),
            }
        )


class GRPOSettings(BaseModel):
    """The RL stage; see :func:`searchrl.training.build_grpo_config` for the batch layout."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=0, description="RL steps (0: only the warm-start and evaluation)")
    prompts_per_step: int = Field(2, ge=1, description="questions per step")
    num_generations: int = Field(4, ge=2, description="episodes per question (the GRPO group)")
    micro_batch_size: int | None = Field(None, ge=1, description="completions per forward/backward pass")
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts (also used in the loss)")
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="KL weight; 0 keeps no reference model")
    epsilon: float = 0.2
    epsilon_high: float | None = 0.28
    loss_type: str = "dapo"
    scale_rewards: str = "none"
    num_iterations: int = Field(1, ge=1)
    mask_truncated_completions: bool = False
    shuffle: bool = True
    save_steps: int = Field(5, ge=1)
    save_total_limit: int | None = 2
    use_vllm: bool | Literal["auto"] = "auto"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    generation_batch_size: int = Field(16, ge=1, description="sequences per transformers generate call")
    max_minutes: float | None = Field(None, gt=0, description="stop (and save) once this invocation ran this long")
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to GRPOConfig as is")


class DevEvalSettings(BaseModel):
    """Periodic dev evaluation (greedy episodes) and best-checkpoint keeping."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(5, ge=1, description="evaluate every N RL steps (and before the first, and after the last)")
    metric: Literal["em", "f1"] = "f1"
    patience: int | None = Field(None, ge=1, description="stop after N evaluations without improvement")
    max_questions: int | None = Field(None, ge=1, description="evaluate on the first N dev questions only")
    batch_size: int = Field(20, ge=1)
    at_start: bool = Field(True, description="also evaluate the policy before the first RL step")


class AgentTrainConfig(BaseModel):
    """Everything one agent training run needs; stored as ``config.yaml`` in the run directory."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_LLM, description="policy: a name, folder or .gguf (see searchrl.resolver)")
    init_adapter: Path | None = Field(None, description="start from this LoRA adapter (e.g. another run's sft/adapter)")
    output_dir: Path = Path("runs/agent")
    wandb_project: str | None = Field(None, description="also log metrics to this Weights & Biases project")
    device: str = "auto"
    precision: Precision = Field(
        "auto", description="policy weights: bf16 where the hardware multiplies it natively (see searchrl.llm.precision)"
    )
    seed: int = 0
    data: AgentDataConfig = Field(default_factory=AgentDataConfig)
    tool: SearchToolConfig = Field(default_factory=lambda: SearchToolConfig(k=3))
    episode: EpisodeConfig = Field(
        default_factory=lambda: EpisodeConfig(max_turns=4, max_model_tokens=384, max_turn_tokens=128)
    )
    rewards: RewardWeights = Field(default_factory=RewardWeights)
    retry_reward: bool = Field(True, description="false: drop the retry reward (ReZero's ablation)")
    judge_model: str | None = Field(None, description="judge model when rewards.metric is 'judge'")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: SFTConfig = Field(default_factory=lambda: SFTConfig(enabled=False))
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)
    eval: DevEvalSettings = Field(default_factory=DevEvalSettings)

    @model_validator(mode="after")
    def _check(self) -> "AgentTrainConfig":
        if self.rewards.metric == "judge" and not self.judge_model:
            raise ValueError("rewards.metric 'judge' needs judge_model (a fixed model other than the policy)")
        if not self.lora.enabled and (self.sft.enabled or self.init_adapter is not None):
            raise ValueError("the warm-start and init_adapter produce LoRA adapters: keep lora.enabled true")
        return self

    def reward_weights(self) -> RewardWeights:
        """The reward weights in effect (retry weight 0 when ``retry_reward`` is false)."""
        return self.rewards if self.retry_reward else self.rewards.model_copy(update={"retry": 0.0})

    def rollout_episode_config(self) -> EpisodeConfig:
        """Episode settings of RL rollouts: sampled at the GRPO temperature the loss also uses."""
        return self.episode.model_copy(
            update={"temperature": self.grpo.temperature, "top_p": self.grpo.top_p, "seed": self.seed}
        )

    def eval_episode_config(self) -> EpisodeConfig:
        """Episode settings of dev evaluation: greedy."""
        return self.episode.model_copy(update={"temperature": 0.0, "top_p": 1.0, "seed": self.seed})


def load_agent_config(config_path: str | Path | None, overrides: Sequence[str] | None = None) -> AgentTrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate."""
    return load_config(AgentTrainConfig, config_path, list(overrides or []))


# ----------------------------------------------------------------------------------------
# Data


def agent_dataset_rows(examples: Sequence[QAExample], system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """Rows of the GRPO training set: the opening chat as ``prompt`` plus the reward columns."""
    return [
        {
            "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt(e.question)}],
            "question_id": e.id,
            "question": e.question,
            "answers": list(e.answers),
            "gold_ids": list(e.gold_ids),
        }
        for e in examples
    ]


def _prompt_key(prompt: Any) -> str:
    """The lookup key of a dataset prompt: the content of its last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise DataError("a rollout prompt has no user message", hint="rows must come from agent_dataset_rows()")
    return users[-1]


# ----------------------------------------------------------------------------------------
# Policies over the trainer's model


class TrainerVLLMPolicy:
    """Turn generation with the vLLM engine TRL colocates (``vllm_mode="colocate"``).

    TRL pushes the trained weights into this engine before every rollout, so episodes sample
    from the current policy. Sampled-token log-probabilities come back with the tokens, which
    TRL uses for its vLLM importance-sampling correction.
    """

    def __init__(self, trainer: Any) -> None:
        generation = getattr(trainer, "vllm_generation", None)
        if generation is None or getattr(generation, "mode", None) != "colocate":
            raise ConfigError("vLLM rollouts need vllm_mode 'colocate'", hint="set grpo.use_vllm: false to use transformers")
        if getattr(generation, "enable_sleep_mode", False):
            raise ConfigError("vLLM sleep mode is not supported by agent rollouts", hint="leave vllm_enable_sleep_mode off")
        if getattr(generation, "tensor_parallel_size", 1) > 1:
            raise ConfigError("agent rollouts support vLLM tensor_parallel_size 1 only")
        self.llm = generation.llm
        self.tokenizer = trainer.processing_class
        config = trainer.accelerator.unwrap_model(trainer.model).config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)

    def generate_turns(self, token_id_lists: Sequence[Sequence[int]], params: SamplingParams) -> list[TurnOutput]:
        from vllm import SamplingParams as VLLMSamplingParams

        sampling = VLLMSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            logprobs=0,
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in token_id_lists], sampling_params=sampling, use_tqdm=False
        )
        turns = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids)]
            if completion.finish_reason == "length":
                finish = "length"
            elif isinstance(completion.stop_reason, str):
                finish = "stop"
            else:
                finish = "eos"
            turns.append(TurnOutput(ids, completion.text, logprobs, finish))  # type: ignore[arg-type]
        return turns


def trainer_policy(trainer: Any, *, batch_size: int = 16) -> Any:
    """The episode policy that samples from the trainer's current model (vLLM when TRL runs it)."""
    if getattr(trainer, "use_vllm", False):
        return TrainerVLLMPolicy(trainer)
    from searchrl.llm.transformers_engine import TransformersEngine

    model = trainer.accelerator.unwrap_model(trainer.model)
    engine = TransformersEngine.from_model(model, trainer.processing_class, batch_size=batch_size)
    # Without vLLM the sampler *is* the trained model, so TRL's own log-probabilities are exact
    # and the extra scoring pass is skipped.
    return EnginePolicy(engine, logprobs=False)


# ----------------------------------------------------------------------------------------
# The rollout function


class AgentRollout:
    """``rollout_func`` for TRL's ``GRPOTrainer``: one search episode per received prompt.

    ``examples`` are the training questions; prompts are matched to them by their user
    message. Returns ``prompt_ids``, ``completion_ids``, ``env_mask``, ``logprobs`` and the
    ``episode`` records (read by the reward functions). Rollout statistics (searches, answers,
    finish reasons) go to ``run`` when one is given.

    ``policy_factory(trainer)`` builds the policy; the default samples from the trainer's model.
    """

    def __init__(
        self,
        tool: SearchTool,
        examples: Sequence[QAExample],
        episode_config: EpisodeConfig,
        *,
        run: Any = None,
        policy_factory: Any = None,
        generation_batch_size: int = 16,
    ) -> None:
        self.tool = tool
        self.by_prompt = {user_prompt(e.question): e for e in examples}
        if len(self.by_prompt) != len(examples):
            raise DataError("two training questions have the same text", hint="remove duplicate questions")
        self.episode_config = episode_config
        self.run = run
        self.policy_factory = policy_factory or (lambda trainer: trainer_policy(trainer, batch_size=generation_batch_size))
        self.last_episodes: list = []

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        import torch

        try:
            examples = [self.by_prompt[_prompt_key(p)] for p in prompts]
        except KeyError as err:
            raise DataError(f"rollout prompt not in the training set: {err}") from None
        step = int(trainer.state.global_step)
        # A different seed every step: the engine seeds its sampler per call, and the same seed
        # each step would replay the same random numbers.
        config = self.episode_config.model_copy(update={"seed": self.episode_config.seed + 10_007 * (step + 1)})
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        try:
            with torch.no_grad():
                episodes = run_episodes(self.policy_factory(trainer), self.tool, examples, config, step=step)
        finally:
            if was_training:
                model.train()
        self.last_episodes = episodes
        if self.run is not None and getattr(trainer, "accelerator", None) is not None and trainer.accelerator.is_main_process:
            self.run.log_metrics(step + 1, rollout_statistics(episodes, time.perf_counter() - started), prefix="rollout/")
        return rollout_batch(episodes)


def rollout_statistics(episodes: Sequence[Any], seconds: float | None = None) -> dict[str, float]:
    """Means over a batch of episodes: searches, turns, answered and tool-error rates, tokens."""
    n = max(len(episodes), 1)
    stats = {
        "episodes": float(len(episodes)),
        "searches_per_episode": sum(e.num_searches for e in episodes) / n,
        "retry_rate": sum(e.num_searches > 1 for e in episodes) / n,
        "answered_rate": sum(e.finish_reason == "answered" for e in episodes) / n,
        "tool_error_rate": sum(e.finish_reason == "tool_error" for e in episodes) / n,
        "turns_per_episode": sum(e.num_turns for e in episodes) / n,
        "model_tokens_per_episode": sum(e.num_model_tokens for e in episodes) / n,
        "completion_tokens_per_episode": sum(len(e.completion_ids) for e in episodes) / n,
    }
    if seconds is not None:
        stats["seconds"] = seconds
    return stats


# ----------------------------------------------------------------------------------------
# Dev evaluation


def evaluate_on_dev(
    model: Any,
    tokenizer: Any,
    tool: SearchTool,
    dev: Sequence[QAExample],
    episode_config: EpisodeConfig,
    *,
    out_path: str | Path | None = None,
    batch_size: int = 20,
    run_info: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Greedy episodes on ``dev`` with ``model``; numeric metrics (em, f1, searches_per_episode, ...)."""
    import torch

    from searchrl.agent.evaluate import evaluate_agent
    from searchrl.llm.transformers_engine import TransformersEngine

    engine = TransformersEngine.from_model(model, tokenizer, batch_size=batch_size)
    policy = EnginePolicy(engine, logprobs=False)
    with torch.no_grad():
        report = evaluate_agent(
            policy,
            tool,
            list(dev),
            episode_config,
            out_path=out_path,
            batch_size=batch_size,
            run_info=dict(run_info or {}),
            overwrite=True,
            show_progress=False,
        )
    return {k: float(v) for k, v in report.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------------------
# Models


def load_policy_model(config: AgentTrainConfig, adapter: Path | None, device: str):
    """``(model, tokenizer)``: the base model with a trainable LoRA adapter (new or loaded)."""
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
# The run


def _split(config: AgentTrainConfig, run_path: Path):
    data = config.data
    split_dir = data.split_dir or run_path / "split"
    split = make_split(
        data.questions, split_dir, dev_fraction=data.dev_fraction, dev_size=data.dev_size, seed=data.split_seed
    )
    train = split.train[: data.max_train_questions] if data.max_train_questions else split.train
    dev = split.dev[: config.eval.max_questions] if config.eval.max_questions else split.dev
    return train, dev


def build_tool(config: AgentTrainConfig) -> SearchTool:
    """Index the configured corpus (plus any distractors) for the search tool."""
    from searchrl.data.beir import load_corpus

    corpus = load_corpus(config.data.corpus)
    return build_search_tool(corpus, config.tool)


class _TimeLimitCallback(TrainerCallback):
    """Stop training, with a checkpoint, after the step that crosses a wall-time budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.started >= self.seconds:
            log.info("time budget of %.0f s reached at step %d", self.seconds, state.global_step)
            control.should_training_stop = True
            control.should_save = True
        return control


class _ProgressCallback(TrainerCallback):
    """Advance a :func:`searchrl.progress.progress_bar` once per RL step (resumed steps included)."""

    def __init__(self, advance) -> None:
        self.advance = advance

    def on_train_begin(self, args, state, control, **kwargs):
        self.advance(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.advance()


def _judge(config: AgentTrainConfig):
    if config.rewards.metric != "judge":
        return None
    from searchrl.agent.judge import LLMJudge
    from searchrl.llm import build_engine

    return LLMJudge(build_engine("transformers", model=config.judge_model), policy_model=config.model)


def run_agent_training(
    config_path: str | Path | None, overrides: Sequence[str] | None = None, *, force: bool = False
) -> Path:
    """Train the search agent as configured; returns the run directory.

    Stages, each skipped when already done so that rerunning the same command resumes:
    split → optional supervised warm-start (``sft.enabled``) → GRPO with periodic dev
    evaluation, best-checkpoint keeping and optional early stopping → final adapter and report.
    """
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from searchrl.runs import RunDirectory
    from searchrl.training import (
        DevEvaluationCallback,
        RunLoggingCallback,
        build_grpo_config,
        resolve_device,
        save_policy,
        train_with_resume,
    )

    config = load_agent_config(config_path, overrides)
    config = config.model_copy(update={"data": config.data.resolved()})
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    inputs = [config.data.questions, config.data.corpus]
    if config.tool.noise.distractors is not None:
        inputs.append(config.tool.noise.distractors)
    if config.init_adapter is not None:
        inputs.append(config.init_adapter)
    run = RunDirectory.create_or_resume(
        config.output_dir, config, input_files=inputs, force=force,
        mutable_keys=("grpo.steps", "grpo.max_minutes", "eval.patience", "wandb_project"),
    )
    if config.wandb_project:
        run.enable_wandb(config.wandb_project)
    started = time.perf_counter()
    train, dev = _split(config, run.path)
    tool = build_tool(config)
    run_info = {"model": config.model, "retriever": config.tool.model_dump(mode="json")}
    dev_config = config.eval_episode_config()

    # Stage 1: warm-start.
    adapter = config.init_adapter
    sft_summary = None
    if config.sft.enabled:
        stage = run.path / "sft"
        if not sft_finished(stage):
            model, tokenizer = load_policy_model(config, config.init_adapter, device)
            run_sft_stage(
                stage,
                model,
                tokenizer,
                tool,
                train,
                config.sft,
                config.episode,
            )
            del model
        adapter = sft_adapter_dir(stage)
        sft_summary = json.loads((stage / "sft.json").read_text(encoding="utf-8"))
        if not any("sft/loss_last" in r for r in run.read_metrics()):
            # Logged at step 0 so that resuming GRPO (which drops records after its checkpoint) keeps it.
            numbers = {k: v for k, v in sft_summary.items() if isinstance(v, (int, float))}
            run.log_metrics(0, numbers, prefix="sft/")

    model, tokenizer = load_policy_model(config, adapter, device)

    # Stage 2: GRPO.
    functions, weights = build_reward_functions(config.reward_weights(), judge=_judge(config))
    grpo = config.grpo
    extra = {"reward_weights": weights, "mask_truncated_completions": grpo.mask_truncated_completions}
    extra.update(grpo.extra)
    args = build_grpo_config(
        output_dir=run.checkpoints_dir,
        max_steps=max(grpo.steps, 1),
        num_generations=grpo.num_generations,
        prompts_per_step=grpo.prompts_per_step,
        micro_batch_size=grpo.micro_batch_size,
        num_iterations=grpo.num_iterations,
        learning_rate=grpo.learning_rate,
        lr_scheduler_type=grpo.lr_scheduler_type,
        warmup_steps=grpo.warmup_steps,
        max_grad_norm=grpo.max_grad_norm,
        max_completion_length=config.episode.max_model_tokens,
        temperature=grpo.temperature,
        top_p=grpo.top_p,
        beta=grpo.beta,
        epsilon=grpo.epsilon,
        epsilon_high=grpo.epsilon_high,
        loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        shuffle_dataset=grpo.shuffle,
        save_steps=grpo.save_steps,
        save_total_limit=grpo.save_total_limit,
        seed=config.seed,
        device=device,
        use_vllm=grpo.use_vllm,
        vllm_gpu_memory_utilization=grpo.vllm_gpu_memory_utilization,
        extra=extra,
    )
    rollout = AgentRollout(
        tool, train, config.rollout_episode_config(), run=run, generation_batch_size=grpo.generation_batch_size
    )

    def evaluate(model_, tokenizer_, step: int) -> dict[str, float]:
        return evaluate_on_dev(
            model_,
            tokenizer_,
            tool,
            dev,
            dev_config,
            out_path=run.path / "dev" / f"step-{step:06d}.jsonl",
            batch_size=config.eval.batch_size,
            run_info=run_info,
        )

    dev_callback = DevEvaluationCallback(
        run,
        evaluate,
        metric=config.eval.metric,
        every=config.eval.every,
        patience=config.eval.patience,
        evaluate_at_start=config.eval.at_start,
    )
    with warnings.catch_warnings():
        # rollout_func is experimental in TRL; the version is pinned for exactly that reason.
        warnings.filterwarnings("ignore", message=".*rollout_func.*experimental")
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=functions,
            args=args,
            train_dataset=Dataset.from_list(agent_dataset_rows(train, config.episode.system_prompt)),
            processing_class=tokenizer,
            callbacks=[RunLoggingCallback(run), dev_callback],
            rollout_func=rollout,
        )
    trainer.remove_callback(PrinterCallback)  # the same logs go to metrics.jsonl and TensorBoard
    if grpo.steps > 0:
        with progress_bar("GRPO", total=grpo.steps, unit="step") as advance:
            trainer.add_callback(_ProgressCallback(advance))
            if grpo.max_minutes is not None:
                trainer.add_callback(_TimeLimitCallback(60 * grpo.max_minutes))
            train_with_resume(trainer, run)
    else:  # evaluation of the warm-started (or untrained) policy only
        if not any("dev/" + config.eval.metric in r for r in run.read_metrics()):
            metrics = evaluate(model, tokenizer, 0)
            run.log_metrics(0, metrics, prefix="dev/")
            run.update_best(0, config.eval.metric, metrics[config.eval.metric], save=lambda d: save_policy(model, tokenizer, d))
    save_policy(trainer.model, tokenizer, run.path / "final")

    sections: dict[str, Any] = {
        "Data": {"train questions": len(train), "dev questions": len(dev), "split": str(config.data.split_dir or run.path / "split")},
        "Rewards": {**config.reward_weights().model_dump(), "retry_reward": config.retry_reward},
        "Wall time (this invocation, s)": f"{time.perf_counter() - started:.0f}",
    }
    if sft_summary is not None:
        sections["Warm-start"] = {k: v for k, v in sft_summary.items() if not isinstance(v, dict)} | sft_summary["transcripts"]
    dev_rows = [r for r in run.read_metrics() if "dev/" + config.eval.metric in r]
    if dev_rows:
        sections["Dev evaluations"] = "\n".join(
            ["| step | em | f1 | searches/episode |", "| --- | --- | --- | --- |"]
            + [
                f"| {r['step']} | {r.get('dev/em', float('nan')):.3f} | {r.get('dev/f1', float('nan')):.3f} "
                f"| {r.get('dev/searches_per_episode', float('nan')):.2f} |"
                for r in dev_rows
            ]
        )
    run.write_report("Search agent training", sections)
    run.close()
    return run.path


__all__ = [
    "AgentDataConfig",
    "AgentRollout",
    "AgentTrainConfig",
    "DevEvalSettings",
    "GRPOSettings",
    "TrainerVLLMPolicy",
    "agent_dataset_rows",
    "evaluate_on_dev",
    "load_agent_config",
    "load_policy_model",
    "rollout_statistics",
    "run_agent_training",
    "trainer_policy",
]
