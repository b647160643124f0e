"""``grpo.greedy_member``: one episode of each GRPO group played greedily, as evaluation plays it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_agent_context_baseline import Recording
from test_agent_train import QUESTIONS, _fake_trainer, tool  # noqa: F401  (tool is a fixture)

from searchrl.agent.episode import EpisodeConfig, ScriptedPolicy, run_episodes
from searchrl.agent.protocol import user_prompt
from searchrl.agent.rollout import greedy_members
from searchrl.agent.train import AgentRollout, agent_dataset_rows, load_agent_config
from searchrl.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer():
    from searchrl.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _script(prompt_text: str, turn: int) -> str:
    example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
    if turn == 0:
        return f"<search>{example.question}</search>"
    return f"<answer>{example.answers[0]}</answer>"


def test_flagged_episodes_are_generated_greedily_and_the_rest_sampled_in_order(tool, tokenizer):  # noqa: F811
    examples = [QUESTIONS[0], QUESTIONS[0], QUESTIONS[1], QUESTIONS[1], QUESTIONS[0]]
    flags = greedy_members(examples)
    assert flags == [True, False, True, False, False]
    config = EpisodeConfig(max_turns=3, temperature=1.0, seed=3)
    policy = Recording(tokenizer, _script)
    mixed = run_episodes(policy, tool, examples, config, greedy=flags)
    # Each turn is two calls, the sampled rows at the GRPO temperature and the greedy ones at 0 ...
    assert [(len(rows), params.temperature) for rows, params in policy.requests] == [
        (3, 1.0), (2, 0.0), (3, 1.0), (2, 0.0)]
    # ... the greedy call holding the first question's and the second's prompts (episodes 0 and 2), the
    # sampled one episodes 1, 3 and 4 (questions 1, 2, 1) ...
    sampled_rows, greedy_rows = policy.requests[0][0], policy.requests[1][0]
    assert sampled_rows[0] == sampled_rows[2] != sampled_rows[1]
    assert greedy_rows == [sampled_rows[0], sampled_rows[1]]
    # ... and the episodes come back in the examples' order.
    plain = run_episodes(ScriptedPolicy(tokenizer, _script), tool, examples, config)
    assert [(r.sample_key, r.assistant_turns, r.answer) for r in mixed] == [
        (r.sample_key, r.assistant_turns, r.answer) for r in plain]
    # No flag (or none set): one call per turn, as before.
    policy = Recording(tokenizer, _script)
    run_episodes(policy, tool, examples, config, greedy=[False] * len(examples))
    assert [params.temperature for _, params in policy.requests] == [1.0, 1.0]


def test_greedy_flags_are_checked(tool, tokenizer):  # noqa: F811
    policy = ScriptedPolicy(tokenizer, _script)
    with pytest.raises(ConfigError, match="2 flags for 1 episodes"):
        run_episodes(policy, tool, [QUESTIONS[0]], EpisodeConfig(), greedy=[True, False])
    with pytest.raises(ConfigError, match="answer temperature"):
        run_episodes(policy, tool, [QUESTIONS[0]], EpisodeConfig(temperature=1.0, answer_temperature=0.0),
                     greedy=[True])
    with pytest.raises(ConfigError, match="greedy_member"):
        load_agent_config(None, ["grpo.greedy_member=true", "grpo.train_answer_text=false",
                                 "grpo.answer_temperature=0"])
    assert load_agent_config(None, ["grpo.greedy_member=true"]).grpo.greedy_member is True
    assert load_agent_config(None, []).grpo.greedy_member is False


def test_the_rollout_plays_the_first_episode_of_each_question_greedily(tool, tokenizer):  # noqa: F811
    policies = []

    def factory(trainer):
        policies.append(Recording(tokenizer, _script))
        return policies[-1]

    run = SimpleNamespace(log_metrics=lambda *args, **kwargs: None)
    rows = agent_dataset_rows(QUESTIONS[:2])
    prompts = [rows[0]["prompt"]] * 3 + [rows[1]["prompt"]] * 3
    trainer = _fake_trainer()
    trainer.processing_class = tokenizer
    for greedy_member, expected in ((True, [(4, 1.0), (2, 0.0)]), (False, [(6, 1.0)])):
        rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3, temperature=1.0), run=run,
                               policy_factory=factory, greedy_member=greedy_member)
        out = rollout(prompts, trainer)
        assert [(len(r), p.temperature) for r, p in policies[-1].requests[:len(expected)]] == expected
        assert [e["sample_key"] for e in out["episode"]] == [f"{q.id}#{n}" for q in QUESTIONS[:2] for n in range(3)]
