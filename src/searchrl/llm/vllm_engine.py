"""Generation with vLLM's offline ``LLM`` API (optional: ``pip install 'searchrl[vllm]'``, needs a GPU).

vLLM is imported only when an engine is built, so the rest of searchrl works without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from searchrl.errors import EngineError
from searchrl.llm.engine import Chat, Completion, GenerationEngine, SamplingParams
from searchrl.resolver import DEFAULT_LLM, resolve_with_adapter


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise EngineError(
            f"the vllm engine needs the vllm package ({err})",
            hint="pip install 'searchrl[vllm]' on a machine with a GPU, or use --engine transformers",
        ) from None
    return vllm


class VLLMEngine(GenerationEngine):
    """A model served in-process by vLLM.

    ``model`` is resolved like every model (a folder, a ``.gguf`` file, a Hub id, a default
    alias); a LoRA adapter folder as ``model`` or ``adapter`` is applied per request with a
    ``LoRARequest``. Other keyword arguments go to ``vllm.LLM`` (``gpu_memory_utilization``,
    ``max_model_len``, ``tensor_parallel_size``...). Token logprobs are the ones vLLM reports.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_LLM,
        *,
        adapter: str | Path | None = None,
        dtype: str = "auto",
        max_lora_rank: int = 64,
        **llm_options: Any,
    ) -> None:
        vllm = _import_vllm()
        folder, adapter_folder = resolve_with_adapter(model, adapter)
        self.model_name = str(model)
        self.lora_request = None
        if adapter_folder is not None:
            from vllm.lora.request import LoRARequest

            llm_options.update(enable_lora=True, max_lora_rank=max_lora_rank)
            self.lora_request = LoRARequest("adapter", 1, str(adapter_folder))
        try:
            self.llm = vllm.LLM(model=str(folder), dtype=dtype, **llm_options)
        except (OSError, ValueError, RuntimeError) as err:
            raise EngineError(f"vLLM cannot load the model: {err}", path=folder) from None

    def sampling_params(self, params: SamplingParams, *, logprobs: bool = False):
        """The ``vllm.SamplingParams`` equivalent of ``params`` (stop strings kept in the text)."""
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

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completion texts (see :class:`GenerationEngine`)."""
        sampling = self.sampling_params(params)
        results: list[list[str]] = [[] for _ in prompts]
        # A chat ending with an assistant message is continued rather than answered; vLLM takes
        # that choice per call, so the two kinds of chats go in separate calls.
        for continue_last in (False, True):
            indices = [i for i, chat in enumerate(prompts) if (chat[-1].get("role") == "assistant") == continue_last]
            if not indices:
                continue
            outputs = self.llm.chat(
                [list(prompts[i]) for i in indices],
                sampling_params=sampling,
                use_tqdm=False,
                lora_request=self.lora_request,
                add_generation_prompt=not continue_last,
                continue_final_message=continue_last,
            )
            for i, output in zip(indices, outputs):
                results[i] = [choice.text for choice in output.outputs]
        return results

    def generate_tokens(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each tokenised prompt, ``params.n`` completions with token ids and logprobs."""
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in prompt_ids],
            sampling_params=self.sampling_params(params, logprobs=True),
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        groups = []
        for ids, output in zip(prompt_ids, outputs):
            group = []
            for choice in output.outputs:
                token_ids = list(choice.token_ids)
                logprobs = None
                if choice.logprobs is not None:
                    logprobs = [step[token].logprob for step, token in zip(choice.logprobs, token_ids)]
                stop = choice.stop_reason if isinstance(choice.stop_reason, str) else None
                finish = "length" if choice.finish_reason == "length" else "stop"
                group.append(Completion(list(ids), token_ids, choice.text, logprobs, finish, stop))
            groups.append(group)
        return groups

    def close(self) -> None:
        """Drop the vLLM engine (frees its GPU memory once garbage-collected)."""
        self.llm = None

