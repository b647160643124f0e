"""TRL's ``GRPOTrainer`` with two savings that change no result, for steps on small hardware.

Both trainers sample a group of completions for each prompt and then score every prompt +
completion with the policy. On a CPU, two costs of that loop are avoidable:

* **Sampling through the LoRA adapter.** Every adapted projection runs two extra small matrix
  products per decoded token; for a 135M model that more than doubles the operations of a decoding
  step. :func:`merged_lora` samples with the adapter merged into the base weights and then
  restores the saved base weights exactly (no ``W + BA - BA`` round trip, which in bf16 would drift
  a little at every step).
* **Scoring the same prompt once per completion.** A group's completions share their prompt (the
  ~50-token instruction of the co-augmentation, the system prompt and question of the agent), yet
  TRL's forward pass runs every prompt + completion in full. :func:`shared_prompt_logprobs` runs
  each distinct prompt of a micro-batch once, keeps its keys and values, and runs only the
  completions on top of them; the gradient reaches the prompt's LoRA weights through the kept keys
  and values, as in the full pass.

The log-probabilities, entropies and gradients equal TRL's full forward pass up to floating-point
rounding (``tests/test_grpo_trainer.py`` checks both against it). Where either saving cannot apply
— several processes (DDP, FSDP, DeepSpeed), gradient checkpointing (a recomputed layer would write
the kept keys and values twice), images, a mixture-of-experts auxiliary loss, vLLM sampling, no
adapter — TRL's own code runs. ``benchmarks/rl_step.py`` measures what they buy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def merged_lora(model: Any) -> Iterator[bool]:
    """Within the block, ``model``'s LoRA adapters are merged into their base weights.

    Yields whether anything was merged (``False`` for a model without LoRA layers or already
    merged). On leaving, each base weight is copied back from a copy saved on entry, so the
    weights the trainer updates next are bit-identical to the ones before the block. Costs one
    copy of the adapted weights, in host memory, while inside.
    """
    import torch

    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        yield False
        return
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers or any(m.merged or m.disable_adapters for m in layers):
        yield False
        return
    with torch.no_grad():
        # the copy lives in host memory: on a GPU it must not compete with the model and the rollouts
        saved = [(m, m.get_base_layer().weight.detach().to("cpu", copy=True)) for m in layers]
        for layer in layers:
            layer.merge()
    try:
        yield True
    finally:
        with torch.no_grad():
            for layer, weight in saved:
                layer.get_base_layer().weight.copy_(weight)
                layer.merged_adapters.clear()


def _decoder(model: Any) -> Any:
    """The transformer body of a causal LM (through a PEFT wrapper): hidden states, no LM head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


def _cache_keyword(decoder: Any) -> str:
    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def shared_prompt_logprobs(
    model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, *, compute_entropy: bool = False
) -> tuple[Any, Any] | None:
    """Log-probabilities (and entropies) of the last ``logits_to_keep`` tokens of each row, every
    distinct prompt run once.

    ``input_ids`` / ``attention_mask`` are TRL's: left-padded prompts followed by right-padded
    completions of ``logits_to_keep`` tokens; ``model`` carries TRL's fused LM head
    (``trl.trainer.utils.add_fused_lm_head``). Rows whose prompt tokens and prompt mask are equal
    share one pass over all but the prompt's last token; its keys and values are then repeated
    for each row, and the last prompt token plus the completion run on top (the last prompt
    token's hidden state scores the first completion token). Returns ``None`` when no prompt
    repeats (nothing to share) or the prompt is a single token; the caller then runs the full pass.
    """
    import torch

    rows, width = input_ids.shape
    prompt_length = width - logits_to_keep
    if prompt_length < 2:
        return None
    prompts = torch.cat([input_ids[:, :prompt_length], attention_mask[:, :prompt_length]], dim=1)
    distinct, inverse = torch.unique(prompts, dim=0, return_inverse=True)
    if distinct.size(0) == rows:
        return None
    decoder = _decoder(model)
    keyword = _cache_keyword(decoder)
    prefix = decoder(
        input_ids=distinct[:, : prompt_length - 1],
        attention_mask=distinct[:, prompt_length : 2 * prompt_length - 1],
        use_cache=True,
    )
    cache = getattr(prefix, keyword, None)
    if cache is None:  # pragma: no cover - every cache-capable decoder returns it
        return None
    cache.batch_select_indices(inverse)
    completion = input_ids[:, prompt_length:]
    labels = torch.full((rows, logits_to_keep + 1), -100, dtype=input_ids.dtype, device=input_ids.device)
    labels[:, :logits_to_keep] = completion.masked_fill(attention_mask[:, prompt_length:] == 0, -100)
    outputs = model(
        input_ids=input_ids[:, prompt_length - 1 :],
        attention_mask=attention_mask,
        shift_labels=labels,
        fused_lm_head=True,
        **{keyword: cache},
    )
    entropy = outputs.entropy[:, :logits_to_keep] if compute_entropy else None
    return outputs.log_probs[:, :logits_to_keep], entropy


@functools.cache
def grpo_trainer_class() -> type:
    """TRL's ``GRPOTrainer`` with the two savings above (a function: TRL is imported only when training)."""
    from trl import GRPOTrainer

    class SearchGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` that samples with LoRA merged and scores each distinct prompt once.

        ``share_prompt`` and ``merge_lora_for_generation`` (both on by default) switch the two
        savings; each falls back to TRL's own code where it cannot apply.
        """

        def __init__(self, *args: Any, share_prompt: bool = True, merge_lora_for_generation: bool = True,
                     **kwargs: Any) -> None:
            self.share_prompt = share_prompt  # set first: TRL's constructor may already call the methods below
            self.merge_lora_for_generation = merge_lora_for_generation
            super().__init__(*args, **kwargs)

        def _single_process(self) -> bool:
            accelerator = self.accelerator
            return accelerator.num_processes == 1 and not getattr(self, "is_deepspeed_enabled", False) \
                and not getattr(self, "is_fsdp_enabled", False)

        def can_share_prompt(self, model: Any) -> bool:
            unwrapped = self.accelerator.unwrap_model(model)
            checkpointing = getattr(unwrapped, "is_activation_checkpointing", None)
            if checkpointing is None:
                checkpointing = getattr(unwrapped, "is_gradient_checkpointing", False)
            return bool(self.share_prompt and self._single_process() and not checkpointing)

        def can_merge_lora(self) -> bool:
            return bool(
                self.merge_lora_for_generation and self._single_process() and not self.use_vllm
                and not getattr(self, "use_transformers_continuous_batching", False)
            )

        def generation_context(self) -> contextlib.AbstractContextManager:
            """Where the policy samples: LoRA merged when possible (also used by the agent's rollout)."""
            if self.can_merge_lora():
                return merged_lora(self.accelerator.unwrap_model(self.model))
            return contextlib.nullcontext()

        def _generate_single_turn(self, *args: Any, **kwargs: Any):
            with self.generation_context():
                return super()._generate_single_turn(*args, **kwargs)

        def _get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
            compute_aux_loss=False, **multimodal,
        ):
            if compute_aux_loss or any(value is not None for value in multimodal.values()) \
                    or not self.can_share_prompt(model):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal,
                )
            import torch

            batch_size = batch_size or input_ids.size(0)
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
                with self.accelerator.autocast():
                    shared = shared_prompt_logprobs(model, ids, mask, logits_to_keep, compute_entropy=compute_entropy)
                if shared is None:
                    shared = super()._get_per_token_logps_and_entropies(
                        model, ids, mask, logits_to_keep, compute_entropy=compute_entropy
                    )[:2]
                logps.append(shared[0])
                entropies.append(shared[1])
            return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    return SearchGRPOTrainer
