"""The GRPO trainer's savings change no number: merged-LoRA sampling, the shared prompt pass and
scoring only the positions the loss reads."""

from __future__ import annotations

import traceback

import pytest
import torch

from searchrl.training.trainer import (
    completion_logprobs,
    lm_head_on_labelled_positions,
    merged_lora,
    shared_prompt_logprobs,
)


@pytest.fixture()
def policy(tiny_lm_dir):
    """The tiny model with a LoRA adapter whose B is not zero (a fresh adapter is the identity) and
    TRL's fused LM head, as GRPOTrainer sets it up."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32)
    add_fused_lm_head(base, temperature=0.7, outputs=("log_probs", "entropy"))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model


def trl_batch(vocab: int):
    """Three prompts (two lengths, left-padded), each sampled twice or thrice; right-padded completions."""
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=generator) for n in (7, 5, 7)]
    rows, width, keep = [], 7, 6
    for index, completion_length in [(0, 6), (0, 3), (1, 4), (1, 6), (1, 2), (2, 5)]:
        prompt = prompts[index]
        completion = torch.randint(3, vocab, (completion_length,), generator=generator)
        ids = torch.zeros(width + keep, dtype=torch.long)
        mask = torch.zeros(width + keep, dtype=torch.long)
        ids[width - len(prompt) : width], mask[width - len(prompt) : width] = prompt, 1
        ids[width : width + completion_length], mask[width : width + completion_length] = completion, 1
        rows.append((ids, mask))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), keep


def full_pass(model, ids, mask, keep):
    """TRL 1.16's ``_get_per_token_logps_and_entropies`` for one text-only chunk."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    outputs = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return outputs.log_probs[:, -keep:], outputs.entropy[:, -keep:]


def lora_gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_the_shared_prompt_pass_gives_the_full_pass_log_probs_entropies_and_gradients(policy):
    ids, mask, keep = trl_batch(policy.config.vocab_size)
    completion_mask = mask[:, -keep:]

    full_logps, full_entropy = full_pass(policy, ids, mask, keep)
    (full_logps * completion_mask).sum().backward()
    full_grads = lora_gradients(policy)
    policy.zero_grad()

    shared_logps, shared_entropy = shared_prompt_logprobs(policy, ids, mask, keep, compute_entropy=True)
    (shared_logps * completion_mask).sum().backward()
    shared_grads = lora_gradients(policy)

    assert shared_logps.shape == full_logps.shape == (6, keep)
    real = completion_mask.bool()
    torch.testing.assert_close(shared_logps[real], full_logps[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared_entropy[real], full_entropy[real], rtol=1e-4, atol=1e-5)
    assert set(shared_grads) == set(full_grads) and len(full_grads) > 0
    # the prompt's own LoRA weights get their gradient through the kept keys and values
    assert any(g.abs().sum() > 0 for n, g in shared_grads.items() if "q_proj" in n)
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_nothing_is_shared_when_no_prompt_repeats(policy):
    ids, mask, keep = trl_batch(policy.config.vocab_size)
    assert shared_prompt_logprobs(policy, ids[[0, 2, 5]], mask[[0, 2, 5]], keep) is None
    assert shared_prompt_logprobs(policy, ids[:, 6:], mask[:, 6:], keep) is None  # a one-token prompt


def with_env_tokens_and_extra_padding(ids, mask, keep, extra: int = 3):
    """The batch with 3 more padding columns (a step's padding beyond this micro-batch's longest row) and
    a scored mask that leaves two "search result" tokens of each completion out of the loss."""
    ids = torch.cat([ids, torch.zeros(ids.size(0), extra, dtype=ids.dtype)], dim=1)
    mask = torch.cat([mask, torch.zeros(mask.size(0), extra, dtype=mask.dtype)], dim=1)
    scored = torch.ones(ids.size(0), keep + extra, dtype=torch.long)
    scored[:, 1:3] = 0
    return ids, mask, keep + extra, scored


@pytest.mark.parametrize("share", [True, False])
def test_scoring_only_loss_positions_gives_the_full_pass_numbers_where_the_loss_reads(policy, share):
    ids, mask, keep = trl_batch(policy.config.vocab_size)
    ids, mask, keep, scored = with_env_tokens_and_extra_padding(ids, mask, keep)
    loss_mask = mask[:, -keep:] * scored

    full_logps, full_entropy = full_pass(policy, ids, mask, keep)
    (full_logps * loss_mask).sum().backward()
    full_grads = lora_gradients(policy)
    policy.zero_grad()

    logps, entropy = completion_logprobs(policy, ids, mask, keep, scored=scored, compute_entropy=True, share_prompt=share)
    (logps * loss_mask).sum().backward()
    grads = lora_gradients(policy)

    assert logps.shape == entropy.shape == full_logps.shape == (6, keep)
    read = loss_mask.bool()
    torch.testing.assert_close(logps[read], full_logps[read], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(entropy[read], full_entropy[read], rtol=1e-4, atol=1e-5)
    assert not logps[~read].any() and not entropy[~read].any()  # unscored positions are 0, not projected
    assert full_logps[~read & mask[:, -keep:].bool()].abs().sum() > 0  # ... where the full pass had numbers
    assert set(grads) == set(full_grads) and len(full_grads) > 0
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_lm_head_projects_only_scored_positions_and_the_padding_is_cut(policy, monkeypatch):
    from trl.trainer import utils as trl_utils

    ids, mask, keep = trl_batch(policy.config.vocab_size)
    ids, mask, keep, scored = with_env_tokens_and_extra_padding(ids, mask, keep)
    projected, widths = [], []
    apply, forward = trl_utils._ChunkedLogProbFunction.apply, policy.forward

    def counting_apply(hidden, *args):
        projected.append(hidden.size(0))
        return apply(hidden, *args)

    def recording_forward(*args, **kwargs):
        widths.append(kwargs["input_ids"].size(1))
        return forward(*args, **kwargs)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting_apply)
    monkeypatch.setattr(policy, "forward", recording_forward)
    with torch.no_grad():
        completion_logprobs(policy, ids, mask, keep, scored=scored, share_prompt=False)
        assert projected == [int((mask[:, -keep:] * scored).sum())] and widths == [ids.size(1) - 3]
        full_pass(policy, ids, mask, keep)
        assert projected[-1] == ids.size(0) * (ids.size(1) - 1)  # TRL on CPU: every position
    assert trl_utils._use_triton(torch.device("cpu")) is False  # the hook is TRL's own again after the block
    with lm_head_on_labelled_positions():
        assert trl_utils._use_triton(torch.device("cpu")) is True


def test_merged_sampling_equals_the_adapter_and_restores_the_weights_bit_for_bit(policy):
    ids, mask, _ = trl_batch(policy.config.vocab_size)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with torch.no_grad():
        reference = policy(input_ids=ids, attention_mask=mask).logits
    with merged_lora(policy) as merged, torch.no_grad():
        assert merged
        inside = policy(input_ids=ids, attention_mask=mask).logits
        weight = policy.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
        assert not torch.equal(weight, before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
    torch.testing.assert_close(inside, reference, rtol=1e-4, atol=1e-5)
    for name, parameter in policy.named_parameters():
        assert torch.equal(parameter, before[name]), name  # the base weights came back exactly
    with torch.no_grad():
        assert torch.equal(policy(input_ids=ids, attention_mask=mask).logits, reference)  # the adapter is live again


def test_merging_leaves_a_model_without_adapters_alone(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir))
    with merged_lora(model) as merged:
        assert merged is False


@pytest.mark.parametrize("enabled", [True, False])
def test_a_training_step_samples_merged_and_shares_prompts_only_when_asked(tiny_lm_dir, tmp_path, monkeypatch, enabled):
    """Through a real co-augmentation step: the savings run (or, switched off, TRL's own code runs),
    the trainer's log-probabilities are the same either way, and the weights come back unmerged."""
    from test_coaug_train import tiny_config, write_tiny_beir

    from searchrl.coaug.train import prepare_coaug
    from searchrl.training import train_with_resume
    from searchrl.training import trainer as module

    used = {"shared": 0, "merged": 0, "scored": 0}
    shared, merged, scored = module.shared_prompt_logprobs, module.merged_lora, module.completion_logprobs

    def counting_shared(*args, **kwargs):
        result = shared(*args, **kwargs)
        used["shared"] += result is not None
        return result

    def counting_merged(model):  # counts the sampler's merges, not the dev evaluation's
        used["merged"] += any(frame.name == "_generate_single_turn" for frame in traceback.extract_stack())
        return merged(model)

    def counting_scored(*args, **kwargs):
        used["scored"] += 1
        return scored(*args, **kwargs)

    monkeypatch.setattr(module, "completion_logprobs", counting_scored)
    monkeypatch.setattr(module, "shared_prompt_logprobs", counting_shared)
    monkeypatch.setattr(module, "merged_lora", counting_merged)
    config = tiny_config(tiny_lm_dir, write_tiny_beir(tmp_path / "beir"), tmp_path / "run", grpo__steps=1,
                         grpo__share_prompt=enabled, grpo__merge_lora_for_generation=enabled,
                         grpo__score_loss_tokens_only=enabled,
                         eval__at_start=False, eval__every=100)
    setup = prepare_coaug(config)
    trainer = setup.trainer
    assert (trainer.share_prompt, trainer.merge_lora_for_generation, trainer.score_loss_tokens_only) == (enabled,) * 3
    train_with_resume(trainer, setup.run)
    assert trainer.state.global_step == 1
    assert used["shared"] > 0 if enabled else used["shared"] == 0
    assert used["merged"] > 0 if enabled else used["merged"] == 0
    assert used["scored"] > 0 if enabled else used["scored"] == 0
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert not any(getattr(m, "merged", False) for m in model.modules())

    ids, mask, keep = trl_batch(model.config.vocab_size)
    trainer.share_prompt = True
    on = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, compute_entropy=True)
    trainer.share_prompt = False
    off = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, compute_entropy=True)
    real = mask[:, -keep:].bool()
    for a, b in zip(on[:2], off[:2]):
        torch.testing.assert_close(a[real], b[real], rtol=1e-4, atol=1e-5)
