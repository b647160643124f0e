"""GRPO glue shared by the co-augmentation and agent trainers.

* :class:`LoraSettings` / :func:`build_lora_config` — LoRA on by default, with the attention and
  MLP projections of Llama/Qwen/Mistral-style models as targets.
* :func:`build_grpo_config` — a TRL ``GRPOConfig`` from plain settings: CPU (``use_cpu``, fp32) or
  GPU (bf16, vLLM colocate when installed and wanted), batches laid out so one *generation batch*
  is one RL step, Dr.-GRPO advantages (``scale_rewards="none"``), asymmetric clip, token-mean loss.
* :class:`RunLoggingCallback` — the trainer's own logs (loss, reward, KL, clip ratios …) go to
  ``metrics.jsonl`` and TensorBoard of the :class:`~searchrl.runs.RunDirectory`.
* :class:`DevEvaluationCallback` — every N steps runs a dev-evaluation function on the current
  policy, logs it, keeps the best checkpoint in ``best/`` and stops early after ``patience``
  evaluations without improvement (GRPO runs tend to collapse after a few hundred steps).
* :func:`train_with_resume` — resumes from the last complete checkpoint in ``checkpoints/``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from transformers import TrainerCallback

from searchrl.errors import ConfigError
from searchrl.runs import RunDirectory

log = logging.getLogger(__name__)

#: LoRA targets for decoder-only models with Llama-style projection names (Llama, SmolLM2, Qwen2/2.5/3, Mistral).
LLAMA_STYLE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(BaseModel):
    """LoRA adapter settings; ``enabled: false`` means full fine-tuning."""

    model_config = {"extra": "forbid"}

    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; default: attention + MLP projections of Llama/Qwen models"
    )


def build_lora_config(settings: LoraSettings):
    """A ``peft.LoraConfig`` for causal-LM training, or ``None`` when LoRA is disabled."""
    if not settings.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules or list(LLAMA_STYLE_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )


def resolve_device(device: str = "auto") -> Literal["cpu", "cuda"]:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; explicit values are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no GPU is visible", hint="set device: cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
    return device  # type: ignore[return-value]


def load_policy(model: str | Path, *, device: str, precision: str = "auto"):
    """``(model, tokenizer)`` of a causal LM to train, in the number format of :mod:`searchrl.llm.precision`.

    ``model`` is a name, folder or ``.gguf`` (see :func:`searchrl.resolver.resolve_model`). The
    tokenizer gets a pad token (the end-of-sequence token when it has none) and must carry a
    chat template: every prompt of both trainers is a chat.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchrl.errors import ModelError
    from searchrl.llm.precision import torch_dtype
    from searchrl.resolver import resolve_model

    folder = resolve_model(str(model), kind="causal-lm")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        network = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(precision, device))
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load the policy model: {err}", path=folder, hint="is this a causal-LM folder?") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the policy model's tokenizer has no chat template", path=folder,
                         hint="use an instruction-tuned model")
    return network, tokenizer


def vllm_available() -> bool:
    """Whether the ``vllm`` package is importable (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def build_grpo_config(
    *,
    output_dir: str | Path,
    max_steps: int,
    num_generations: int,
    prompts_per_step: int,
    micro_batch_size: int | None = None,
    updates_per_step: int = 1,
    num_iterations: int = 1,
    learning_rate: float = 1e-5,
    lr_scheduler_type: str = "constant",
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    max_completion_length: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = 0.28,
    loss_type: str = "dapo",
    scale_rewards: str = "none",
    shuffle_dataset: bool = False,
    save_steps: int = 10,
    save_total_limit: int | None = 2,
    logging_steps: int = 1,
    seed: int = 0,
    device: str = "auto",
    use_vllm: bool | Literal["auto"] = "auto",
    vllm_gpu_memory_utilization: float = 0.3,
    gradient_checkpointing: bool = False,
    log_completions: bool = False,
    extra: Mapping[str, Any] | None = None,
):
    """A TRL ``GRPOConfig`` where one generation batch is one RL step of ``prompts_per_step`` prompts.

    Layout: ``generation_batch_size = prompts_per_step × num_generations`` completions are
    generated (and scored by one reward call) together; they are split into micro-batches of
    ``micro_batch_size`` completions and accumulated into ``updates_per_step`` optimiser updates.
    With ``updates_per_step=1`` (default) the trainer's ``global_step`` counts RL steps, so
    ``max_steps`` is the number of RL steps; otherwise ``max_steps`` counts optimiser updates.

    Defaults follow the co-augmentation recipe: group-centred advantages without std division
    (``scale_rewards="none"``), clip range [0.8, 1.28] (``epsilon=0.2, epsilon_high=0.28``),
    token-mean loss (``loss_type="dapo"``), no KL (``beta=0``), grad clip 1.0, constant LR.

    CPU: ``use_cpu=True``, fp32. GPU: bf16 when supported; vLLM in colocate mode when
    ``use_vllm`` is ``True`` or ``"auto"`` and vLLM is installed. ``extra`` is passed through to
    ``GRPOConfig`` last, for anything not covered here.
    """
    from trl import GRPOConfig

    resolved = resolve_device(device)
    batch = prompts_per_step * num_generations
    micro = micro_batch_size or batch
    if num_generations < 2:
        raise ConfigError("num_generations must be at least 2 (advantages are centred within each group)")
    if batch % micro != 0:
        raise ConfigError(
            f"micro_batch_size {micro} does not divide the {batch} completions of one step "
            f"({prompts_per_step} prompts × {num_generations} samples)",
            hint="pick a micro batch size that divides prompts_per_step × num_generations",
        )
    micro_batches = batch // micro
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    if micro_batches % processes != 0:
        raise ConfigError(
            f"the {micro_batches} micro-batches of one step cannot be shared by {processes} processes",
            hint="choose micro_batch_size so that prompts × samples / micro_batch_size is a multiple of the processes",
        )
    micro_batches //= processes
    if micro_batches % updates_per_step != 0:
        raise ConfigError(
            f"updates_per_step {updates_per_step} does not divide the {micro_batches} micro-batches of one step",
            hint="choose micro_batch_size and updates_per_step so that they divide the step evenly",
        )
    want_vllm = use_vllm is True or (use_vllm == "auto" and resolved == "cuda" and vllm_available())
    if want_vllm and resolved != "cuda":
        raise ConfigError("use_vllm needs a GPU", hint="set use_vllm: auto or false on CPU")
    if want_vllm and not vllm_available():
        raise ConfigError("use_vllm is set but vllm is not installed", hint="pip install 'searchrl[vllm]'")

    bf16 = False
    if resolved == "cuda":
        import torch

        bf16 = bool(torch.cuda.is_bf16_supported())

    options: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=micro_batches // updates_per_step,
        generation_batch_size=batch,
        num_generations=num_generations,
        num_iterations=num_iterations,
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        max_completion_length=max_completion_length,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        beta=beta,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        loss_type=loss_type,
        scale_rewards=scale_rewards,
        shuffle_dataset=shuffle_dataset,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        seed=seed,
        data_seed=seed,
        report_to=[],
        use_cpu=resolved == "cpu",
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        log_completions=log_completions,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if want_vllm:
        options.update(
            use_vllm=True,
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
        )
    options.update(extra or {})
    try:
        return GRPOConfig(**options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid GRPO settings: {err}") from None


# --------------------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------------------


class RunLoggingCallback(TrainerCallback):
    """Copy every trainer log (``loss``, ``reward``, ``kl``, ``clip_ratio/…``) into the run's metrics."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                self.run.log_metrics(state.global_step, numbers, prefix="train/")


class StepProgressCallback(TrainerCallback):
    """A progress bar over optimiser steps (rate and ETA on stderr) instead of transformers' log printing.

    Use with :func:`quiet_trainer`, which removes the printer that would dump every log dict to stdout.
    """

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self._stack = None
        self._advance = None

    def on_train_begin(self, args, state, control, **kwargs):
        from contextlib import ExitStack

        from searchrl.progress import progress_bar

        if not state.is_world_process_zero:
            return
        self._stack = ExitStack()
        self._advance = self._stack.enter_context(progress_bar(self.description, total=state.max_steps, unit="step"))
        if state.global_step:
            self._advance(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._advance is not None:
            self._advance(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self._stack is not None:
            self._stack.close()
            self._stack = self._advance = None


def quiet_trainer(trainer, description: str = "training"):
    """Swap transformers' stdout log printer / tqdm bar for :class:`StepProgressCallback`; returns ``trainer``.

    Metrics still reach ``metrics.jsonl`` through :class:`RunLoggingCallback`, and stdout stays
    free for a command's result.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepProgressCallback(description))
    return trainer


def save_policy(model, tokenizer, directory: str | Path) -> None:
    """Save the trained policy: the LoRA adapter only for PEFT models, else the full model; plus tokenizer.

    The folder loads with ``peft.AutoPeftModelForCausalLM`` / the transformers engine (adapter
    folders carry ``base_model_name_or_path``) or ``AutoModelForCausalLM`` for full models.
    """
    directory = Path(directory)
    unwrapped = getattr(model, "module", model)
    unwrapped.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


class DevEvaluationCallback(TrainerCallback):
    """Every ``every`` optimiser steps: ``metrics = evaluate(model, tokenizer, step)``, log, keep the best.

    ``metric`` names the key of the returned dict that decides the best checkpoint (higher is
    better unless ``higher_is_better=False``). The best policy is saved to ``run.best_dir`` with
    ``best.json`` recording metric, value and step. With ``patience`` set, training stops after
    that many consecutive evaluations without improvement; the count is rebuilt from
    ``metrics.jsonl`` on resume, so a kill does not reset it. ``evaluate_at_start`` also evaluates
    the untrained policy at step 0 (a baseline; never saved as best unless nothing beats it).
    """

    def __init__(
        self,
        run: RunDirectory,
        evaluate: Callable[[Any, Any, int], Mapping[str, float]],
        *,
        metric: str,
        every: int,
        patience: int | None = None,
        higher_is_better: bool = True,
        evaluate_at_start: bool = True,
        evaluate_at_end: bool = True,
        prefix: str = "dev/",
    ) -> None:
        if every < 1:
            raise ConfigError("eval_every must be at least 1")
        self.run = run
        self.evaluate = evaluate
        self.metric = metric
        self.every = every
        self.patience = patience
        self.higher_is_better = higher_is_better
        self.evaluate_at_start = evaluate_at_start
        self.evaluate_at_end = evaluate_at_end
        self.prefix = prefix
        self.last_evaluated_step: int | None = None

    # -- state rebuilt from disk ---------------------------------------------------------
    def _evaluations(self) -> list[tuple[int, float]]:
        key = self.prefix + self.metric
        return [(int(r["step"]), float(r[key])) for r in self.run.read_metrics() if key in r]

    def evaluations_without_improvement(self) -> int:
        """Evaluations logged after the best one (what ``patience`` is compared with)."""
        best = self.run.best()
        if best is None:
            return 0
        return sum(1 for step, _ in self._evaluations() if step > best["step"])

    # -- the evaluation ------------------------------------------------------------------
    def _run_evaluation(self, state, model, tokenizer) -> None:
        step = int(state.global_step)
        if self.last_evaluated_step == step or not state.is_world_process_zero:
            return
        self.last_evaluated_step = step
        was_training = model.training
        model.eval()
        try:
            metrics = dict(self.evaluate(model, tokenizer, step))
        finally:
            if was_training:
                model.train()
        if self.metric not in metrics:
            raise ConfigError(
                f"dev evaluation returned no {self.metric!r} (got {sorted(metrics)})",
                hint="the evaluation function must return the metric used to pick the best checkpoint",
            )
        self.run.log_metrics(step, metrics, prefix=self.prefix)
        improved = self.run.update_best(
            step,
            self.metric,
            float(metrics[self.metric]),
            save=lambda directory: save_policy(model, tokenizer, directory),
            higher_is_better=self.higher_is_better,
        )
        log.info("step %d: %s=%.4f%s", step, self.metric, metrics[self.metric], " (best)" if improved else "")

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.evaluate_at_start and state.global_step == 0 and not self._evaluations():
            self._run_evaluation(state, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step > 0 and state.global_step % self.every == 0:
            self._run_evaluation(state, model, processing_class)
            if self.patience is not None and self.evaluations_without_improvement() >= self.patience:
                log.info("early stop: %d evaluations without improvement", self.patience)
                control.should_training_stop = True
                control.should_save = True
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.evaluate_at_end and state.global_step > 0:
            evaluated = {step for step, _ in self._evaluations()}
            if state.global_step not in evaluated:
                self._run_evaluation(state, model, processing_class)


# --------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------


def train_with_resume(trainer, run: RunDirectory) -> Path | None:
    """``trainer.train()``, resuming from ``run``'s last complete checkpoint when there is one.

    Metrics logged after that checkpoint (by a run that was killed before its next save) are
    dropped first, so ``metrics.jsonl`` stays one consistent history. Returns the checkpoint
    resumed from, or ``None`` for a fresh start.
    """
    checkpoint = run.last_checkpoint()
    if checkpoint is not None:
        from searchrl.runs import checkpoint_step

        step = checkpoint_step(checkpoint) or 0
        _drop_metrics_after(run, step)
        log.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return checkpoint


def _drop_metrics_after(run: RunDirectory, step: int) -> None:
    records = run.read_metrics()
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) != len(records):
        import json

        run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


__all__ = [
    "DevEvaluationCallback",
    "load_policy",
    "LLAMA_STYLE_TARGETS",
    "LoraSettings",
    "RunLoggingCallback",
    "build_grpo_config",
    "build_lora_config",
    "resolve_device",
    "quiet_trainer",
    "save_policy",
    "StepProgressCallback",
    "train_with_resume",
    "vllm_available",
]
