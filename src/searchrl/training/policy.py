"""The policy a trainer updates: LoRA settings, device, loading with one dtype rule, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from searchrl.errors import ConfigError

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
