"""``searchrl recipe pool``: several runs of one recipe read as one result, with intervals that count seeds."""

from __future__ import annotations

import json

import pytest

from searchrl.cli import main
from searchrl.errors import DataError
from searchrl.pool import pool_runs, pooled_difference, write_per_question

QUESTIONS = {f"q{i}": f"key{i}" for i in range(6)}


def agent_run(path, warm, trained, *, sampled=None, questions=QUESTIONS):
    """A finished agent recipe run as the pooling reads it: per-question F1 of the warm-start and the trained arm."""
    path.mkdir(parents=True)
    scores = {"f1": {"warm_start": dict(zip(questions, warm)), "trained": dict(zip(questions, trained))}}
    write_per_question(path, "agent", scores, questions=questions, sampled=sampled, source="held-out.jsonl")
    return path


def test_pooled_difference_averages_each_question_over_runs():
    base = {q: 0.0 for q in QUESTIONS}
    run_a = dict(zip(QUESTIONS, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    run_b = dict(zip(QUESTIONS, [1.0, 1.0, -1.0, 0.0, 0.0, 0.0]))
    d = pooled_difference([(base, run_a), (base, run_b)])
    assert d["per_run"] == pytest.approx([1 / 6, 1 / 6])
    assert d["mean"] == pytest.approx(1 / 6) and d["runs_above_zero"] == 2
    # tallied on the per-question mean over runs: q0 +1, q1 +0.5, q2 -0.5, three ties
    assert (d["better"], d["worse"], d["ties"], d["num_runs"], d["num_queries"]) == (2, 1, 3, 2, 6)
    for key in ("interval_over_questions", "interval_over_runs_and_questions"):
        low, high = d[key]
        assert low <= d["mean"] <= high and low < high


def test_the_interval_over_runs_counts_runs_that_disagree():
    # One seed gains on every question, the other loses as much: the per-question means are all 0, so the questions
    # alone show no uncertainty, while resampling the runs does.
    base = {q: 0.5 for q in QUESTIONS}
    up = {q: 1.0 for q in QUESTIONS}
    down = {q: 0.0 for q in QUESTIONS}
    d = pooled_difference([(base, up), (base, down)])
    assert d["mean"] == 0.0 and d["per_run"] == [0.5, -0.5] and d["runs_above_zero"] == 1
    assert d["interval_over_questions"] == [0.0, 0.0]
    assert d["interval_over_runs_and_questions"] == [-0.5, 0.5]


def test_pooled_difference_refuses_runs_on_other_questions():
    with pytest.raises(DataError, match="same questions"):
        pooled_difference([({"a": 0.0}, {"a": 1.0}), ({"b": 0.0}, {"b": 1.0})])


def test_pool_runs_reports_each_policy_per_run_and_each_comparison(tmp_path):
    sampled = {"samples": 4, "scores": {"retries_per_episode": {"warm_start": dict.fromkeys(QUESTIONS, 0.5),
                                                                "trained": dict.fromkeys(QUESTIONS, 0.25)}}}
    one = agent_run(tmp_path / "s0", [0.0] * 6, [1.0, 0, 0, 0, 0, 0], sampled=sampled)
    two = agent_run(tmp_path / "s1", [0.0] * 6, [0.0, 0, 0, 0, 0, 0.5], sampled=sampled)
    pooled = pool_runs([one, two])
    assert pooled["recipe"] == "agent" and pooled["num_questions"] == 6 and pooled["source"] == "held-out.jsonl"
    assert pooled["policies"]["trained"]["f1"]["per_run"] == pytest.approx([1 / 6, 1 / 12])
    assert pooled["policies"]["trained"]["f1"]["mean"] == pytest.approx(1 / 8)
    compared = pooled["differences"]["trained_vs_warm_start"]["f1"]
    assert compared["mean"] == pytest.approx(1 / 8) and compared["runs_above_zero"] == 2 and compared["left_out"] == 0
    # sampled episodes are pooled on their own
    retries = pooled["sampled"]["differences"]["trained_vs_warm_start"]["retries_per_episode"]
    assert retries["mean"] == pytest.approx(-0.25) and pooled["sampled"]["samples_per_question"] == [4]
    assert pooled["policies_left_out"] == {}
    # an arm only some runs trained (--ablate-retry in one) is named, not pooled
    scores = json.loads((two / "per_question.json").read_text())
    scores["scores"]["f1"]["trained_no_retry"] = dict.fromkeys(QUESTIONS, 0.0)
    (two / "per_question.json").write_text(json.dumps(scores))
    pooled = pool_runs([one, two])
    assert pooled["policies_left_out"] == {"trained_no_retry": "in 1 of 2 runs"}
    assert "trained_no_retry" not in pooled["policies"]
    assert set(pooled["differences"]) == {"trained_vs_warm_start"}


def test_a_question_one_run_could_not_score_is_left_out_of_every_run(tmp_path):
    one = agent_run(tmp_path / "s0", [0.0] * 6, [1.0, 0, 0, 0, 0, 0])
    two = agent_run(tmp_path / "s1", [0.0] * 6, [None, 0, 0, 0, 0, 0.6])
    compared = pool_runs([one, two])["differences"]["trained_vs_warm_start"]["f1"]
    assert compared["left_out"] == 1 and compared["num_queries"] == 5
    assert compared["per_run"] == pytest.approx([0.0, 0.12])
    # a question missing from one run's scores counts as unscored too
    scores = json.loads((two / "per_question.json").read_text())
    del scores["scores"]["f1"]["trained"]["q0"]
    (two / "per_question.json").write_text(json.dumps(scores))
    assert pool_runs([one, two])["differences"]["trained_vs_warm_start"]["f1"]["left_out"] == 1


def test_pool_runs_refuses_what_cannot_be_pooled(tmp_path):
    one = agent_run(tmp_path / "s0", [0.0] * 6, [1.0] * 6)
    with pytest.raises(DataError, match="at least two runs"):
        pool_runs([one])
    with pytest.raises(DataError, match="passed twice"):
        pool_runs([one, tmp_path / "s0" / ".." / "s0"])
    other = agent_run(tmp_path / "other", [0.0] * 6, [1.0] * 6, questions={**QUESTIONS, "q5": "another text"})
    with pytest.raises(DataError, match="evaluated on other questions") as error:
        pool_runs([one, other])
    assert "per_question.json" in str(error.value) and "same --eval-questions" in str(error.value)
    coaug = tmp_path / "coaug"
    coaug.mkdir()
    write_per_question(coaug, "coaug", {"ndcg@10": {"bm25": dict.fromkeys(QUESTIONS, 0.5)}}, questions=QUESTIONS)
    with pytest.raises(DataError, match="cannot be pooled with agent runs"):
        pool_runs([one, coaug])
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DataError, match="no per-question scores") as error:
        pool_runs([one, bare])
    assert "rerun the run's recipe command" in str(error.value)


def test_pool_command_prints_one_json_object_or_a_table(tmp_path, capsys):
    one = agent_run(tmp_path / "s0", [0.0] * 6, [1.0, 0, 0, 0, 0, 0])
    two = agent_run(tmp_path / "s1", [0.0] * 6, [0.0, 0, 0, 0, 0, 0.5])
    main(["recipe", "pool", str(one), str(two), "--json"])
    pooled = json.loads(capsys.readouterr().out)
    assert pooled["differences"]["trained_vs_warm_start"]["f1"]["num_runs"] == 2
    (one / "recipe.json").write_text(json.dumps({"checkpoints": {"trained": {"step": 24}}}))
    main(["recipe", "pool", str(one), str(two)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 agent runs, 6 questions (held-out.jsonl):"
    assert lines[1] == "  trained best/ at step 24, n/a (step 0: the starting policy)"
    assert any(line.startswith("trained vs warm_start: f1 +0.1250 over 2 runs (2 above 0;") for line in lines)
    # sampled episodes get their own lines, labelled with how many were played per question
    sampled = {"samples": 4, "scores": {"f1": {"warm_start": dict.fromkeys(QUESTIONS, 0.0),
                                               "trained": dict.fromkeys(QUESTIONS, 0.5)}}}
    three = agent_run(tmp_path / "s2", [0.0] * 6, [0.0] * 6, sampled=sampled)
    four = agent_run(tmp_path / "s3", [0.0] * 6, [0.0] * 6, sampled={**sampled, "samples": 2})
    main(["recipe", "pool", str(three), str(four)])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  sampled (2/4 per question) trained ") for line in lines)
    assert any(line.startswith("sampled (2/4 per question) trained vs warm_start: f1 +0.5000 over 2 runs") for line in lines)
    # a folder without scores: the usage error names it and the fix, no traceback
    (tmp_path / "bare").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["recipe", "pool", str(one), str(tmp_path / "bare")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "bare/per_question.json" in err and "Traceback" not in err
