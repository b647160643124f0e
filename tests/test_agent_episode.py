"""Episodes at the token level (masks, budgets, finish reasons), evaluation and the ``agent`` CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from searchrl.agent.episode import (
    ChatFormat,
    EpisodeConfig,
    EpisodeResult,
    ScriptedPolicy,
    answer_mask,
    answer_text_mask,
    rollout_batch,
    run_episodes,
)
from searchrl.agent.evaluate import evaluate_agent
from searchrl.agent.tool import SearchTool
from searchrl.cli import main
from searchrl.data.types import Document, QAExample
from searchrl.errors import ConfigError
from searchrl.retrieval.base import Retriever


class WordRetriever(Retriever):
    """Scores documents by shared words; optionally fails on a given query."""

    name = "words"

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on, self.docs = fail_on, []

    def index(self, documents, doc_expansions=None, *, show_progress=True):
        self.docs = list(documents)
        return self

    def search(self, queries, k=10, *, show_progress=False):
        if self.fail_on is not None and self.fail_on in queries:
            raise OSError("disk error")
        out = []
        for query in queries:
            words = set(query.lower().split())
            scored = sorted(self.docs, key=lambda d: -len(words & set(d.text.lower().split())))
            out.append([(d.id, 1.0) for d in scored[:k]])
        return out

    def save(self, directory):
        raise NotImplementedError

    @classmethod
    def load(cls, directory):
        raise NotImplementedError

    @property
    def doc_ids(self):
        return [d.id for d in self.docs]


CORPUS = {
    "c1": Document("c1", "The number two oxygen tank exploded at 55 hours."),
    "c2": Document("c2", "Jim Lovell commanded Apollo 13."),
    "c3": Document("c3", "The crew used the lunar module as a lifeboat. " * 40),
}
Q_CMD = QAExample("q1", "Who commanded Apollo 13?", ("Jim Lovell",), ("c2",))
Q_TANK = QAExample("q2", "Which tank exploded?", ("oxygen tank",), ("c1",))
Q_BOAT = QAExample("q3", "What served as a lifeboat?", ("lunar module",), ("c3",))


@pytest.fixture(scope="module")
def tokenizer():
    from searchrl.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


def make_tool(**options) -> SearchTool:
    return SearchTool(WordRetriever(**options).index(CORPUS.values()), CORPUS, k=2)


SCRIPTS = {
    Q_CMD.question: ["<think>look up</think><search>commanded Apollo</search>", "<answer>Jim Lovell</answer>"],
    Q_TANK.question: ["<search>tank</search>", "<search>oxygen tank exploded</search>", "<answer>oxygen tank</answer>"],
    Q_BOAT.question: ["It was the lunar module."],
}


def test_token_sequence_is_the_rendered_chat_and_mask_covers_only_model_text(tokenizer):
    policy = ScriptedPolicy(tokenizer, SCRIPTS)
    [episode] = run_episodes(policy, make_tool(), [Q_CMD])
    fmt = ChatFormat(tokenizer)
    # Appending ids turn by turn gives exactly the chat template's rendering of the transcript.
    assert tokenizer.decode(episode.token_ids) == fmt.render(episode.messages, add_generation_prompt=False).rstrip("\n")
    assert len(episode.token_ids) == len(episode.mask) == len(episode.logprobs)
    masked_in = tokenizer.decode([t for t, m in zip(episode.token_ids, episode.mask) if m])
    assert masked_in == "".join(turn + "<|im_end|>" for turn in episode.assistant_turns)
    assert episode.assistant_turns == SCRIPTS[Q_CMD.question]
    assert episode.mask[: episode.prompt_length] == [0] * episode.prompt_length
    masked_out = tokenizer.decode([t for t, m in zip(episode.token_ids, episode.mask) if not m])
    assert "<information>" in masked_out and "Jim Lovell commanded" in masked_out
    assert episode.num_model_tokens == sum(episode.mask)
    # Sampled tokens carry the policy's logprob; environment tokens and the appended end-of-turn token none.
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for token, mask, logprob in zip(episode.token_ids, episode.mask, episode.logprobs):
        if mask and token != eot:
            assert logprob == -0.5
        if not mask:
            assert logprob is None
    assert episode.finish_reason == "answered" and episode.answer == "Jim Lovell"
    assert episode.searches[0]["query"] == "commanded Apollo" and episode.searches[0]["doc_ids"][0] == "c2"


def test_turn_ended_by_the_model_keeps_its_own_end_of_turn_token(tokenizer):
    [episode] = run_episodes(ScriptedPolicy(tokenizer, SCRIPTS), make_tool(), [Q_BOAT])
    assert episode.finish_reason == "no_action" and episode.answer is None
    model_ids = [t for t, m in zip(episode.token_ids, episode.mask) if m]
    assert tokenizer.decode(model_ids) == "It was the lunar module.<|im_end|>"
    assert all(lp == -0.5 for lp, m in zip(episode.logprobs, episode.mask) if m)  # eot was sampled, so it has one


def test_episodes_are_batched_and_finish_independently(tokenizer):
    policy = ScriptedPolicy(tokenizer, SCRIPTS)
    results = run_episodes(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT])
    assert policy.calls == [3, 2, 1]
    assert [r.finish_reason for r in results] == ["answered", "answered", "no_action"]
    assert [r.num_searches for r in results] == [1, 2, 0]
    assert [r.num_turns for r in results] == [2, 3, 1]


def test_turn_limit_does_not_run_the_last_search(tokenizer):
    always = ScriptedPolicy(tokenizer, lambda prompt, turn: f"<search>tank {turn}</search>")
    [episode] = run_episodes(always, make_tool(), [Q_TANK], EpisodeConfig(max_turns=3))
    assert episode.finish_reason == "turn_limit"
    assert episode.num_turns == 3 and episode.num_searches == 2
    assert episode.messages[-1]["role"] == "assistant"


def test_token_budget_counts_only_model_tokens(tokenizer):
    # Retrieved text (c3 is ~1,800 characters) does not count against the budget.
    policy = ScriptedPolicy(tokenizer, {Q_BOAT.question: ["<search>lifeboat crew lunar</search>", "<answer>lunar module</answer>"]})
    [episode] = run_episodes(policy, make_tool(), [Q_BOAT], EpisodeConfig(max_model_tokens=60))
    assert episode.finish_reason == "answered"
    assert len(episode.token_ids) - episode.prompt_length > 300
    assert episode.num_model_tokens == sum(episode.mask) < 60

    chatty = ScriptedPolicy(tokenizer, lambda prompt, turn: "<think>" + "hmm " * 50 + "</think><search>tank</search>")
    [episode] = run_episodes(chatty, make_tool(), [Q_TANK], EpisodeConfig(max_model_tokens=40, max_turn_tokens=256))
    assert episode.finish_reason == "token_budget"
    assert episode.num_model_tokens <= 40 and episode.num_searches == 0


def test_context_limit_ends_the_episode(tokenizer):
    policy = ScriptedPolicy(tokenizer, lambda prompt, turn: "<search>lifeboat lunar crew</search>")
    [episode] = run_episodes(policy, make_tool(), [Q_BOAT], EpisodeConfig(max_context_tokens=900, max_turn_tokens=32))
    assert episode.finish_reason == "context_limit"
    assert len(episode.token_ids) <= 900


def test_model_written_information_block_ends_the_turn(tokenizer):
    policy = ScriptedPolicy(tokenizer, {Q_CMD.question: ["<information>Lovell is the answer</information><answer>Jim Lovell</answer>"]})
    [episode] = run_episodes(policy, make_tool(), [Q_CMD])
    assert episode.assistant_turns == ["<information>"]
    assert episode.finish_reason == "no_action" and episode.answer is None


def test_failing_search_is_recorded_as_a_tool_error_for_that_episode_only(tokenizer):
    tool = SearchTool(WordRetriever(fail_on="tank").index(CORPUS.values()), CORPUS, k=2)
    results = run_episodes(ScriptedPolicy(tokenizer, SCRIPTS), tool, [Q_CMD, Q_TANK])
    assert [r.finish_reason for r in results] == ["answered", "tool_error"]
    assert "disk error" in results[1].error


def test_repeated_questions_are_distinct_samples(tokenizer):
    results = run_episodes(ScriptedPolicy(tokenizer, SCRIPTS), make_tool(), [Q_CMD, Q_CMD])
    assert [r.sample_key for r in results] == ["q1#0", "q1#1"]


def test_rollout_batch_splits_prompt_and_completion(tokenizer):
    results = run_episodes(ScriptedPolicy(tokenizer, SCRIPTS), make_tool(), [Q_CMD, Q_BOAT])
    batch = rollout_batch(results)
    for r, prompt, completion, env_mask in zip(results, batch["prompt_ids"], batch["completion_ids"], batch["env_mask"]):
        assert prompt + completion == r.token_ids and len(env_mask) == len(completion)
        # The loss holds what the policy sampled: the model's tokens less the end-of-turn token the
        # environment appended after each turn that ended on a stop string, which nothing samples; a
        # turn the model closed itself (the last example's) keeps its own end-of-turn token.
        stopped = sum(t.endswith(("</search>", "</answer>")) for t in r.assistant_turns)
        forced = [t for t, m, e in zip(completion, r.completion_mask, env_mask) if m and not e]
        assert tokenizer.decode(forced) == "<|im_end|>" * stopped
        assert sum(env_mask) == r.num_model_tokens - stopped
    # Sampled tokens keep their log-probability, and only they are in the loss; tool results and the
    # end-of-turn token the environment appended after a stop string have none (TRL reads None as
    # "not sampled").
    for r, logprobs, env_mask in zip(results, batch["logprobs"], batch["env_mask"]):
        assert len(logprobs) == len(env_mask)
        assert [int(lp is not None) for lp in logprobs] == env_mask == r.completion_sampled
    assert batch["episode"][0]["answer"] == "Jim Lovell" and "token_ids" not in batch["episode"][0]
    record = EpisodeResult.from_dict(json.loads(json.dumps(results[0].to_dict())))
    assert record.token_ids == results[0].token_ids and record.assistant_turns == results[0].assistant_turns
    assert record.sampled == results[0].sampled != results[0].mask
    # A record saved before ``sampled`` existed reads every model token as sampled.
    old = {k: v for k, v in results[0].to_dict().items() if k != "sampled"}
    assert EpisodeResult.from_dict(old).sampled == results[0].mask


def test_answer_text_mask_leaves_only_the_answer_words_out(tokenizer):
    results = run_episodes(ScriptedPolicy(tokenizer, SCRIPTS), make_tool(), [Q_CMD, Q_TANK, Q_BOAT])
    masks = [answer_text_mask(r, tokenizer.decode) for r in results]
    for r, mask in zip(results[:2], masks[:2]):
        kept = tokenizer.decode([t for t, m in zip(r.completion_ids, mask) if m])
        turns = r.assistant_turns
        # Every search turn stays in the loss; the final turn up to and including its <answer> tag.
        assert kept == "".join(t + "<|im_end|>" for t in turns[:-1]) + "<answer>"
        # Only model-written tokens were taken out: the environment's stay out.
        assert all(m <= c for m, c in zip(mask, r.completion_mask))
    # An episode that ends without an answer keeps its whole mask.
    assert results[2].finish_reason == "no_action" and masks[2] == results[2].completion_mask
    batch = rollout_batch(results, completion_masks=masks)
    # The batch keeps the given masks on the sampled tokens: every turn's appended end-of-turn token is out.
    for r, mask, env_mask in zip(results, masks, batch["env_mask"]):
        assert env_mask == [m * s for m, s in zip(mask, r.completion_sampled)]
    assert tokenizer.decode([t for t, m in zip(results[0].completion_ids, batch["env_mask"][0]) if m]) == (
        "".join(results[0].assistant_turns[:-1]) + "<answer>")
    assert batch["completion_ids"] == [r.completion_ids for r in results]
    assert "answer_mask" not in batch
    # answer_mask is the rest of the model's tokens: the answer's words, for answer credit
    answers = [answer_mask(r, tokenizer.decode) for r in results]
    for r, kept, answer in zip(results, masks, answers):
        assert [k + a for k, a in zip(kept, answer)] == r.completion_mask
    assert tokenizer.decode([t for t, a in zip(results[0].completion_ids, answers[0]) if a]).startswith(results[0].answer)
    assert sum(answers[2]) == 0  # no answer, no answer words
    sent = rollout_batch(results, completion_masks=masks, answer_masks=answers)["answer_mask"]
    # the answer's words and closing tag; the end-of-turn token appended after </answer> is not the answer's
    assert tokenizer.decode([t for t, a in zip(results[0].completion_ids, sent[0]) if a]) == "Jim Lovell</answer>"
    assert sent == [[a * s for a, s in zip(answer, r.completion_sampled)] for r, answer in zip(results, answers)]
    with pytest.raises(ValueError, match="answer mask of 3 tokens for episode 'q1#0'"):
        rollout_batch(results, completion_masks=masks, answer_masks=[[1, 1, 1], *answers[1:]])


class TemperatureMarking(ScriptedPolicy):
    """Scripted turns whose tokens carry the temperature they were generated at (as their logprob)."""

    def __init__(self, tokenizer, scripts):
        super().__init__(tokenizer, scripts)
        self.params = []

    def generate_turns(self, token_id_lists, params):
        self.params.append(params)
        outputs = super().generate_turns(token_id_lists, params)
        return [replace(o, logprobs=[-params.temperature - 1.0] * len(o.token_ids)) for o in outputs]


def test_answer_temperature_writes_the_answer_words_and_only_them_at_their_own_temperature(tokenizer):
    policy = TemperatureMarking(tokenizer, SCRIPTS)
    config = EpisodeConfig(temperature=1.0, answer_temperature=0.0, seed=5)
    results = run_episodes(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT], config)
    plain = run_episodes(ScriptedPolicy(tokenizer, SCRIPTS), make_tool(), [Q_CMD, Q_TANK, Q_BOAT])
    # The same episodes as one generation per turn: a turn continued after <answer> is still one turn.
    assert [r.assistant_turns for r in results] == [r.assistant_turns for r in plain]
    assert [(r.finish_reason, r.answer) for r in results] == [(r.finish_reason, r.answer) for r in plain]
    # Turns are sampled up to <answer>; the two answers are continued in one call, greedily, with the turn's stops.
    assert [(p.temperature, "<answer>" in p.stop) for p in policy.params] == [
        (1.0, True), (1.0, True), (0.0, False), (1.0, True), (0.0, False)]
    assert policy.calls == [3, 2, 1, 1, 1]
    for r in results:
        written = [(t, lp) for t, lp, m in zip(r.completion_ids, r.logprobs[r.prompt_length:], r.completion_mask) if m]
        in_answer = [a for a, m in zip(answer_mask(r, tokenizer.decode), r.completion_mask) if m]
        # Exactly the tokens left out of the loss (the answer's words) were written at temperature 0:
        # everything GRPO trains was sampled at the policy's temperature.
        for (token, logprob), answer in zip(written, in_answer):
            if logprob is not None:  # the end-of-turn token the environment appends has none
                assert logprob == (-1.0 if answer else -2.0)
        assert any(in_answer) == (r.finish_reason == "answered")


def test_answer_temperature_with_no_room_left_for_the_answer_ends_the_turn_at_its_limit(tokenizer):
    scripts = {Q_CMD.question: ["<answer>Jim Lovell</answer>"]}
    room = len(tokenizer.encode("<answer>", add_special_tokens=False))
    policy = TemperatureMarking(tokenizer, scripts)
    config = EpisodeConfig(temperature=1.0, answer_temperature=0.0, max_turn_tokens=room)
    [episode] = run_episodes(policy, make_tool(), [Q_CMD], config)
    assert len(policy.params) == 1 and episode.finish_reason == "no_action" and episode.answer is None
    # The same temperature for both: no split, a turn is one call.
    policy = TemperatureMarking(tokenizer, SCRIPTS)
    run_episodes(policy, make_tool(), [Q_CMD], EpisodeConfig(temperature=1.0, answer_temperature=1.0))
    assert all("<answer>" not in p.stop for p in policy.params) and policy.calls == [1, 1]


def test_evaluation_splits_f1_into_what_the_search_showed_and_what_the_model_read(tokenizer):
    scripts = {**SCRIPTS, Q_CMD.question: ["<search>commanded Apollo</search>", "<answer>Fred Haise</answer>"],
               Q_BOAT.question: ["<search>lunar module lifeboat</search>", "<answer>lunar module</answer>"]}
    tool = make_tool(fail_on="tank")
    m = evaluate_agent(ScriptedPolicy(tokenizer, scripts), tool, [Q_CMD, Q_TANK, Q_BOAT], show_progress=False).metrics
    # Q_CMD was shown "Jim Lovell commanded Apollo 13." and answered wrong; Q_BOAT's answer was shown and
    # read; Q_TANK's search failed, so it counts in neither.
    assert m["tool_errors"] == 1 and m["answer_shown_rate"] == 1.0
    assert m["f1_when_shown"] == pytest.approx(0.5) and m["f1_when_not_shown"] is None
    plain = ScriptedPolicy(tokenizer, {**scripts, Q_BOAT.question: ["<search>oxygen tank</search>", "<answer>lunar module</answer>"]})
    m = evaluate_agent(plain, make_tool(), [Q_CMD, Q_BOAT], show_progress=False).metrics
    # a right answer the passages did not show (a guess, or the model's own knowledge)
    assert (m["answer_shown_rate"], m["f1_when_shown"], m["f1_when_not_shown"]) == (0.5, 0.0, 1.0)


def test_evaluation_says_whether_the_agent_retried_after_a_missed_or_a_found_gold_document(tokenizer):
    scripts = {Q_CMD.question: ["<search>oxygen tank</search>", "<search>commanded Apollo</search>", "<answer>Jim Lovell</answer>"],
               Q_TANK.question: SCRIPTS[Q_TANK.question],  # "tank" found c1 and it searched again anyway
               Q_BOAT.question: ["<search>lunar module lifeboat</search>", "<answer>lunar module</answer>"]}
    tool = SearchTool(WordRetriever().index(CORPUS.values()), CORPUS, k=1)
    report = evaluate_agent(ScriptedPolicy(tokenizer, scripts), tool, [Q_CMD, Q_TANK, Q_BOAT], show_progress=False)
    assert [r["scores"]["first_search_hit"] for r in report.records] == [0.0, 1.0, 1.0]
    m = report.metrics
    assert (m["retry_rate_after_miss"], m["retry_rate_after_hit"]) == (1.0, 0.5)
    # Without a gold document a first search is neither: it counts in neither rate.
    unknown = QAExample("q4", "Who commanded Apollo 13?", ("Jim Lovell",))
    report = evaluate_agent(ScriptedPolicy(tokenizer, scripts), tool, [unknown], show_progress=False)
    assert report.records[0]["scores"]["first_search_hit"] is None
    assert (report.metrics["retry_rate_after_miss"], report.metrics["retry_rate_after_hit"]) == (None, None)


def test_evaluate_agent_metrics_transcripts_and_resume(tokenizer, tmp_path):
    out = tmp_path / "t.jsonl"
    policy = ScriptedPolicy(tokenizer, SCRIPTS)
    report = evaluate_agent(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT], out_path=out, batch_size=2,
                            run_info={"model": "scripted"}, show_progress=False)
    m = report.metrics
    assert m["num_questions"] == 3 and m["em"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["searches_per_episode"] == pytest.approx(1.0) and m["retries_per_episode"] == pytest.approx(1 / 3)
    assert m["answered_rate"] == pytest.approx(2 / 3) and m["retrieval_hit_rate"] == pytest.approx(2 / 3)
    assert m["finish_reasons"] == {"answered": 2, "no_action": 1}
    assert (m["answer_shown_rate"], m["f1_when_shown"], m["f1_when_not_shown"]) == (pytest.approx(2 / 3), 1.0, 0.0)
    assert len(out.read_text().splitlines()) == 3
    # Rerun: nothing is generated again; a torn last line is dropped and redone.
    policy.calls.clear()
    evaluate_agent(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT], out_path=out, run_info={"model": "scripted"}, show_progress=False)
    assert policy.calls == []
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    again = evaluate_agent(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT], out_path=out, run_info={"model": "scripted"}, show_progress=False)
    assert policy.calls == [1] and again.metrics == m
    with pytest.raises(ConfigError, match="different settings"):
        evaluate_agent(policy, make_tool(), [Q_CMD], out_path=out, run_info={"model": "other"}, show_progress=False)


def test_engine_policy_with_a_tiny_model_keeps_masks_consistent(tiny_lm_dir):
    from searchrl.agent.episode import EnginePolicy
    from searchrl.llm.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_lm_dir, device="cpu", batch_size=4)
    policy = EnginePolicy(engine)
    config = EpisodeConfig(max_turns=2, max_turn_tokens=12, temperature=1.0, seed=3)
    results = run_episodes(policy, make_tool(), [Q_CMD, Q_TANK, Q_BOAT], config)
    eot = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for r in results:
        assert len(r.token_ids) == len(r.mask) == len(r.logprobs)
        assert r.num_model_tokens == sum(r.mask) <= 2 * 13
        model_ids = [t for t, m in zip(r.token_ids, r.mask) if m]
        expected = "".join(
            turn + ("<|im_end|>" if i < len(r.assistant_turns) - 1 or r.finish_reason != "token_budget" else "")
            for i, turn in enumerate(r.assistant_turns)
        )
        if r.finish_reason in ("no_action", "turn_limit", "answered") and model_ids and model_ids[-1] == eot:
            assert engine.tokenizer.decode(model_ids) == expected
        sampled = [lp for lp, m, t in zip(r.logprobs, r.mask, r.token_ids) if m and lp is not None]
        assert sampled and all(lp <= 0 for lp in sampled)


def _write_tiny_data(folder):
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "title": "", "text": d.text}) + "\n" for d in CORPUS.values()))
    questions = folder / "questions.jsonl"
    questions.write_text("".join(
        json.dumps({"id": q.id, "question": q.question, "answers": list(q.answers), "gold_ids": list(q.gold_ids)}) + "\n"
        for q in (Q_CMD, Q_TANK, Q_BOAT)
    ))
    return questions


def test_eval_cli_prints_one_json_object(tiny_lm_dir, tmp_path, capsys):
    questions = _write_tiny_data(tmp_path / "data")
    out = tmp_path / "transcripts.jsonl"
    main([
        "agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"),
        "--model", str(tiny_lm_dir), "--json", "--out", str(out), "--limit", "2", "--max-turns", "2",
        "--max-turn-tokens", "8", "--device", "cpu",
    ])
    stdout = capsys.readouterr().out
    metrics = json.loads(stdout)
    assert stdout.count("\n") == 1
    for key in ("em", "f1", "searches_per_episode", "retries_per_episode", "num_questions", "retrieval_hit_rate",
                "answered_rate"):
        assert key in metrics
    assert metrics["num_questions"] == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in records] == ["q1", "q2"] and "scores" in records[0]


def test_eval_cli_rejects_the_policy_as_its_own_judge(tmp_path, capsys):
    questions = _write_tiny_data(tmp_path / "data")
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([
            "agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"),
            "--model", str(model), "--judge-model", str(model) + "/", "--json",
        ])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""


def test_cli_lists_the_agent_commands(capsys):
    try:
        main(["agent", "--help"])
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    help_text = capsys.readouterr().out
    assert "ask" in help_text and "eval" in help_text


def test_eval_cli_uses_the_training_runs_search_settings_for_its_checkpoints(tiny_lm_dir, tmp_path, capsys):
    import shutil

    questions = _write_tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    shutil.copytree(tiny_lm_dir, run / "best")
    (run / "config.yaml").write_text(
        "tool: {retriever: bm25, k: 1, max_chars: 40}\n"
        "episode: {max_turns: 1, max_turn_tokens: 4, max_model_tokens: 8}\n"
    )
    base = ["agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"),
            "--model", str(run / "best"), "--json", "--limit", "1", "--device", "cpu"]
    main(base)
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["k"] == 1 and metrics["turns_per_episode"] <= 1
    assert "settings of the training run" in captured.err
    main(base + ["--k", "3"])  # an explicit option wins over the run's setting
    assert json.loads(capsys.readouterr().out)["k"] == 3
