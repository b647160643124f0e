"""TRL's ``GRPOTrainer`` with savings that change no result, for steps on small hardware.

Both trainers sample a group of completions for each prompt and then score every prompt +
completion with the policy. On a CPU, three costs of that loop are avoidable:

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
  TRL shuffles a step's rows before cutting them into micro-batches, which leaves few repeats of
  a prompt in a micro-batch; where that order cannot change the gradient (one optimiser step per
  batch of samples, a loss normalised by the step or by a fixed row count), the rows stay in
  generation order, each prompt's samples side by side.
* **Scoring tokens the loss never reads.** TRL's fused LM head projects every position of the
  pass onto the vocabulary (49k words for SmolLM2) except on Triton devices, and its micro-batches
  keep the padding of the whole step. :func:`completion_logprobs` cuts each micro-batch after its
  longest sequence and projects only the positions the loss reads: not padding and, for the agent,
  not the search results inside an episode (TRL's ``tool_mask``, ``env_mask`` of a rollout
  function), which are most of an episode's completion. Their log-probabilities and entropies are
  0, where TRL's loss, KL term and metrics mask them anyway.

The log-probabilities, entropies and gradients equal TRL's full forward pass up to floating-point
rounding on every position the loss reads (``tests/test_grpo_trainer.py`` checks them against
it). Where a saving cannot apply — several processes (DDP, FSDP, DeepSpeed), images, a
mixture-of-experts auxiliary loss; for the shared prompt also gradient checkpointing (a recomputed
layer would write the kept keys and values twice); for merged sampling vLLM or no adapter — TRL's
own code runs. ``benchmarks/rl_step.py`` measures what they buy.

Three options do change the update, and are off unless asked for (:mod:`searchrl.training.credit`):
``answer_reward_funcs`` (answer credit) gives the tokens a rollout marks as the answer's words
(``answer_mask``) the advantage of those reward functions alone, every other token TRL's; a
rollout that also returns ``answer_advantage`` (one number per row: the context baseline) gives
the answer's words that advantage instead; ``answer_advantage_floor`` then raises the answer's
words' advantages to at least that value (0: answers are reinforced, never pushed down).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def lm_head_on_labelled_positions() -> Iterator[None]:
    """Within the block, TRL's fused LM head projects only positions whose label is not -100, on CPU too.

    TRL 1.16 does so on Triton devices and projects every position elsewhere (to keep tile shapes
    fixed for compiling backends such as Neuron; ``trl.trainer.utils._use_triton`` decides). On a
    CPU nothing is compiled, and the projection onto the vocabulary is a large part of a small
    model's pass. Without that hook (another TRL version) the block changes nothing.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # pragma: no cover - a TRL without the hook: every position is projected
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def completion_logprobs(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    logits_to_keep: int,
    *,
    scored: Any = None,
    compute_entropy: bool = False,
    share_prompt: bool = True,
) -> tuple[Any, Any]:
    """Log-probabilities (and entropies) of the last ``logits_to_keep`` tokens of each row, computing
    only what a loss over ``scored`` positions reads.

    ``input_ids`` / ``attention_mask`` are TRL's (left-padded prompts, right-padded completions);
    ``scored`` (rows x ``logits_to_keep``, 0/1, optional) marks the completion positions the loss
    reads: 0 on search results and other environment tokens. The rows are cut after the last
    completion token of the longest row, only attended and scored positions are projected onto the
    vocabulary (:func:`lm_head_on_labelled_positions`), and, with ``share_prompt``, a prompt that
    repeats is run once (:func:`shared_prompt_logprobs`). Returns tensors of ``rows x
    logits_to_keep``, 0 where nothing was scored (entropies ``None`` unless ``compute_entropy``).
    """
    import torch
    import torch.nn.functional as F

    prompt_length = input_ids.size(1) - logits_to_keep
    attended = attention_mask[:, prompt_length:].any(dim=0).nonzero()
    keep = int(attended[-1]) + 1 if attended.numel() else 1
    ids, mask = input_ids[:, : prompt_length + keep], attention_mask[:, : prompt_length + keep]
    positions = mask[:, prompt_length:]
    if scored is not None:
        positions = positions * scored[:, :keep].to(positions.dtype)
    with lm_head_on_labelled_positions():
        result = shared_prompt_logprobs(model, ids, mask, keep, compute_entropy=compute_entropy,
                                        positions=positions) if share_prompt else None
        if result is None:
            labels = torch.full_like(ids, -100)
            labels[:, prompt_length:] = ids[:, prompt_length:].masked_fill(positions == 0, -100)
            outputs = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            result = outputs.log_probs[:, -keep:], outputs.entropy[:, -keep:] if compute_entropy else None
    logps, entropy = result
    pad = (0, logits_to_keep - keep)
    return F.pad(logps, pad), (F.pad(entropy, pad) if entropy is not None else None)


def shared_prompt_logprobs(
    model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, *, compute_entropy: bool = False,
    positions: Any = None,
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
    ``positions`` (rows x ``logits_to_keep``, optional) are the completion positions to score;
    by default every attended one.
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
    if positions is None:
        positions = attention_mask[:, prompt_length:]
    labels[:, :logits_to_keep] = completion.masked_fill(positions == 0, -100)
    outputs = model(
        input_ids=input_ids[:, prompt_length - 1 :],
        attention_mask=attention_mask,
        shift_labels=labels,
        fused_lm_head=True,
        **{keyword: cache},
    )
    entropy = outputs.entropy[:, :logits_to_keep] if compute_entropy else None
    return outputs.log_probs[:, :logits_to_keep], entropy


@contextlib.contextmanager
def _rows_kept_in_order() -> Iterator[None]:
    """Within the block, TRL's GRPO trainer does not shuffle a step's rows before splitting them."""
    from trl.trainer import grpo_trainer as module

    shuffle = getattr(module, "shuffle_sequence_dict", None)
    if shuffle is None:  # pragma: no cover - another TRL: its own order
        yield
        return
    module.shuffle_sequence_dict = lambda rows: rows
    try:
        yield
    finally:
        module.shuffle_sequence_dict = shuffle


def padded_rows(rows: Sequence[Sequence[int]], width: int, value: int) -> Any:
    """Per-row masks as one rows x ``width`` tensor, padded on the right with ``value`` (TRL's ``pad``)."""
    import torch
    from trl.trainer.utils import pad

    padded = pad([torch.tensor(list(row), dtype=torch.long) for row in rows], padding_value=value, padding_side="right")
    return torch.nn.functional.pad(padded, (0, width - padded.size(1)), value=value)


@functools.cache
def grpo_trainer_class() -> type:
    """TRL's ``GRPOTrainer`` with the savings above (a function: TRL is imported only when training)."""
    from trl import GRPOTrainer

    class SearchGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` that samples with LoRA merged, scores each distinct prompt once and
        projects only the positions its loss reads.

        ``share_prompt``, ``merge_lora_for_generation`` and ``score_loss_tokens_only`` (all on by
        default) switch the three savings; each falls back to TRL's own code where it cannot apply.
        ``answer_reward_funcs`` (names of reward functions; default none) turns on answer credit;
        ``answer_advantage_floor`` (default none) raises the answer's words' advantages to at least
        that value (it needs a rollout that marks the answer's words and per-token advantages).
        ``later_turn_funcs`` with ``first_outcome_func`` (names of reward functions; default none) turns
        on later-turn credit: the tokens written after the first tool result (the answer's words
        excepted when answer credit is on) get the later terms' part of the reward, compared only with
        the episodes of their group whose first search ended alike
        (:func:`searchrl.training.credit.later_turn_advantages`).
        """

        def __init__(self, *args: Any, share_prompt: bool = True, merge_lora_for_generation: bool = True,
                     score_loss_tokens_only: bool = True, answer_reward_funcs: Sequence[str] = (),
                     answer_advantage_floor: float | None = None, later_turn_funcs: Sequence[str] = (),
                     first_outcome_func: str | None = None, **kwargs: Any) -> None:
            # set first: TRL's constructor may already call the methods below
            self.share_prompt = share_prompt
            self.merge_lora_for_generation = merge_lora_for_generation
            self.score_loss_tokens_only = score_loss_tokens_only
            # the tool/env mask of the pass in progress (the step's rollouts, or one micro-batch's)
            self._loss_positions: Any = None
            self._answer_mask: Any = None  # the step's rollout answer masks (answer credit)
            self._answer_advantages: Any = None  # and the advantages the rollout gave them (context baseline)
            self._rewards_per_func: Any = None
            self.answer_advantage_floor = answer_advantage_floor
            super().__init__(*args, **kwargs)
            self.answer_funcs = self._reward_columns(answer_reward_funcs)
            if bool(later_turn_funcs) != (first_outcome_func is not None):
                from searchrl.errors import ConfigError

                raise ConfigError("later-turn credit needs both later_turn_funcs and first_outcome_func")
            self.later_funcs = self._reward_columns(later_turn_funcs, what="later-turn credit")
            self.outcome_func = (self._reward_columns([first_outcome_func], what="later-turn credit")[0]
                                 if first_outcome_func is not None else None)

        def _reward_columns(self, names: Sequence[str], what: str = "answer credit") -> list[int]:
            """Columns of the named reward functions (answer credit, later-turn credit) in the trainer's reward matrix."""
            if not names:
                return []
            from searchrl.errors import ConfigError
            from searchrl.training.credit import SCALINGS

            unknown = sorted(set(names) - set(self.reward_func_names))
            if unknown:
                raise ConfigError(f"{what} names reward functions the trainer lacks: {', '.join(unknown)}",
                                  hint=f"the trainer's are {', '.join(self.reward_func_names)}")
            if self.multi_objective_aggregation != "sum_then_normalize" or self.scale_rewards not in SCALINGS:
                raise ConfigError(
                    f"{what} splits the advantage TRL computes with multi_objective_aggregation="
                    f"'sum_then_normalize' and scale_rewards in {SCALINGS}; this run has "
                    f"{self.multi_objective_aggregation!r} and {self.scale_rewards!r}",
                    hint=f"leave multi_objective_aggregation at its default, or train without {what}",
                )
            return [self.reward_func_names.index(name) for name in names]

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

        def can_keep_groups_together(self) -> bool:
            """Whether the step's micro-batches may hold whole groups instead of TRL's shuffled rows.

            TRL shuffles a step's rows before splitting them into micro-batches, so a micro-batch rarely
            holds two samples of one prompt and the shared prompt pass has little to share. When the
            step is one optimiser step over its rows (one iteration, one accumulation window) and the
            loss is a sum over rows or tokens normalised by the whole step or by a fixed row count,
            which rows share a micro-batch does not change the gradient (up to rounding), so the rows
            stay in generation order: each prompt's samples side by side.
            """
            return bool(
                self.share_prompt and self._single_process() and self.num_iterations == 1
                and self.args.steps_per_generation == self.args.gradient_accumulation_steps
                and self.loss_type in ("dapo", "grpo", "dr_grpo")
                and getattr(self, "top_entropy_quantile", 1.0) == 1.0
                and not getattr(self, "_entropy_bonus_enabled", False)
            )

        def _prepare_inputs(self, generation_batch: Any):
            if not (self.model.training and self.can_keep_groups_together()):
                return super()._prepare_inputs(generation_batch)
            with _rows_kept_in_order():
                return super()._prepare_inputs(generation_batch)

        def _generate(self, prompts: list):
            generated = super()._generate(prompts)
            self._loss_positions = generated[2]  # tool/env mask per row: the reference pass reads it next
            extra = generated[5] or {}  # the rollout's extra fields
            self._answer_mask, self._answer_advantages = extra.get("answer_mask"), extra.get("answer_advantage")
            return generated

        def _calculate_rewards(self, *args: Any, **kwargs: Any):
            self._rewards_per_func = super()._calculate_rewards(*args, **kwargs)
            return self._rewards_per_func

        def _generate_and_score_completions(self, *args: Any, **kwargs: Any):
            try:
                output = super()._generate_and_score_completions(*args, **kwargs)
                if self.model.training and self._answer_advantages is not None:
                    output["advantages"] = self._rollout_answer_advantages(output)
                elif self.answer_funcs and self.model.training:
                    output["advantages"] = self._answer_credited(output)
                if self.later_funcs and self.model.training:
                    output["advantages"] = self._later_turn_credited(output)
                if self.answer_advantage_floor is not None and self.model.training:
                    output["advantages"] = self._floored(output)
                return output
            finally:
                self._loss_positions = self._answer_mask = self._answer_advantages = self._rewards_per_func = None

        def _rollout_answer_advantages(self, output: dict) -> Any:
            """Per-token advantages: the answer's words get the advantage the rollout computed for them
            (the context baseline); every other token TRL's."""
            from searchrl.training.credit import with_answer_advantages

            if self.answer_funcs:
                raise ValueError("the rollout returned answer advantages and answer_reward_funcs are set: "
                                 "the answer's words can get one of the two")
            return with_answer_advantages(output["advantages"], self._answer_mask_rows(output),
                                          self._answer_advantages)

        def _floored(self, output: dict) -> Any:
            """Per-token advantages with the answer's words' raised to ``answer_advantage_floor``; logs
            ``answer/floored``, the fraction of answered rows whose answer's advantage was raised."""
            from searchrl.training.credit import floored_answer_advantages

            advantages, mask = output["advantages"], self._answer_mask_rows(output)
            floored = floored_answer_advantages(advantages, mask, self.answer_advantage_floor)
            answered, raised = mask.bool().any(dim=1), (floored != advantages).any(dim=1)
            if answered.any():
                self._metrics["train"]["answer/floored"].append((raised.sum() / answered.sum()).item())
            return floored

        def _answer_mask_rows(self, output: dict) -> Any:
            """The rollout's answer mask as this step's rows x completion tokens."""
            width = output["completion_ids"].size(1)
            if self._answer_mask is None or any(len(row) > width for row in self._answer_mask):
                raise ValueError("the rollout returned no answer_mask, or one longer than its completion")
            return padded_rows(self._answer_mask, width, value=0)

        def _answer_credited(self, output: dict) -> Any:
            """Per-token advantages: the answer's words get the part of the answer reward terms."""
            from searchrl.training.credit import answer_credited_advantages

            advantages = output["advantages"]
            rows = advantages.size(0)
            start = self.accelerator.process_index * rows
            return answer_credited_advantages(
                self._rewards_per_func, self.reward_weights, self.answer_funcs, self._answer_mask_rows(output),
                num_generations=self.num_generations, scale_rewards=self.scale_rewards,
                advantages=advantages, rows=slice(start, start + rows),
            )

        def _later_turn_credited(self, output: dict) -> Any:
            """Per-token advantages with later-turn credit on what the model wrote after its first search's
            results; logs ``later/rows`` (the share of rows with such tokens) and ``later/flipped`` (the
            share of those whose credit there has the other sign than the episode's advantage)."""
            import torch

            from searchrl.training.credit import after_first_result, later_turn_advantages

            advantages = output["advantages"]
            tool_mask = output.get("tool_mask")
            if tool_mask is None:
                raise ValueError("later-turn credit needs the rollout's tool mask (a rollout_func with env_mask)")
            later = after_first_result(tool_mask * output["completion_mask"])  # TRL pads tool_mask with 1s
            if self._answer_mask is not None:  # the answer's words keep answer credit
                later = later * (1 - self._answer_mask_rows(output).to(later.device).long())
            rows = advantages.size(0)
            start = self.accelerator.process_index * rows
            credited = later_turn_advantages(
                self._rewards_per_func, self.reward_weights, self.later_funcs, self.outcome_func, later,
                num_generations=self.num_generations, scale_rewards=self.scale_rewards,
                advantages=advantages, rows=slice(start, start + rows),
            )
            has_later = later.bool().any(dim=1)
            if has_later.any():
                episode = advantages if advantages.dim() == 1 else advantages[:, 0]
                first_later = later.float().argmax(dim=1)
                value = credited[torch.arange(rows, device=credited.device), first_later]
                flipped = has_later & (torch.sign(value) * torch.sign(episode) < 0)
                self._metrics["train"]["later/rows"].append(has_later.float().mean().item())
                self._metrics["train"]["later/flipped"].append((flipped.sum() / has_later.sum()).item())
            return credited

        def _compute_loss(self, model, inputs):
            self._loss_positions = inputs.get("tool_mask")
            try:
                return super()._compute_loss(model, inputs)
            finally:
                self._loss_positions = None

        def _scored_positions(self, rows: int, logits_to_keep: int, device: Any) -> Any:
            """The tool/env mask of the pass in progress as rows x logits_to_keep, or None (score all)."""
            import torch

            mask = self._loss_positions
            if mask is None or not self.score_loss_tokens_only:
                return None
            if isinstance(mask, torch.Tensor):
                return mask.to(device) if tuple(mask.shape) == (rows, logits_to_keep) else None
            if len(mask) != rows or any(len(row) > logits_to_keep for row in mask):
                return None
            return padded_rows(mask, logits_to_keep, value=1).to(device)  # padded with 1, as TRL pads the tool mask

        def _get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
            compute_aux_loss=False, **multimodal,
        ):
            share = self.can_share_prompt(model)
            if compute_aux_loss or any(value is not None for value in multimodal.values()) \
                    or not self._single_process() or not (share or self.score_loss_tokens_only):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal,
                )
            import torch

            batch_size = batch_size or input_ids.size(0)
            scored = self._scored_positions(input_ids.size(0), logits_to_keep, input_ids.device)
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                rows = slice(start, start + batch_size)
                ids, mask = input_ids[rows], attention_mask[rows]
                if self.score_loss_tokens_only:
                    with self.accelerator.autocast():
                        chunk = completion_logprobs(
                            model, ids, mask, logits_to_keep, scored=None if scored is None else scored[rows],
                            compute_entropy=compute_entropy, share_prompt=share,
                        )
                else:
                    with self.accelerator.autocast():
                        chunk = shared_prompt_logprobs(model, ids, mask, logits_to_keep, compute_entropy=compute_entropy)
                    if chunk is None:
                        chunk = super()._get_per_token_logps_and_entropies(
                            model, ids, mask, logits_to_keep, compute_entropy=compute_entropy
                        )[:2]
                logps.append(chunk[0])
                entropies.append(chunk[1])
            return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    return SearchGRPOTrainer
