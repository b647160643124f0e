"""Generation with a local transformers model (CPU or GPU), optionally with a PEFT LoRA adapter.

Prompts are chats formatted with the tokenizer's chat template, left-padded into batches and
decoded with ``model.generate``. Stop strings end a row's generation early and are then applied to
the decoded text, so a sequence that stopped never carries on into the padding that follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from searchrl.errors import EngineError, ModelError
from searchrl.llm.engine import Chat, Completion, GenerationEngine, SamplingParams, render_chat
from searchrl.resolver import DEFAULT_LLM, resolve_with_adapter

# Upper bound on floats in one logits block when log-probabilities are recomputed.
_MAX_LOGIT_FLOATS = 1 << 26


class TransformersEngine(GenerationEngine):
    """A causal LM loaded with transformers.

    ``model`` is anything :func:`searchrl.resolver.resolve_model` accepts, or a PEFT adapter
    folder (``adapter_config.json``), whose base model is loaded and the adapter merged in.
    ``adapter`` applies an adapter folder on top of ``model``. ``device`` defaults to CUDA when
    available; ``dtype`` follows :mod:`searchrl.llm.precision` (bf16 where the hardware multiplies it
    natively, else float32). ``batch_size`` counts sequences
    (prompts times ``n``) per ``generate`` call.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_LLM,
        *,
        device: str | None = None,
        batch_size: int = 16,
        dtype: str | None = None,
        adapter: str | Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base_folder, adapter_folder = resolve_with_adapter(model, adapter)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = _torch_dtype(dtype, device)
        tokenizer_folder = adapter_folder if adapter_folder and _has_tokenizer(adapter_folder) else base_folder
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
            network = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load model: {err}", path=base_folder, hint="is this a transformers causal-LM folder?") from None
        if adapter_folder is not None:
            network = _apply_adapter(network, adapter_folder)
        network.to(device)
        self._setup(network, tokenizer, model_name=str(model), batch_size=batch_size)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, batch_size: int = 16, model_name: str = "") -> TransformersEngine:
        """Wrap an already loaded model and tokenizer (e.g. the policy being trained); nothing is copied."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, model_name=model_name or getattr(model, "name_or_path", ""), batch_size=batch_size)
        return engine

    def _setup(self, model: Any, tokenizer: Any, *, model_name: str, batch_size: int) -> None:
        if batch_size < 1:
            raise EngineError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = batch_size
        generation = model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos_token_ids:
            self.eos_token_ids.append(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else generation.pad_token_id
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id: int = pad

    @property
    def device(self):
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------------------------------
    # Public API

    def encode_chat(self, chat: Chat) -> list[int]:
        """Token ids of ``chat`` formatted for generation.

        The assistant turn is opened (``add_generation_prompt``); if the last message is already
        an assistant message, that message is continued instead.
        """
        _check_chat(chat)
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(
                f"the tokenizer of {self.model_name!r} has no chat template",
                hint="use an instruction-tuned model, or set tokenizer.chat_template",
            )
        text = render_chat(self.tokenizer, chat)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completion texts (see :class:`GenerationEngine`)."""
        prompt_ids = [self.encode_chat(chat) for chat in prompts]
        groups = self._generate(prompt_ids, params, with_logprobs=False)
        return [[completion.text for completion in group] for group in groups]

    def generate_tokens(
        self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *, logprobs: bool = True
    ) -> list[list[Completion]]:
        """For each tokenised prompt, ``params.n`` completions with token ids and (optionally) logprobs."""
        return self._generate([list(ids) for ids in prompt_ids], params, with_logprobs=logprobs)

    def close(self) -> None:
        """Drop the model and free GPU memory."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------
    # Batched generation

    def _generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, with_logprobs: bool) -> list[list[Completion]]:
        import torch

        if self.model is None:
            raise EngineError("the engine was closed")
        self._check_lengths(prompt_ids, params)
        # One sequence per (prompt, sample); longest prompts first so batches pad little.
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        sequences = [(i, j) for i in order for j in range(params.n)]
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompt_ids]
        device = self.device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        was_training = self.model.training  # a policy wrapped with from_model may be mid-training
        self.model.eval()
        try:
            for start in range(0, len(sequences), self.batch_size):
                chunk = sequences[start : start + self.batch_size]
                # A private RNG stream per batch: reproducible for a given seed, and the caller's
                # (e.g. a trainer's) random state is left untouched.
                with torch.random.fork_rng(devices=devices, enabled=params.seed is not None):
                    if params.seed is not None:
                        torch.manual_seed(params.seed + start)
                    completions = self._generate_batch([prompt_ids[i] for i, _ in chunk], params, with_logprobs)
                for (i, j), completion in zip(chunk, completions):
                    results[i][j] = completion
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _check_lengths(self, prompt_ids: list[list[int]], params: SamplingParams) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for index, ids in enumerate(prompt_ids):
            if not ids:
                raise EngineError(f"prompt {index} is empty")
            if limit and len(ids) + params.max_new_tokens > limit:
                raise EngineError(
                    f"prompt {index} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds "
                    f"the model's context of {limit}",
                    hint="shorten the prompt or lower max_new_tokens",
                )

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams, with_logprobs: bool) -> list[Completion]:
        import torch

        input_ids, attention_mask = self._left_pad(batch)
        options: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.eos_token_ids or None,
            "pad_token_id": self.pad_token_id,
            "repetition_penalty": params.repetition_penalty,
        }
        if params.temperature > 0:
            options.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            stop_criterion = _StopStringsInCompletion(self.tokenizer, list(params.stop), input_ids.shape[1])
            options["stopping_criteria"] = StoppingCriteriaList([stop_criterion])
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        prompt_width = input_ids.shape[1]
        generated = output[:, prompt_width:].tolist()
        completions = [self._finish(prompt, ids, params.stop) for prompt, ids in zip(batch, generated)]
        if with_logprobs:
            self._add_logprobs(input_ids, attention_mask, completions, params.temperature)
        return completions

    def _left_pad(self, batch: list[list[int]]):
        # Built by hand rather than with tokenizer.pad so a tokenizer shared with a trainer
        # (which pads on the right) is never switched to left padding.
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _finish(self, prompt: list[int], generated: list[int], stops: list[str]) -> Completion:
        """Cut one generated row at its end of sequence or its first stop string."""
        eos_at = next((k for k, token in enumerate(generated) if token in self.eos_token_ids), None)
        before_eos = generated if eos_at is None else generated[:eos_at]
        if stops:
            cut = self._cut_at_stop(before_eos, stops)
            if cut is not None:
                kept, text, stop = cut
                return Completion(prompt, kept, text, finish_reason="stop", stop=stop)
        if eos_at is not None:
            kept = generated[: eos_at + 1]
            return Completion(prompt, kept, self._decode(kept), finish_reason="stop")
        return Completion(prompt, list(generated), self._decode(generated), finish_reason="length")

    def _cut_at_stop(self, ids: list[int], stops: list[str]) -> tuple[list[int], str, str] | None:
        """``(tokens through the one that completes the first stop string, text ending with it, stop)``."""
        if _first_stop_end(self._decode(ids), stops) is None:
            return None
        # Decoded prefixes only grow with the number of tokens, so binary search finds the
        # shortest prefix whose text already contains a stop string in log(n) decodes.
        low, high = 1, len(ids)
        while low < high:
            middle = (low + high) // 2
            if _first_stop_end(self._decode(ids[:middle]), stops) is None:
                low = middle + 1
            else:
                high = middle
        kept = ids[:low]
        text = self._decode(kept)
        end, stop = _first_stop_end(text, stops)  # type: ignore[misc]
        return kept, text[:end], stop

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _add_logprobs(self, prompt_ids, prompt_mask, completions: list[Completion], temperature: float) -> None:
        """Recompute each kept token's log-probability with one forward pass over prompt + completion.

        This is the same quantity a GRPO trainer computes (logits divided by the temperature),
        so importance ratios start at exactly 1 for on-policy samples.
        """
        import torch

        width = max((len(c.token_ids) for c in completions), default=0)
        if width == 0:
            for completion in completions:
                completion.logprobs = []
            return
        rows = len(completions)
        completion_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long, device=self.device)
        completion_mask = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        for row, completion in enumerate(completions):
            if completion.token_ids:
                completion_ids[row, : len(completion.token_ids)] = torch.tensor(completion.token_ids, device=self.device)
                completion_mask[row, : len(completion.token_ids)] = 1
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        scale = temperature if temperature > 0 else 1.0
        vocab = self.model.config.get_text_config().vocab_size
        step = max(1, _MAX_LOGIT_FLOATS // max(1, (width + 1) * vocab))
        values: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, rows, step):
                part = slice(start, start + step)
                logits = self._forward_logits(
                    input_ids[part], attention_mask[part], position_ids[part], keep=width + 1
                )[:, :-1, :]
                logprobs = torch.log_softmax(logits.float() / scale, dim=-1)
                picked = logprobs.gather(-1, completion_ids[part].unsqueeze(-1)).squeeze(-1)
                values.extend(picked.tolist())
        for completion, row in zip(completions, values):
            completion.logprobs = row[: len(completion.token_ids)]

    def _forward_logits(self, input_ids, attention_mask, position_ids, *, keep: int):
        """Logits of the last ``keep`` positions (computing only those where the model allows it)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        try:
            return self.model(**inputs, logits_to_keep=keep).logits
        except TypeError:  # an architecture without ``logits_to_keep``
            return self.model(**inputs).logits[:, -keep:, :]


class _StopStringsInCompletion(StoppingCriteria):
    """Stops a row once its *generated* text contains a stop string.

    transformers' own ``stop_strings`` criterion looks at prompt and completion together, so a
    prompt ending in ``"\n"`` with the stop ``"\n\n"`` would end generation after one newline.
    This one decodes only a short tail of the generated tokens, long enough to hold any stop
    string (a byte-level token carries at least a quarter of a character).
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [stop for stop in stops if stop]
        self.prompt_width = prompt_width
        self.window = 4 * max((len(stop) for stop in self.stops), default=1) + 2

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        tails = input_ids[:, self.prompt_width :][:, -self.window :]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        hits = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


def _first_stop_end(text: str, stops: list[str]) -> tuple[int, str] | None:
    """End offset of the earliest-ending stop string in ``text`` and that string, or ``None``."""
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop)
        if at >= 0 and (best is None or at + len(stop) < best[0]):
            best = (at + len(stop), stop)
    return best


def _check_chat(chat: Chat) -> None:
    if not isinstance(chat, list | tuple) or not chat:
        raise EngineError("a prompt must be a non-empty list of {'role', 'content'} messages")
    for message in chat:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise EngineError(f"malformed chat message {message!r}", hint="use {'role': 'user', 'content': '...'}")


def _torch_dtype(dtype: str | None, device: str):
    import torch

    if dtype is None or dtype == "auto":
        from searchrl.llm.precision import torch_dtype

        return torch_dtype("auto", device)
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise EngineError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(names)} or auto")
    return names[dtype]


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _apply_adapter(model: Any, adapter_folder: Path) -> Any:
    try:
        from peft import PeftModel
    except ImportError as err:  # pragma: no cover - a dependency
        raise ModelError(f"peft is needed to load adapters: {err}") from None
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_folder))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"cannot apply adapter: {err}", path=adapter_folder, hint="was it trained on this base model?") from None
    # Inference only: folding the low-rank update into the weights makes generation as fast
    # as the base model.
    return peft_model.merge_and_unload()
