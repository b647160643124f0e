"""`agent eval` resumes by content, not by path: changed answers or a retrained checkpoint at the
same path never reuse stale scores."""

from __future__ import annotations

import json
import shutil

import pytest

from searchrl.agent.episode import ScriptedPolicy
from searchrl.agent.evaluate import evaluate_agent
from searchrl.agent.tool import SearchTool
from searchrl.data.types import Document, QAExample
from searchrl.retrieval import build_retriever

CORPUS = {
    "c1": Document("c1", "The commander of Apollo 13 was Jim Lovell."),
    "c2": Document("c2", "Oxygen tank number two exploded."),
}
SCRIPTS = {
    "Who commanded Apollo 13?": ["<search>commander</search>", "<answer>Jim Lovell</answer>"],
    "What exploded?": ["<search>exploded</search>", "<answer>oxygen tank</answer>"],
}


def _tool():
    return SearchTool(build_retriever("bm25").index(list(CORPUS.values()), show_progress=False), CORPUS, k=1)


def _examples(first_answer: str = "Jim Lovell"):
    return [
        QAExample("q1", "Who commanded Apollo 13?", (first_answer,), ("c1",)),
        QAExample("q2", "What exploded?", ("oxygen tank",), ("c2",)),
    ]


def test_a_question_whose_answers_changed_is_evaluated_again(tokenizer, tmp_path):
    out = tmp_path / "t.jsonl"
    policy = ScriptedPolicy(tokenizer, SCRIPTS)
    first = evaluate_agent(policy, _tool(), _examples("Fred Haise"), out_path=out, run_info={"model": "m"}, show_progress=False)
    assert first.metrics["em"] == 0.5
    policy.calls.clear()
    # The reference answer of q1 was wrong and is fixed; the file path is the same.
    fixed = evaluate_agent(policy, _tool(), _examples("Jim Lovell"), out_path=out, run_info={"model": "m"}, show_progress=False)
    assert fixed.metrics["em"] == 1.0
    assert policy.calls == [1, 1]  # only the changed question was played again (two turns, one episode)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["question_id"] for r in records) == ["q1", "q2"]  # the stale q1 is gone, not duplicated


def _write_data(folder):
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "title": "", "text": d.text}) + "\n" for d in CORPUS.values()))
    questions = folder / "questions.jsonl"
    questions.write_text("".join(
        json.dumps({"id": e.id, "question": e.question, "answers": list(e.answers), "gold_ids": list(e.gold_ids)}) + "\n"
        for e in _examples()
    ))
    return questions


def _perturb(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_a_retrained_checkpoint_at_the_same_path_is_not_reused(tiny_lm_dir, tmp_path, capsys):
    from searchrl.cli import main

    questions = _write_data(tmp_path / "data")
    model = tmp_path / "run" / "best"
    shutil.copytree(tiny_lm_dir, model)
    out = tmp_path / "transcripts.jsonl"
    args = ["agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"), "--model", str(model),
            "--json", "--out", str(out), "--max-turns", "1", "--max-turn-tokens", "4", "--device", "cpu"]
    main(args)
    capsys.readouterr()
    # The same files copied elsewhere are the same evaluation: resumed, not refused.
    shutil.copytree(tmp_path / "data", tmp_path / "data-copy")
    moved = [a if a != str(tmp_path / "data") else str(tmp_path / "data-copy") for a in args]
    moved[moved.index("--questions") + 1] = str(tmp_path / "data-copy" / "questions.jsonl")
    main(moved)
    assert json.loads(capsys.readouterr().out)["num_questions"] == 2
    assert len(out.read_text().splitlines()) == 2

    _perturb(model)  # more training, same path
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert "different settings" in captured.err and "--overwrite" in captured.err
