"""A TRL ``GRPOConfig`` from searchrl's settings: one generation batch is one RL step."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from searchrl.errors import ConfigError
from searchrl.training.policy import resolve_device


class GRPOSettings(BaseModel):
    """The GRPO knobs of both trainers, under the names TRL's ``GRPOConfig`` gives them.

    The co-augmentation and agent configs each carry a ``grpo:`` section of this shape (the
    agent's adds its loss preset and rollout options), so the same knob has the same key in
    both; :meth:`trl_options` hands them to :func:`build_grpo_config`.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=0, description="RL steps")
    num_generations: int = Field(4, ge=2, description="samples per prompt (the GRPO group)")
    micro_batch_size: int | None = Field(None, ge=1, description="completions per forward/backward pass")
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts (also used in the loss)")
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="KL coefficient to the starting policy (0: no reference model)")
    epsilon: float = Field(0.2, ge=0, description="clip low: ratio >= 1 - epsilon")
    epsilon_high: float | None = Field(0.28, ge=0, description="clip high: ratio <= 1 + epsilon_high")
    num_iterations: int = Field(1, ge=1, description="passes over each generated batch")
    gradient_checkpointing: bool = False
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (the resume point)")
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept")
    use_vllm: bool | Literal["auto"] = Field(
        "auto", description="generate with vLLM (auto: on a GPU when vllm is installed)"
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="colocate: vLLM shares the training GPU; server: a separate `trl vllm-serve` process "
        "(other GPUs of the node) generates and receives the weights after every step",
    )
    vllm_server_base_url: str | None = Field(None, description="server mode: the server's URL (overrides host/port)")
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = Field(8000, ge=1, le=65535)
    vllm_server_timeout: float = Field(240.0, gt=0, description="server mode: seconds to wait for the server")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="colocate mode: vLLM's share of GPU memory")
    share_prompt: bool = Field(
        True, description="score each distinct prompt of a micro-batch once and run its completions on its kept "
        "keys and values (same numbers as the full pass; see searchrl.training.trainer)"
    )
    merge_lora_for_generation: bool = Field(
        True, description="sample with the LoRA adapter merged into the base weights (restored exactly afterwards)"
    )
    score_loss_tokens_only: bool = Field(
        True, description="project onto the vocabulary only the positions the loss reads (no padding, no search "
        "results) and cut each micro-batch after its longest sequence (same numbers; see searchrl.training.trainer)"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to TRL's GRPOConfig as is")

    def trl_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`build_grpo_config` for these settings (its names are the fields'; ``steps``
        is ``max_steps``; ``extra`` is the caller's to merge; a subclass's own fields are left out)."""
        shared = [name for name in GRPOSettings.model_fields if name not in ("steps", "extra", *TRAINER_OPTIONS)]
        return {"max_steps": self.steps, **{name: getattr(self, name) for name in shared}}

    def trainer_options(self) -> dict[str, Any]:
        """Keyword arguments of the trainer class of :func:`searchrl.training.trainer.grpo_trainer_class`."""
        return {name: getattr(self, name) for name in TRAINER_OPTIONS}


#: GRPOSettings fields that are options of searchrl's trainer class, not of TRL's GRPOConfig.
TRAINER_OPTIONS = ("share_prompt", "merge_lora_for_generation", "score_loss_tokens_only")


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
    vllm_mode: Literal["colocate", "server"] = "colocate",
    vllm_server_base_url: str | None = None,
    vllm_server_host: str = "0.0.0.0",
    vllm_server_port: int = 8000,
    vllm_server_timeout: float = 240.0,
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

    CPU: ``use_cpu=True``. GPU: bf16 when supported; vLLM when ``use_vllm`` is ``True`` or
    ``"auto"`` and vLLM is installed, in ``vllm_mode`` ``"colocate"`` (one engine per training
    process, sharing its GPU) or ``"server"`` (TRL's client to a ``trl vllm-serve`` process on
    other GPUs, which receives the weights after every step). ``extra`` is passed through to
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
    if vllm_mode == "server" and not want_vllm:
        raise ConfigError(
            "vllm_mode 'server' needs vLLM", hint="set grpo.use_vllm: true (or auto on a GPU with vllm installed)"
        )
    if want_vllm:
        options.update(use_vllm=True, vllm_mode=vllm_mode)
        if vllm_mode == "server":
            options.update(
                vllm_server_base_url=vllm_server_base_url,
                vllm_server_host=vllm_server_host,
                vllm_server_port=vllm_server_port,
                vllm_server_timeout=vllm_server_timeout,
            )
        else:
            options.update(vllm_gpu_memory_utilization=vllm_gpu_memory_utilization)
    options.update(extra or {})
    try:
        return GRPOConfig(**options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid GRPO settings: {err}") from None
