"""Inputs that used to give silent zeros or ones: each is now scored correctly or refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchrl.cli import main
from searchrl.data.beir import load_beir, qrels_path
from searchrl.data.qa import check_gold_ids, load_qa
from searchrl.errors import ConfigError, DataError
from searchrl.metrics import evaluate_run, exact_match, token_f1


def run_cli(capsys, *args) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    _, err = capsys.readouterr()
    return code, " ".join(err.split())


@pytest.fixture
def beir(tmp_path) -> Path:
    root = tmp_path / "data" / "tiny"
    (root / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "text": "oxygen tank exploded"}, {"_id": "d2", "text": "crew splashed down"}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    queries = [{"_id": "q1", "text": "oxygen tank"}, {"_id": "q2", "text": "splashdown"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    return root


# --- answers that normalise to nothing ---------------------------------------------------------


@pytest.mark.parametrize("reference", ["A", "The", "an", "!!", "the."])
def test_a_reference_that_normalises_to_nothing_is_not_matched_by_any_empty_answer(reference):
    for prediction in ("", "the", "a", "?", "An."):
        if prediction.strip(".").lower() == reference.strip(".").lower():
            continue
        assert exact_match(prediction, [reference]) == 0.0, prediction
        assert token_f1(prediction, [reference]) == 0.0, prediction


def test_an_article_as_the_answer_still_matches_itself():
    # "A" is a fine answer to a multiple-choice question; it is compared without dropping articles.
    assert exact_match("a", ["A"]) == 1.0 and exact_match("A.", ["A"]) == 1.0
    assert token_f1("The", ["the"]) == 1.0
    assert exact_match("B", ["A"]) == 0.0
    assert exact_match("", ["A", "the moon"]) == 0.0 and exact_match("Moon", ["A", "the moon"]) == 1.0


# --- evaluations where nothing can be scored ------------------------------------------------------


def test_an_evaluation_with_no_scorable_query_raises():
    with pytest.raises(DataError, match="no query can be scored"):
        evaluate_run({"q1": {"d1": 0}, "q2": {"d2": 0}}, {"q1": {"d1": 1.0}}, ["ndcg@10"])
    with pytest.raises(DataError, match="no query can be scored"):
        evaluate_run({}, {"q1": {"d1": 1.0}}, ["ndcg@10"])


def test_eval_with_only_non_relevant_judgments_fails_instead_of_printing_zero(beir, capsys):
    (beir / "qrels" / "test.tsv").write_text("q1\td1\t0\nq2\td2\t0\n", encoding="utf-8")
    code, err = run_cli(capsys, "eval", "--data", beir, "--split", "test", "--json")
    assert code == 2 and "Traceback" not in err
    assert "no query can be scored" in err


# --- split names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["../..", "../tiny/qrels/test", "..", ".", "a/b", "/etc/passwd", "", "dev\\..\\x"])
def test_a_split_must_be_a_plain_name(beir, split):
    outside = beir.parent / "x.tsv"  # a file a path-shaped split could reach
    outside.write_text("q1\td1\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match="plain name"):
        qrels_path(beir, split)


def test_split_escaping_qrels_is_refused_on_the_command_line(beir, capsys):
    (beir / "test.tsv").write_text("q1\td1\t1\n", encoding="utf-8")  # beside qrels/, reachable as ../test
    code, err = run_cli(capsys, "eval", "--data", beir, "--split", "../test")
    assert code == 2 and "plain name" in err and "Traceback" not in err
    assert load_beir(beir, "test").split == "test"  # plain names still work


# --- gold ids ------------------------------------------------------------------------------------


def test_gold_ids_absent_from_the_corpus_are_refused(tmp_path):
    path = tmp_path / "questions.jsonl"
    rows = [
        {"id": "a", "question": "What exploded?", "answers": ["oxygen tank"], "gold_ids": ["d1"]},
        {"id": "b", "question": "Where did they land?", "answers": ["ocean"], "gold_ids": ["d2", "d9"]},
        {"id": "c", "question": "Who?", "answers": ["Lovell"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples = load_qa(path)
    check_gold_ids(examples, {"d1", "d2", "d9"}, path)  # all present: fine; no gold_ids: fine
    with pytest.raises(DataError) as err:
        check_gold_ids(examples, {"d1", "d2"}, path)
    message = err.value.format()
    assert str(path) in message and "'b'" in message and "'d9'" in message and "not in the corpus" in message
    assert err.value.hint


def test_agent_eval_checks_gold_ids_against_the_corpus(beir, tmp_path, capsys, monkeypatch):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"id": "a", "question": "What exploded?", "answers": ["tank"], "gold_ids": ["nope"]}) + "\n",
        encoding="utf-8",
    )

    class Loaded:  # the agent as far as the check needs it: its search tool's corpus
        class tool:
            corpus = {"d1": None, "d2": None}

    monkeypatch.setattr("searchrl.cli.agent._load_agent", lambda *a, **k: Loaded())
    monkeypatch.setattr("searchrl.agent.evaluate.evaluate_agent", lambda *a, **k: pytest.fail("evaluated anyway"))
    code, err = run_cli(capsys, "agent", "eval", "--questions", questions, "--data", beir)
    assert code == 2 and "'nope'" in err and "not in the corpus" in err


# --- shards --------------------------------------------------------------------------------------


def test_an_empty_shard_is_an_error_not_the_whole_corpus(beir, tmp_path, capsys):
    code, err = run_cli(capsys, "augment", "corpus", "--data", beir, "--out", tmp_path / "out",
                        "--model", tmp_path / "no-such-model", "--shard", "")
    assert code == 2 and "shard '' is not of the form i/n" in err
    assert not (tmp_path / "out").exists()


def test_config_duplicate_keys_are_refused(tmp_path):
    from pydantic import BaseModel

    from searchrl.config import load_config

    class Config(BaseModel):
        steps: int = 1

    path = tmp_path / "c.yaml"
    path.write_text("steps: 1\nsteps: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key 'steps'"):
        load_config(Config, path)
