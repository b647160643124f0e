"""Generation engines: chat prompts in, ``n`` sampled completions per prompt out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from pydantic import BaseModel, Field

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}``."""

Chat = list[Message]


class SamplingParams(BaseModel):
    """Sampling settings shared by every engine (and recorded in augmentation manifests)."""

    n: int = Field(1, ge=1, description="completions per prompt")
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1)
    stop: list[str] = Field(default_factory=list, description="generation ends after any of these strings")
    seed: int | None = 0
    repetition_penalty: float = Field(1.0, gt=0.0)


class GenerationEngine(ABC):
    """Every backend (transformers, vLLM, OpenAI-compatible HTTP) implements :meth:`generate`."""

    model_name: str = ""

    @abstractmethod
    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completions (text after the assistant turn starts).

        A completion cut by a stop string ends *with* that stop string, so callers can tell
        a finished ``</search>`` from a truncated turn.
        """
