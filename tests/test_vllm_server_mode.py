"""vLLM server mode (TRL's ``vllm_mode="server"`` with ``trl vllm-serve``) as a config choice of both trainers."""

from __future__ import annotations

import types

import pytest

from searchrl.agent.config import AgentTrainConfig
from searchrl.coaug.config import CoAugConfig
from searchrl.errors import ConfigError
from searchrl.llm.engine import SamplingParams
from searchrl.training import build_grpo_config, grpo as grpo_module


@pytest.fixture
def gpu_with_vllm(monkeypatch):
    """Pretend a GPU and the vllm package are present (GRPOConfig itself needs neither to be built)."""
    monkeypatch.setattr(grpo_module, "resolve_device", lambda device="auto": "cuda")
    monkeypatch.setattr(grpo_module, "vllm_available", lambda: True)
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)


@pytest.mark.parametrize("config", [
    CoAugConfig(data="d", grpo={"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gen:8000"}),
    AgentTrainConfig.model_validate(
        {"grpo": {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gen:8000"}}),
], ids=["coaug", "agent"])
def test_server_mode_reaches_trl_from_both_configs(gpu_with_vllm, tmp_path, config):
    options = config.grpo.trl_options() | {"max_steps": 2}
    args = build_grpo_config(output_dir=tmp_path, prompts_per_step=2, device="cuda", **options)
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url) == (True, "server", "http://gen:8000")
    colocated = build_grpo_config(output_dir=tmp_path, prompts_per_step=2, device="cuda",
                                  **(options | {"vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4}))
    assert (colocated.vllm_mode, colocated.vllm_gpu_memory_utilization) == ("colocate", 0.4)


def test_server_mode_without_vllm_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="vllm_mode 'server' needs vLLM"):
        build_grpo_config(output_dir=tmp_path, max_steps=1, num_generations=2, prompts_per_step=1, device="cpu",
                          use_vllm=False, vllm_mode="server")


class FakeClient:
    """What TRL's VLLMClient.generate returns: token ids and the sampled tokens' log-probabilities."""

    def __init__(self, completions):
        self.completions = completions
        self.calls = []

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        return {"completion_ids": [ids for ids, _ in self.completions],
                "logprobs": [[[lp] for lp in lps] for _, lps in self.completions]}


def fake_trainer(tokenizer, client, processes=1):
    model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=2048))
    return types.SimpleNamespace(
        use_vllm=True,
        vllm_generation=types.SimpleNamespace(mode="server", vllm_client=client),
        accelerator=types.SimpleNamespace(num_processes=processes, unwrap_model=lambda m: m),
        model=model,
        processing_class=tokenizer,
    )


def test_agent_turns_come_from_the_server_with_finish_reasons(tiny_lm_dir):
    from transformers import AutoTokenizer

    from searchrl.agent.rollout import TrainerVLLMServerPolicy, trainer_policy

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    stop_ids = tokenizer.encode("<search>x</search>", add_special_tokens=False)
    open_ids = tokenizer.encode("<search>x", add_special_tokens=False)[:3]
    client = FakeClient([
        (stop_ids, [-0.1] * len(stop_ids)),
        (open_ids + [tokenizer.eos_token_id], [-0.2] * (len(open_ids) + 1)),
        (open_ids, [-0.3] * len(open_ids)),
    ])
    policy = trainer_policy(fake_trainer(tokenizer, client))
    assert isinstance(policy, TrainerVLLMServerPolicy) and policy.context_length == 2048
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=len(open_ids), stop=["</search>"])
    turns = policy.generate_turns([[1, 2], [3], [4, 5, 6]], params)
    assert [t.finish for t in turns] == ["stop", "eos", "length"]
    assert turns[0].text.endswith("</search>") and turns[0].token_ids == stop_ids
    assert turns[1].logprobs == [-0.2] * (len(open_ids) + 1)
    [call] = client.calls
    assert call["prompts"] == [[1, 2], [3], [4, 5, 6]] and call["logprobs"] == 0
    assert (call["temperature"], call["top_p"], call["max_tokens"]) == (0.8, 0.9, len(open_ids))
    assert call["generation_kwargs"] == {"stop": ["</search>"], "include_stop_str_in_output": True}


def test_agent_server_rollouts_refuse_several_training_processes(tiny_lm_dir):
    from transformers import AutoTokenizer

    from searchrl.agent.rollout import trainer_policy

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    with pytest.raises(ConfigError, match="one training process"):
        trainer_policy(fake_trainer(tokenizer, FakeClient([]), processes=2))


def test_colocated_agent_turns_share_the_engines_sampling_mapping_without_a_shared_seed(tiny_lm_dir, monkeypatch):
    import sys

    from transformers import AutoTokenizer

    from searchrl.agent.rollout import TrainerVLLMPolicy, trainer_policy

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    sent = []

    class FakeLLM:
        def generate(self, prompts, sampling_params=None, use_tqdm=False):
            sent.append(sampling_params)
            step = {5: types.SimpleNamespace(logprob=-0.5)}
            choice = types.SimpleNamespace(token_ids=[5], text="x</search>", logprobs=[step], finish_reason="stop",
                                           stop_reason="</search>")
            return [types.SimpleNamespace(outputs=[choice]) for _ in prompts]

    trainer = fake_trainer(AutoTokenizer.from_pretrained(str(tiny_lm_dir)), None)
    trainer.vllm_generation = types.SimpleNamespace(mode="colocate", llm=FakeLLM(), enable_sleep_mode=False,
                                                    tensor_parallel_size=1)
    policy = trainer_policy(trainer)
    assert isinstance(policy, TrainerVLLMPolicy)
    params = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=5, stop=["</search>"], seed=3)
    [turn] = policy.generate_turns([[1, 2]], params)
    assert (turn.finish, turn.logprobs) == ("stop", [-0.5])
    mapped = vars(sent[0])
    assert (mapped["n"], mapped["seed"], mapped["logprobs"], mapped["include_stop_str_in_output"]) == (1, None, 0, True)
    assert (mapped["temperature"], mapped["top_p"], mapped["max_tokens"], mapped["stop"]) == (0.7, 0.9, 5, ["</search>"])
