"""What both trainers share, one module per job:

* :mod:`~searchrl.training.policy` — :class:`LoraSettings` / :func:`build_lora_config` (LoRA on by
  default, attention and MLP projections of Llama/Qwen/Mistral-style models), :func:`resolve_device`,
  :func:`load_policy` (one dtype rule, :mod:`searchrl.llm.precision`) and :func:`save_policy`.
* :mod:`~searchrl.training.grpo` — :class:`GRPOSettings`, the GRPO knobs both configs carry under
  TRL's own names, and :func:`build_grpo_config`, a TRL ``GRPOConfig`` whose generation batch is
  one RL step (CPU or GPU; vLLM colocated or as a ``trl vllm-serve`` server).
* :mod:`~searchrl.training.trainer` — :func:`grpo_trainer_class`, TRL's ``GRPOTrainer`` that samples
  with the LoRA adapter merged (:func:`merged_lora`), keeps each prompt's samples in one micro-batch
  and scores its prompt once (:func:`shared_prompt_logprobs`), and projects onto the vocabulary only
  the positions the loss reads (:func:`completion_logprobs`): the same numbers, fewer operations.
* :mod:`~searchrl.training.callbacks` — the trainer's logs into ``metrics.jsonl``
  (:class:`RunLoggingCallback`), one progress display (:class:`StepProgressCallback`: a bar on a
  terminal, one line per step otherwise), dev evaluation with best-checkpoint keeping and
  early stopping (:class:`DevEvaluationCallback`), a wall-time budget and memory release.
* :mod:`~searchrl.training.resume` — :func:`train_with_resume` from the last complete checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchrl.lazy import lazy_exports

_LAZY_EXPORTS: dict[str, str] = {
    "DevEvaluationCallback": "searchrl.training.callbacks",
    "ReleaseMemoryCallback": "searchrl.training.callbacks",
    "RunLoggingCallback": "searchrl.training.callbacks",
    "StepProgressCallback": "searchrl.training.callbacks",
    "TimeLimitCallback": "searchrl.training.callbacks",
    "quiet_trainer": "searchrl.training.callbacks",
    "GRPOSettings": "searchrl.training.grpo",
    "build_grpo_config": "searchrl.training.grpo",
    "vllm_available": "searchrl.training.grpo",
    "LLAMA_STYLE_TARGETS": "searchrl.training.policy",
    "LoraSettings": "searchrl.training.policy",
    "build_lora_config": "searchrl.training.policy",
    "load_policy": "searchrl.training.policy",
    "resolve_device": "searchrl.training.policy",
    "save_policy": "searchrl.training.policy",
    "train_with_resume": "searchrl.training.resume",
}
"""Public name -> its module, imported when the name is first used: the settings (``GRPOSettings``,
``LoraSettings``) load without transformers, which only the callbacks need, so reading a config
does not import torch."""

__all__ = sorted(_LAZY_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from searchrl.training.callbacks import (
        DevEvaluationCallback,
        ReleaseMemoryCallback,
        RunLoggingCallback,
        StepProgressCallback,
        TimeLimitCallback,
        quiet_trainer,
    )
    from searchrl.training.grpo import GRPOSettings, build_grpo_config, vllm_available
    from searchrl.training.policy import (
        LLAMA_STYLE_TARGETS,
        LoraSettings,
        build_lora_config,
        load_policy,
        resolve_device,
        save_policy,
    )
    from searchrl.training.resume import train_with_resume


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY_EXPORTS)
