"""Generation engines: chat prompts in, ``n`` sampled completions per prompt out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}``."""

Chat = list[Message]


def continues_assistant_turn(chat: Sequence[Message]) -> bool:
    """Whether generation continues ``chat``'s last message (an assistant prefill) instead of opening a turn."""
    return bool(chat) and chat[-1].get("role") == "assistant"


def chat_template_options(chat: Sequence[Message]) -> dict[str, bool]:
    """The chat-template switches for ``chat``, the one rule every engine and the trainer follow.

    A chat that ends with an assistant message (a prefill such as ``<answer>``) is continued;
    any other chat gets a new assistant turn opened. The same keys are what vLLM's ``chat``,
    ``apply_chat_template`` and OpenAI-compatible servers (vLLM, SGLang) take.

    >>> chat_template_options([{"role": "user", "content": "q"}])
    {'add_generation_prompt': True, 'continue_final_message': False}
    >>> chat_template_options([{"role": "user", "content": "q"}, {"role": "assistant", "content": "<answer>"}])
    {'add_generation_prompt': False, 'continue_final_message': True}
    """
    continued = continues_assistant_turn(chat)
    return {"add_generation_prompt": not continued, "continue_final_message": continued}


def render_chat(tokenizer: Any, chat: Sequence[Message]) -> str:
    """``chat`` as the prompt text a generation starts from (see :func:`chat_template_options`)."""
    return tokenizer.apply_chat_template([dict(m) for m in chat], tokenize=False, **chat_template_options(chat))


class SamplingParams(BaseModel):
    """Sampling settings shared by every engine (and recorded in augmentation manifests)."""

    n: int = Field(1, ge=1, description="completions per prompt")
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1)
    stop: list[str] = Field(default_factory=list, description="generation ends after any of these strings")
    seed: int | None = 0
    repetition_penalty: float = Field(1.0, gt=0.0)


@dataclass
class Completion:
    """One sampled completion at the token level (what RL rollouts need).

    ``token_ids`` are the generated tokens, including the end-of-sequence token when the model
    emitted one; ``logprobs[i]`` is the log-probability of ``token_ids[i]`` under the model at the
    sampling temperature (temperature 1 for greedy), before top-p truncation - the quantity a
    GRPO trainer recomputes. ``finish_reason`` is ``"stop"`` (end of sequence or a stop string)
    or ``"length"`` (``max_new_tokens`` reached); ``stop`` is the stop string that ended it.
    """

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: Literal["stop", "length"] = "length"
    stop: str | None = None


class GenerationEngine(ABC):
    """Every backend (transformers, vLLM, OpenAI-compatible HTTP) implements :meth:`generate`."""

    model_name: str = ""

    @abstractmethod
    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completions (text after the assistant turn starts).

        A completion cut by a stop string ends *with* that stop string, so callers can tell
        a finished ``</search>`` from a truncated turn.
        """

    def generate_tokens(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each tokenised prompt, ``params.n`` :class:`Completion` objects with token ids and logprobs.

        Engines without token-level access (an HTTP server) raise :class:`~searchrl.errors.EngineError`.
        """
        from searchrl.errors import EngineError

        raise EngineError(
            f"{type(self).__name__} does not return token ids", hint="use the transformers or vllm engine for RL rollouts"
        )

    def close(self) -> None:
        """Release the model, connections or GPU memory; the engine is unusable afterwards."""
