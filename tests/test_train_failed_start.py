"""A failed start of `searchrl train` (a typo in the model) leaves nothing that refuses the corrected
command, and `train agent --force` replaces a run's stored configuration like `train coaug --force`."""

from __future__ import annotations

import json

import yaml

from searchrl.data.types import QAExample

QUESTIONS = [
    QAExample("q1", "Who was the commander of the crew?", ("James Lovell",), ("c1",)),
    QAExample("q2", "Which oxygen tank failed?", ("number two",), ("c2",)),
    QAExample("q3", "What served as a lifeboat?", ("lunar module",), ("c3",)),
    QAExample("q4", "Where was the splashdown?", ("Pacific Ocean",), ("c4",)),
]
DOCS = {
    "c1": "The commander of the crew was James Lovell.",
    "c2": "Oxygen tank number two failed.",
    "c3": "The lunar module served as a lifeboat.",
    "c4": "Splashdown happened in the Pacific Ocean.",
}


def _agent_config(tmp_path, model) -> dict:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in DOCS.items()))
    (data / "questions.jsonl").write_text("".join(
        json.dumps({"id": e.id, "question": e.question, "answers": list(e.answers), "gold_ids": list(e.gold_ids)}) + "\n"
        for e in QUESTIONS
    ))
    config = {
        "model": str(model),
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl"), "dev_size": 1},
        "tool": {"k": 1},
        "episode": {"max_turns": 1, "max_turn_tokens": 4, "max_model_tokens": 4},
        "lora": {"r": 2, "alpha": 4},
        "grpo": {"steps": 0},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return config


def run_cli(args, capsys) -> tuple[int, str]:
    from searchrl.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def test_train_agent_after_a_model_typo_the_corrected_command_runs(tmp_path, tiny_lm_dir, capsys):
    _agent_config(tmp_path, tmp_path / "no-such-modle")
    code, err = run_cli(["train", "agent", "--config", str(tmp_path / "agent.yaml")], capsys)
    assert code == 2 and "no-such-modle" in err
    assert not (tmp_path / "run" / "config.yaml").exists()
    code, err = run_cli(["train", "agent", "--config", str(tmp_path / "agent.yaml"), "--set", f"model={tiny_lm_dir}"], capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == str(tiny_lm_dir)


def test_train_coaug_with_a_model_typo_writes_no_config(tmp_path, capsys):
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "x"}) + "\n")
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": "x"}) + "\n" for q in ("q1", "q2")))
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (data / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td1\t1\n")
    config = tmp_path / "coaug.yaml"
    config.write_text(yaml.safe_dump({"model": str(tmp_path / "no-such-modle"), "data": str(data)}))
    code, err = run_cli(["train", "coaug", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "no-such-modle" in err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_train_agent_force_replaces_a_different_stored_config(tmp_path, tiny_lm_dir, capsys):
    _agent_config(tmp_path, tiny_lm_dir)
    args = ["train", "agent", "--config", str(tmp_path / "agent.yaml")]
    assert run_cli(args, capsys)[0] == 0
    code, err = run_cli(args + ["--set", "seed=7"], capsys)
    assert code == 2 and "seed" in err and "--force" in err
    code, err = run_cli(args + ["--set", "seed=7", "--force"], capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["seed"] == 7
    history = (tmp_path / "run" / "config-history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["forced"] is True
