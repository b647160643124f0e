"""Rewards on hand-made transcripts, including the reward hacks users reported."""

from __future__ import annotations

import pytest

from searchrl.agent.judge import LLMJudge
from searchrl.agent.rewards import (
    RewardWeights,
    answer_reward_funcs,
    build_reward_functions,
    correctness_reward,
    episode_rewards,
    first_search_spoiled,
    format_reward,
    retrieval_reward,
    retry_reward,
    trl_reward,
)
from searchrl.errors import ConfigError
from searchrl.llm.engine import GenerationEngine


class RecordingJudge(GenerationEngine):
    """A judge engine that answers a fixed reply and remembers every prompt."""

    model_name = "judge-7b"

    def __init__(self, reply: str = "YES") -> None:
        self.reply, self.prompts = reply, []

    def generate(self, prompts, params):
        self.prompts.extend(prompts)
        return [[self.reply] for _ in prompts]


def record(turns, doc_ids=(), finish="answered", question="Who commanded Apollo 13?"):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": question}]
    for i, turn in enumerate(turns):
        messages.append({"role": "assistant", "content": turn})
        if i < len(doc_ids):
            messages.append({"role": "user", "content": "<information>\n[1] ...\n</information>"})
    return {
        "question": question, "messages": messages, "finish_reason": finish,
        "searches": [{"query": "q", "doc_ids": list(ids)} for ids in doc_ids],
    }


HONEST = record(["<think>look</think><search>commander Apollo 13</search>", "<answer>Jim Lovell</answer>"], [["c2"]])
ANSWERS = ["Jim Lovell"]


def test_honest_episode_scores_on_every_part():
    assert episode_rewards(HONEST, ANSWERS, ["c2"]) == {
        "correctness": 1.0, "format": 1.0, "retry": 0.0, "retrieval": 1.0, "total": 4.0 + 2.0 + 1.0,
    }


def test_hack_searching_after_answering_earns_nothing_for_correctness():
    for turns in (["<answer>Jim Lovell</answer>", "<search>more</search>"], ["<answer>Jim Lovell</answer><search>more</search>"]):
        episode = record(turns, [["c2"]])
        assert correctness_reward(episode, ANSWERS) == 0.0
        assert format_reward(episode) == 0.0
        assert retry_reward(episode, ANSWERS) == 0.0 and retry_reward(episode, mode="paper") == 0.0


def test_hack_fake_information_block_fails_format_and_lowers_the_total():
    fake = record(["<search>q</search>", "<information>Jim Lovell commanded</information><answer>Jim Lovell</answer>"], [["c9"]])
    assert format_reward(fake) == 0.0
    assert episode_rewards(fake, ANSWERS, ["c2"])["total"] < episode_rewards(HONEST, ANSWERS, ["c2"])["total"]


def test_hack_answering_without_searching_earns_no_retry_or_retrieval():
    blind = record(["<answer>Jim Lovell</answer>"])
    assert retry_reward(blind, ANSWERS) == 0.0 and retry_reward(blind, mode="paper") == 0.0
    assert retrieval_reward(blind, ["c2"]) == 0.0
    assert episode_rewards(blind, ANSWERS, ["c2"])["total"] < episode_rewards(HONEST, ANSWERS, ["c2"])["total"]


@pytest.mark.parametrize("hedge", ["Jim Lovell or Fred Haise", "Lovell / Haise", "Jim Lovell; Fred Haise; Jack Swigert",
                                   "Jim Lovell, Fred Haise, Jack Swigert", "either Jim Lovell", "maybe Jim Lovell"])
def test_hack_hedged_answers_score_zero_even_with_a_lenient_judge(hedge):
    episode = record(["<search>q</search>", f"<answer>{hedge}</answer>"], [["c2"]])
    engine = RecordingJudge("YES")
    judge = LLMJudge(engine, policy_model="policy")
    for metric in ("em", "f1", "judge"):
        assert correctness_reward(episode, ANSWERS, metric=metric, judge=judge) == 0.0
    assert engine.prompts == []  # the judge is never asked about a hedge


def test_hack_many_searches_with_a_wrong_answer_pay_nothing_by_default():
    spam = record([f"<search>q{i}</search>" for i in range(6)] + ["<answer>Neil Armstrong</answer>"], [["c9"]] * 6)
    assert retry_reward(spam, ANSWERS) == 0.0
    assert retry_reward(spam, mode="paper") == pytest.approx(0.95)  # the paper's formula can be gamed


def test_paper_retry_formula():
    def paper(n_searches, *, answer=True, doubled=False):
        turns = [f"<search>a{i}</search>" + ("<search>b</search>" if doubled and i == 0 else "") for i in range(n_searches)]
        turns += ["<answer>x</answer>"] if answer else []
        return retry_reward(turns, mode="paper")

    assert [paper(n) for n in (0, 1, 2, 3, 5, 9)] == pytest.approx([0.0, 0.35, 0.5, 0.65, 0.95, 0.95])
    assert paper(3, answer=False) == 0.0
    assert paper(3, doubled=True) == pytest.approx(0.325)


def test_sound_retry_pays_retries_only_for_a_correct_answer():
    def sound(n_searches, answer="Jim Lovell"):
        return retry_reward([f"<search>{i}</search>" for i in range(n_searches)] + [f"<answer>{answer}</answer>"], ANSWERS)

    assert [sound(n) for n in (0, 1, 2, 3, 5, 8)] == pytest.approx([0.0, 0.0, 0.25, 0.5, 1.0, 1.0])
    assert sound(3, answer="Haise") == 0.0
    assert retry_reward(["<search>a</search>", "<search>b</search>", "<answer>x</answer>"], correct=True) == 0.25


def test_f1_metric_and_unanswered_episode():
    partial = record(["<search>q</search>", "<answer>Lovell</answer>"], [["c2"]])
    assert correctness_reward(partial, ANSWERS, metric="f1") == pytest.approx(2 / 3)
    assert correctness_reward(record(["<search>q</search>"], [["c2"]], finish="turn_limit"), ANSWERS) == 0.0


def test_tool_failures_are_not_scored():
    failed = record(["<search>q</search>"], [], finish="tool_error")
    assert correctness_reward(failed, ANSWERS) is None
    assert format_reward(failed) is None and retry_reward(failed, ANSWERS) is None and retrieval_reward(failed, ["c2"]) is None


def test_retrieval_reward_needs_gold_ids_and_counts_only_originals():
    assert retrieval_reward(HONEST, []) is None
    assert retrieval_reward(record(["<search>q</search>", "<answer>x</answer>"], [["p12", "c7"]]), ["c2"]) == 0.0
    assert retrieval_reward(["<search>q</search>", "<answer>x</answer>"], ["c2"]) is None  # ids unknown


def test_judge_reads_only_question_reference_and_extracted_answer():
    engine = RecordingJudge("YES")
    judge = LLMJudge(engine, policy_model="policy")
    secret = record(["<think>SECRET REASONING</think><search>q</search>", "<think>MORE</think><answer>James Lovell</answer>"], [["c2"]])
    assert correctness_reward(secret, ANSWERS, metric="judge", judge=judge) == 1.0
    prompt_text = " ".join(m["content"] for m in engine.prompts[0])
    assert "James Lovell" in prompt_text and "Jim Lovell" in prompt_text and "Who commanded" in prompt_text
    assert "SECRET" not in prompt_text and "MORE" not in prompt_text and "<answer>" not in prompt_text


def test_unparseable_judge_verdict_is_none_and_counted():
    judge = LLMJudge(RecordingJudge("I believe so, yes"), policy_model="policy")
    assert correctness_reward(HONEST, ANSWERS, metric="judge", judge=judge) is None
    assert judge.failures == 1
    assert LLMJudge(RecordingJudge("no."), policy_model="policy").judge(["q"], ["a"], [["b"]]) == [False]


def test_judge_must_not_be_the_policy():
    with pytest.raises(ConfigError, match="policy model"):
        LLMJudge(RecordingJudge(), policy_model="Judge-7B")


def test_trl_reward_functions_read_episode_records_and_dataset_columns():
    failed = record(["<search>q</search>"], [], finish="tool_error")
    episodes = [HONEST, failed, record(["<answer>Haise</answer>"])]
    columns = dict(
        episode=episodes, answers=[ANSWERS] * 3, gold_ids=[["c2"]] * 3, question=["Who commanded Apollo 13?"] * 3,
        trainer_state=None, log_extra=None, log_metric=None,
    )
    completions = [[{"role": "assistant", "content": "ignored when episodes are given"}]] * 3
    functions, weights = build_reward_functions(RewardWeights())
    assert [f.__name__ for f in functions] == ["correctness_reward", "format_reward", "retry_reward", "retrieval_reward"]
    assert weights == [4.0, 2.0, 1.0, 1.0]
    scores = {f.__name__: f(prompts=["p"] * 3, completions=completions, **columns) for f in functions}
    assert scores == {
        "correctness_reward": [1.0, None, 0.0],
        "format_reward": [1.0, None, 1.0],
        "retry_reward": [0.0, None, 0.0],
        "retrieval_reward": [1.0, None, 0.0],
    }


def test_recovery_retry_pays_a_retry_that_found_what_the_first_search_missed():
    turns = ["<search>crew</search>", "<search>commander Apollo 13</search>", "<answer>Haise</answer>"]
    recovered = record(turns, [["c9"], ["c2"]])  # a wrong answer: recovery is judged by retrieval alone
    assert retry_reward(recovered, mode="recovery", gold_ids=["c2"]) == 1.0
    assert retry_reward(record(turns, [["c2"], ["c2"]]), mode="recovery", gold_ids=["c2"]) == 0.0  # first search had it
    assert retry_reward(record(turns, [["c9"], ["c8"]]), mode="recovery", gold_ids=["c2"]) == 0.0  # the retry found nothing
    unanswered = record(turns[:2], [["c9"], ["c2"]], finish="turn_limit")
    assert retry_reward(unanswered, mode="recovery", gold_ids=["c2"]) == 0.0
    assert retry_reward(HONEST, mode="recovery", gold_ids=["c2"]) == 0.0  # one search is no retry
    assert retry_reward(recovered, mode="recovery") is None  # no gold ids: not applicable

    # Through TRL's functions: a question without gold ids leaves retry and retrieval out, the rest counts.
    columns = dict(episode=[recovered, recovered], answers=[ANSWERS] * 2, gold_ids=[["c2"], []],
                   question=["q"] * 2, trainer_state=None, log_extra=None, log_metric=None)
    functions, _ = build_reward_functions(RewardWeights(retry_mode="recovery"))
    scores = {f.__name__: f(prompts=["p"] * 2, completions=[None, None], **columns) for f in functions}
    assert scores["retry_reward"] == [1.0, None] and scores["retrieval_reward"] == [1.0, None]
    assert scores["correctness_reward"] == [0.0, 0.0] and scores["format_reward"][1] is not None
    assert episode_rewards(recovered, ANSWERS, ["c2"], RewardWeights(retry_mode="recovery"))["retry"] == 1.0


def test_miss_retry_pays_searching_again_after_a_first_search_that_missed():
    turns = ["<search>crew</search>", "<search>commander Apollo 13</search>", "<answer>Haise</answer>"]
    assert retry_reward(record(turns, [["c9"], ["c8"]]), mode="miss", gold_ids=["c2"]) == 1.0  # the retry found nothing
    assert retry_reward(record(turns, [["c9"], ["c2"]]), mode="miss", gold_ids=["c2"]) == 1.0
    assert retry_reward(record(turns, [["c2"], ["c8"]]), mode="miss", gold_ids=["c2"]) == 0.0  # first search had it
    unanswered = record(turns[:2], [["c9"], ["c8"]], finish="turn_limit")
    assert retry_reward(unanswered, mode="miss", gold_ids=["c2"]) == 0.0
    missed_once = record(["<search>crew</search>", "<answer>Haise</answer>"], [["c9"]])
    assert retry_reward(missed_once, mode="miss", gold_ids=["c2"]) == 0.0  # one search is no retry
    no_search = record(["<answer>Haise</answer>"], [])
    assert retry_reward(no_search, mode="miss", gold_ids=["c2"]) == 0.0  # no search: no retry, scored like recovery
    assert retry_reward(record(turns, [["c9"], ["c8"]]), mode="miss") is None  # no gold ids: not applicable
    assert retry_reward(record(turns, [["c9"], ["c8"]], finish="tool_error"), mode="miss", gold_ids=["c2"]) is None

    # Through TRL's functions, as for recovery: no gold ids leaves the term out, the rest counts.
    retried = record(turns, [["c9"], ["c8"]])
    columns = dict(episode=[retried, retried], answers=[ANSWERS] * 2, gold_ids=[["c2"], []],
                   question=["q"] * 2, trainer_state=None, log_extra=None, log_metric=None)
    functions, _ = build_reward_functions(RewardWeights(retry_mode="miss"))
    scores = {f.__name__: f(prompts=["p"] * 2, completions=[None, None], **columns) for f in functions}
    assert scores["retry_reward"] == [1.0, None] and scores["format_reward"][1] is not None
    assert answer_reward_funcs(RewardWeights(retry_mode="miss")) == ["correctness_reward"]  # a search term


def test_first_search_retrieval_makes_a_deliberate_miss_lose_under_the_miss_retry_reward():
    retried = ["<search>crew</search>", "<search>commander Apollo 13</search>", "<answer>Jim Lovell</answer>"]
    found_late = record(retried, [["c9"], ["c2"]])
    assert retrieval_reward(found_late, ["c2"]) == 1.0 and retrieval_reward(found_late, ["c2"], scope="first") == 0.0
    assert retrieval_reward(record(retried, [["c2"], ["c9"]]), ["c2"], scope="first") == 1.0
    assert retrieval_reward(record(["<answer>Jim Lovell</answer>"], []), ["c2"], scope="first") == 0.0  # no search
    assert retrieval_reward(found_late, [], scope="first") is None  # no gold ids: not applicable, as with any
    with pytest.raises(ConfigError, match="retrieval scope"):
        retrieval_reward(found_late, ["c2"], scope="last")

    # The incentive: both episodes answer correctly; one finds the chunk at once, the other misses first.
    found_at_once = HONEST
    gamed = dict(retry_mode="miss", retry=0.5)
    total = lambda episode, **w: episode_rewards(episode, ANSWERS, ["c2"], RewardWeights(**gamed, **w))["total"]
    assert total(found_late) > total(found_at_once)  # any search counts: missing first pays (what was measured)
    assert total(found_late, retrieval_scope="first") < total(found_at_once, retrieval_scope="first")

    # The same through TRL's functions and the weights a config gives.
    columns = dict(episode=[found_late, found_at_once], answers=[ANSWERS] * 2, gold_ids=[["c2"]] * 2,
                   question=["q"] * 2, trainer_state=None, log_extra=None, log_metric=None)
    functions, _ = build_reward_functions(RewardWeights(**gamed, retrieval_scope="first"))
    scores = {f.__name__: f(prompts=["p"] * 2, completions=[None, None], **columns) for f in functions}
    assert scores["retrieval_reward"] == [0.0, 1.0] and scores["retry_reward"] == [1.0, 0.0]
    first = trl_reward("retrieval", scope="first")
    assert first(prompts=["p"] * 2, completions=[None, None], **columns) == [0.0, 1.0]
    with pytest.raises(ValueError, match="retrieval_scope"):
        RewardWeights(retrieval_scope="last")


def spoiled_record(turns, searches, finish="answered"):
    """A record whose searches are ``(doc_ids, before_noise)`` pairs (``None``: the noise changed nothing)."""
    out = record(turns, [ids for ids, _ in searches], finish=finish)
    for search, (_, before) in zip(out["searches"], searches):
        if before is not None:
            search["before_noise"] = before
    return out


def test_spoiled_retry_pays_only_a_retry_after_a_search_the_noise_spoiled():
    turns = ["<search>crew</search>", "<search>commander</search>", "<answer>Lovell</answer>"]
    spoiled = [(["c9"], ["c2", "c4"]), (["c8"], None)]  # the query found c2; the noise took it out
    assert first_search_spoiled(spoiled_record(turns, spoiled), ["c2"]) is True
    assert retry_reward(spoiled_record(turns, spoiled), mode="spoiled", gold_ids=["c2"]) == 1.0  # whatever the retry found
    # a miss the query made itself earns nothing, with or without noise: a worse first search cannot earn it
    assert retry_reward(spoiled_record(turns, [(["c9"], None), (["c2"], None)]), mode="spoiled", gold_ids=["c2"]) == 0.0
    assert retry_reward(spoiled_record(turns, [(["c9"], ["c5"]), (["c2"], None)]), mode="spoiled", gold_ids=["c2"]) == 0.0
    # noise that left the gold document in place did not spoil the search
    kept = [(["c2", "c9"], ["c2", "c4"]), (["c8"], None)]
    assert first_search_spoiled(spoiled_record(turns, kept), ["c2"]) is False
    assert retry_reward(spoiled_record(turns, kept), mode="spoiled", gold_ids=["c2"]) == 0.0
    answered_at_once = spoiled_record(["<search>crew</search>", "<answer>Haise</answer>"], spoiled[:1])
    assert retry_reward(answered_at_once, mode="spoiled", gold_ids=["c2"]) == 0.0  # spoiled, but no retry
    unanswered = spoiled_record(turns[:2], spoiled, finish="max_turns")
    assert retry_reward(unanswered, mode="spoiled", gold_ids=["c2"]) == 0.0
    assert retry_reward(spoiled_record(turns, spoiled), mode="spoiled") is None  # no gold ids: not applicable
    assert retry_reward(spoiled_record(turns, spoiled, finish="tool_error"), mode="spoiled", gold_ids=["c2"]) is None
    assert first_search_spoiled(record(["<answer>Lovell</answer>"], []), ["c2"]) is None  # no search
    # through TRL's functions: a search term, not an answer term
    columns = dict(episode=[spoiled_record(turns, spoiled)] * 2, answers=[ANSWERS] * 2, gold_ids=[["c2"], []],
                   question=["q"] * 2, trainer_state=None, log_extra=None, log_metric=None)
    functions, _ = build_reward_functions(RewardWeights(retry_mode="spoiled"))
    scores = {f.__name__: f(prompts=["p"] * 2, completions=[None, None], **columns) for f in functions}
    assert scores["retry_reward"] == [1.0, None] and scores["format_reward"][1] is not None
    assert answer_reward_funcs(RewardWeights(retry_mode="spoiled")) == ["correctness_reward"]


def test_trl_judge_reward_makes_one_batched_call():
    engine = RecordingJudge("YES")
    judge = LLMJudge(engine, policy_model="policy")
    reward = trl_reward("correctness", metric="judge", judge=judge)
    completions = ["<answer>Jim Lovell</answer>", "<answer>Lovell or Haise</answer>", "no answer"]
    out = reward(prompts=["p"] * 3, completions=completions, answers=[ANSWERS] * 3, question=["Who?"] * 3)
    assert out == [1.0, 0.0, 0.0] and len(engine.prompts) == 1


def test_trl_reward_needs_answers_column():
    with pytest.raises(ConfigError, match="answers"):
        trl_reward("correctness")(prompts=["p"], completions=["<answer>x</answer>"])
    with pytest.raises(ConfigError, match="unknown reward"):
        trl_reward("speed")  # type: ignore[arg-type]
