"""The context baseline: each answer compared with answers resampled from where it began.

The resampled answers continue the episode's own tokens up to its final ``<answer>`` within the
room its answer had; the answer's words get GRPO's advantage within that group of answers and
every other token keeps TRL's.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from test_agent_train import QUESTIONS, _fake_trainer, one_grpo_step, tool  # noqa: F401  (tool is a fixture)

from searchrl.agent.episode import (
    ChatFormat,
    EpisodeConfig,
    ScriptedPolicy,
    answer_mask,
    resample_answers,
    run_episodes,
)
from searchrl.agent.protocol import ANSWER_OPEN, user_prompt
from searchrl.agent.train import AgentRollout, agent_dataset_rows, load_agent_config
from searchrl.errors import ConfigError
from searchrl.training.credit import context_baseline_advantage


class Recording(ScriptedPolicy):
    """A scripted policy that keeps the sequences and sampling settings of every call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[list[list[int]], object]] = []

    def generate_turns(self, token_id_lists, params):
        self.requests.append(([list(ids) for ids in token_id_lists], params))
        return super().generate_turns(token_id_lists, params)


def _answers_in_turn(answers):
    """A script: turn 0 searches the question; every answer turn takes the next of ``answers``."""
    following = iter(answers)

    def script(prompt_text: str, turn: int) -> str:
        example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
        if turn == 0:
            return f"<search>{example.question}</search>"
        answer = next(following)
        return f"<think>the passage says</think><answer>{example.answers[0] if answer else 'no idea'}</answer>"

    return script


def _written_before_answer(episode, fmt) -> int:
    """Tokens the final turn wrote before the answer's first word."""
    words = answer_mask(episode, fmt.decode)
    begin = start = words.index(1)
    while start > 0 and episode.completion_mask[start - 1] == 1:
        start -= 1
    return begin - start


def test_context_baseline_advantage_is_grpo_within_the_answers_of_one_context():
    assert context_baseline_advantage(1.0, [0.0, 1.0, 0.0]) == pytest.approx(0.5 / (0.5773503 + 1e-4), rel=1e-6)
    assert context_baseline_advantage(0.0, [1.0, 1.0, 1.0]) < 0 < context_baseline_advantage(1.0, [0.0])
    assert context_baseline_advantage(1.0, [1.0, 1.0]) == context_baseline_advantage(1.0, []) == 0.0


def test_answers_are_resampled_from_the_episodes_own_tokens_within_its_answers_room(tool, tokenizer):  # noqa: F811
    config = EpisodeConfig(max_turns=3, max_turn_tokens=40, max_model_tokens=200, temperature=0.7, top_p=0.9, seed=5)
    # own answers: right, right; resampled: wrong, right, wrong for the first, right x3 for the second
    policy = Recording(tokenizer, _answers_in_turn([1, 1, 0, 1, 0, 1, 1, 1]))
    episodes = run_episodes(policy, tool, QUESTIONS[:2], config)
    turns = resample_answers(policy, episodes, config, samples=3, seed=11)

    sequences, params = policy.requests[-1]
    assert len(sequences) == 6 and (params.temperature, params.top_p, params.seed) == (0.7, 0.9, 11)
    fmt = ChatFormat(tokenizer)
    for n, episode in enumerate(episodes):
        # each sample continues exactly the episode's tokens up to and including its final <answer> tag
        context = sequences[3 * n]
        assert sequences[3 * n : 3 * n + 3] == [context] * 3
        assert episode.token_ids[: len(context)] == context and fmt.decode(context).endswith(ANSWER_OPEN)
        assert fmt.decode(episode.token_ids[len(context):]).startswith(episode.answer)
        # the room the answer had: the turn's limit less what the turn wrote before its answer
        assert params.max_new_tokens == 40 - _written_before_answer(episode, fmt)
    right, wrong = (f"<think>the passage says</think><answer>{a}</answer>" for a in ("55 hours", "no idea"))
    assert turns == [[wrong, right, wrong], ["<think>the passage says</think><answer>number two</answer>"] * 3]


def test_episodes_without_an_answer_or_room_for_one_are_not_resampled(tool, tokenizer):  # noqa: F811
    def script(prompt_text: str, turn: int) -> str:
        example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
        if example.id == "q1":
            return "<search>oxygen</search>"  # searches until the turn limit
        return "<answer>number two</answer>"

    config = EpisodeConfig(max_turns=2, max_turn_tokens=40)
    policy = Recording(tokenizer, script)
    episodes = run_episodes(policy, tool, QUESTIONS[:2], config)
    assert [e.finish_reason for e in episodes] == ["turn_limit", "answered"]
    calls = len(policy.requests)
    assert resample_answers(policy, episodes, config, samples=2, seed=0) == [None, ["<answer>number two</answer>"] * 2]
    assert len(policy.requests) == calls + 1 and len(policy.requests[-1][0]) == 2
    # the episode's token budget bounds the resampled answers too: one token of room, or none
    fmt = ChatFormat(tokenizer)
    spent = _written_before_answer(episodes[1], fmt) + len(fmt.end_of_turn_ids)
    one = resample_answers(policy, episodes, config.model_copy(update={"max_model_tokens": spent + 1}), samples=2, seed=0)
    assert one[0] is None and len(one[1]) == 2 and policy.requests[-1][1].max_new_tokens == 1
    calls = len(policy.requests)
    assert resample_answers(policy, episodes, config.model_copy(update={"max_model_tokens": spent}), samples=2,
                            seed=0) == [None, None]
    assert len(policy.requests) == calls  # nothing to generate, no call


def test_the_rollout_gives_each_answer_its_advantage_against_its_resampled_answers(tool, tokenizer):  # noqa: F811
    logged = []
    run = SimpleNamespace(log_metrics=lambda step, metrics, prefix="": logged.append({prefix + k: v for k, v in metrics.items()}))
    # own answers: right, wrong; resampled (3 each): wrong, right, wrong | right, right, right
    script = _answers_in_turn([1, 0, 0, 1, 0, 1, 1, 1])
    rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3, temperature=1.0), run=run, answer_samples=3,
                           policy_factory=lambda trainer: ScriptedPolicy(tokenizer, script))
    trainer = _fake_trainer()
    trainer.processing_class = tokenizer
    rows = agent_dataset_rows(QUESTIONS[:2])
    out = rollout([rows[0]["prompt"], rows[1]["prompt"]], trainer)

    assert out["answer_advantage"] == pytest.approx([context_baseline_advantage(1.0, [0.0, 1.0, 0.0]),
                                                     context_baseline_advantage(0.0, [1.0, 1.0, 1.0])])
    assert out["answer_advantage"][0] > 0 > out["answer_advantage"][1]
    for ids, answer, episode in zip(out["completion_ids"], out["answer_mask"], out["episode"]):
        assert tokenizer.decode([t for t, a in zip(ids, answer) if a]) == f"{episode['answer']}</answer>"
    stats = logged[-1]
    assert stats["rollout/answer_baseline_rate"] == 1.0 and stats["rollout/answer_own_score"] == 0.5
    assert stats["rollout/answer_resampled_score"] == pytest.approx(4 / 6)
    assert stats["rollout/answer_advantage_nonzero"] == 1.0


def test_context_baseline_settings_are_checked():
    config = load_agent_config(None, ["grpo.answer_credit=context_baseline", "grpo.answer_samples=3"])
    assert config.grpo.answer_samples == 3
    with pytest.raises(ConfigError, match="train_answer_text"):
        load_agent_config(None, ["grpo.answer_credit=context_baseline", "grpo.train_answer_text=false"])
    with pytest.raises(ConfigError, match="rewards.correctness"):
        load_agent_config(None, ["grpo.answer_credit=context_baseline", "rewards.correctness=0"])
    with pytest.raises(ConfigError, match="rewards.metric"):
        load_agent_config(None, ["grpo.answer_credit=context_baseline", "rewards.metric=judge", "judge_model=x"])
    with pytest.raises(ConfigError, match="answer_samples"):
        load_agent_config(None, ["grpo.answer_credit=context_baseline", "grpo.answer_samples=0"])


def test_the_rollout_refuses_a_context_baseline_it_cannot_train(tool, tokenizer):  # noqa: F811
    with pytest.raises(ConfigError, match="train_answer_text"):
        AgentRollout(tool, QUESTIONS, EpisodeConfig(), train_answer_text=False, answer_samples=2)
    with pytest.raises(ConfigError, match="one of the two"):
        AgentRollout(tool, QUESTIONS, EpisodeConfig(), answer_credit=True, answer_samples=2)
    with pytest.raises(ConfigError, match="em or f1"):
        AgentRollout(tool, QUESTIONS, EpisodeConfig(), answer_samples=2, answer_metric="judge")


def test_one_grpo_step_trains_the_answer_words_on_the_rollouts_advantages(tool, tokenizer, tiny_lm_dir, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    import torch

    from searchrl.training import credit

    calls = []
    place = credit.with_answer_advantages

    def recording(advantages, mask, answer_advantages):
        out = place(advantages, mask, answer_advantages)
        calls.append({"advantages": advantages.clone(), "mask": mask.bool(), "answer": list(answer_advantages),
                      "out": out.clone()})
        return out

    monkeypatch.setattr(credit, "with_answer_advantages", recording)
    answers = itertools.count()

    def script(prompt_text: str, turn: int) -> str:
        example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
        if turn == 0:
            return f"<search>{example.question}</search>"
        return f"<answer>{example.answers[0] if next(answers) % 3 == 0 else 'no idea'}</answer>"

    rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3, temperature=1.0), answer_samples=2,
                           policy_factory=lambda trainer: ScriptedPolicy(tokenizer, script))
    _, losses = one_grpo_step(rollout, tokenizer, tiny_lm_dir, tmp_path)

    assert len(calls) == 1
    call = calls[0]
    mask, out, advantages = call["mask"], call["out"], call["advantages"]
    assert mask.any(dim=1).all()  # every episode answered
    # every other token keeps TRL's advantage; the answer's words get the rollout's, row by row
    assert torch.equal(out[~mask], advantages.unsqueeze(1).expand_as(out)[~mask])
    for row, value in enumerate(call["answer"]):
        assert torch.equal(out[row][mask[row]], torch.full((int(mask[row].sum()),), value))
    assert any(a != 0 for a in call["answer"]) and any(a == 0 for a in call["answer"])
    # and the loss read these per-token advantages (the step's rows in generation order)
    assert torch.equal(torch.cat(losses), out)
