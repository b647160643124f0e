"""``searchrl recipe agent`` end to end with the tiny model: warm-start, GRPO, ablation, held-out check, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from searchrl.agent import recipe as recipe_module
from searchrl.agent.recipe import ABLATION_SAMPLES
from searchrl.cli import main
from searchrl.errors import DataError

TOPICS = [
    ("oxygen tank", "The oxygen tank number two failed at 55 hours into the flight.", "When did the oxygen tank fail?", "55 hours"),
    ("commander", "The commander of the crew was James Lovell, a Navy captain.", "Who was the commander?", "James Lovell"),
    ("lifeboat", "The lunar module served as a lifeboat with batteries and water.", "What served as a lifeboat?", "lunar module"),
    ("splashdown", "Splashdown happened in the Pacific Ocean near Samoa.", "Where was the splashdown?", "Pacific Ocean"),
    ("pilot", "The command module pilot was John Swigert after a late crew change.", "Who was the pilot?", "John Swigert"),
    ("filters", "Carbon dioxide filters were adapted with tape and cardboard.", "How were the filters adapted?", "tape and cardboard"),
    ("launch", "The launch took place from Kennedy Space Center on April 11.", "When was the launch?", "April 11"),
    ("reentry", "Reentry began after the service module was jettisoned.", "What was jettisoned before reentry?", "service module"),
    ("power", "Power was saved by shutting down the command module computer.", "How was power saved?", "shutting down"),
    ("water", "Water was rationed to six ounces a day per crewman.", "How much water per day?", "six ounces"),
]


def write_data(directory, topics=TOPICS):
    """corpus.jsonl (one chunk per topic) and questions.jsonl (one question per chunk)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as handle:
        for i, (title, text, _, _) in enumerate(topics):
            handle.write(json.dumps({"_id": f"c{i}", "title": title, "text": text}) + "\n")
    with open(directory / "questions.jsonl", "w") as handle:
        for i, (_, _, question, answer) in enumerate(topics[:8]):
            handle.write(json.dumps({"id": f"q{i}", "question": question, "answers": [answer], "gold_ids": [f"c{i}"]}) + "\n")
    return directory


def write_eval_questions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_recipe(tiny_lm_dir, path):
    config = {
        "model": str(tiny_lm_dir),
        "device": "cpu",
        "data": {"dev_size": 4},
        "tool": {"k": 2},
        "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
        "rewards": {"metric": "f1"},
        "lora": {"r": 4, "alpha": 8},
        "sft": {"enabled": True, "max_steps": 1, "batch_size": 2, "max_tokens": 4096, "retry_fraction": 0.5},
        "grpo": {"steps": 1, "prompts_per_step": 1, "num_generations": 2, "save_steps": 1, "preset": "rezero"},
        "eval": {"every": 1, "report_fraction": 0.5},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_recipe_command_trains_ablates_evaluates_and_resumes(tiny_lm_dir, tmp_path, capsys, monkeypatch):
    data = write_data(tmp_path / "data")
    config = tiny_recipe(tiny_lm_dir, tmp_path / "agent.yaml")
    # Two questions about chunks no training question uses, and one about a chunk the run trains or develops on.
    held_out = write_eval_questions(tmp_path / "held-out.jsonl", [
        {"id": "h8", "question": "How was power saved?", "answers": ["shutting down"], "gold_ids": ["c8"]},
        {"id": "h9", "question": "How much water per day?", "answers": ["six ounces"], "gold_ids": ["c9"]},
        {"id": "h0", "question": "Which oxygen tank failed?", "answers": ["number two"], "gold_ids": ["c0"]},
    ])
    out = tmp_path / "run"
    argv = ["recipe", "agent", "--data", str(data), "--eval-questions", str(held_out), "--out", str(out),
            "--config", str(config), "--ablate-retry", "--json"]
    with pytest.warns(UserWarning, match="left out 1 of 3"):
        main(argv)
    summary = json.loads(capsys.readouterr().out)

    names = ("warm_start", "trained", "trained_no_retry")
    for name in names:
        assert {"em", "f1", "searches_per_episode", "retries_per_episode"} <= set(summary[name])
        assert summary[name]["num_questions"] == 2
        assert 0.0 <= summary[name]["f1"] <= 1.0
        # A best/ that is the warm-start itself (step 0) holds the same weights: it is not played again.
        played = name == "warm_start" or not summary["checkpoints"][name]["is_warm_start"]
        assert (out / "eval" / f"{name}.jsonl").exists() == played
        if played:
            assert (out / "eval" / f"{name}.jsonl").read_text().count("\n") == 2
        else:
            assert summary[name] == summary["warm_start"]
    assert summary["eval_questions"]["evaluated"] == 2 and summary["eval_questions"]["left_out"] == 1
    assert json.loads((out / "recipe.json").read_text()) == summary
    # The ablation asks whether the retry reward changes retrying: by default each policy also plays
    # ABLATION_SAMPLES sampled episodes per question; --samples 0 leaves them out (greedy figures unchanged).
    assert summary["sampled"]["samples_per_question"] == ABLATION_SAMPLES
    assert (out / "eval" / f"warm_start.sampled-{ABLATION_SAMPLES}.jsonl").read_text().count("\n") == 2 * ABLATION_SAMPLES
    with pytest.warns(UserWarning, match="left out"):
        main([*argv, "--samples", "0"])
    greedy_only = json.loads(capsys.readouterr().out)
    assert "sampled" not in greedy_only and {k: greedy_only[k] for k in names} == {k: summary[k] for k in names}
    # Question by question against the warm-start (and arm against arm), on the selection metric.
    assert set(summary["differences"]) == {"trained_vs_warm_start", "trained_no_retry_vs_warm_start",
                                           "trained_vs_trained_no_retry"}
    for key, difference in summary["differences"].items():
        name, baseline = key.split("_vs_")
        assert difference["metric"] == "f1" and difference["num_queries"] == 2
        assert difference["better"] + difference["worse"] + difference["ties"] == 2
        assert difference["mean"] == pytest.approx(summary[name]["f1"] - summary[baseline]["f1"])
        assert difference["low"] <= difference["mean"] <= difference["high"]

    # The ablation starts from the main run's warm-start and has no retry reward.
    ablation = yaml.safe_load((out / "no-retry" / "config.yaml").read_text())
    assert ablation["retry_reward"] is False and ablation["sft"]["enabled"] is False
    assert ablation["init_adapter"] == str(out / "sft" / "adapter") and not (out / "no-retry" / "sft").exists()
    main_config = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: v for k, v in ablation["grpo"].items()} == main_config["grpo"]
    assert main_config["grpo"]["beta"] == 0.04 and main_config["grpo"]["scale_rewards"] == "group"  # the rezero preset

    # The selection and report parts of dev share no gold chunk; only the selection part chose best/.
    selection = json.loads((out / "selection.json").read_text())
    assert selection["select"] and selection["report"] and not set(selection["select"]) & set(selection["report"])
    best_step = json.loads((out / "best.json").read_text())["step"]
    assert summary["checkpoints"]["trained"]["is_warm_start"] == (best_step == 0)

    # --samples 2 on the finished run: each policy also plays two sampled episodes per question, at the rollouts'
    # temperature; the greedy figures are the cached ones, unchanged.
    with pytest.warns(UserWarning, match="left out"):
        main([*argv, "--samples", "2"])
    with_samples = json.loads(capsys.readouterr().out)
    assert {k: with_samples[k] for k in names} == {k: summary[k] for k in names}
    sampled = with_samples["sampled"]
    assert (sampled["samples_per_question"], sampled["num_questions"]) == (2, 2)
    assert sampled["temperature"] == main_config["grpo"]["temperature"]
    for name in names:
        played = name == "warm_start" or not summary["checkpoints"][name]["is_warm_start"]
        path = out / "eval" / f"{name}.sampled-2.jsonl"
        assert path.exists() == played
        if not played:
            assert sampled[name] == sampled["warm_start"]
            continue
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert sorted(r["question_id"] for r in records) == ["h8~0", "h8~1", "h9~0", "h9~1"]
        retries = [max(len(r["searches"]) - 1, 0) for r in records]
        assert sampled[name]["retries_per_episode"] == pytest.approx(sum(retries) / 4)
        assert sampled[name]["f1"] == pytest.approx(sum(r["scores"]["f1"] for r in records) / 4)
        cached = json.loads((out / "eval" / f"{name}.sampled-2.json").read_text())["identity"]
        assert cached["samples"] == 2 and cached["episode"]["temperature"] == main_config["grpo"]["temperature"]
    assert set(sampled["differences"]) == set(summary["differences"])
    for key, by_metric in sampled["differences"].items():
        name, baseline = key.split("_vs_")
        assert set(by_metric) == {"retries_per_episode", "f1"}
        for metric, difference in by_metric.items():
            assert difference["num_queries"] == 2
            assert difference["mean"] == pytest.approx(sampled[name][metric] - sampled[baseline][metric])

    # Each policy's score on each question, for pooling runs: the means are the figures printed.
    scores = json.loads((out / "per_question.json").read_text())
    assert scores["recipe"] == "agent" and set(scores["questions"]) == {"h8", "h9"}
    for name in names:
        for metric in ("f1", "em", "retries_per_episode"):
            values = scores["scores"][metric][name]
            assert set(values) == {"h8", "h9"} and sum(values.values()) / 2 == pytest.approx(summary[name][metric])
        assert scores["sampled"]["samples"] == 2
        for metric in ("f1", "retries_per_episode"):
            values = scores["sampled"]["scores"][metric][name]
            assert sum(values.values()) / 2 == pytest.approx(sampled[name][metric])
    # Two copies of one run pool to that run's own comparison.
    shutil.copytree(out, tmp_path / "copy")
    main(["recipe", "pool", str(out), str(tmp_path / "copy"), "--json"])
    pooled = json.loads(capsys.readouterr().out)
    for key, difference in summary["differences"].items():
        assert pooled["differences"][key]["f1"]["mean"] == pytest.approx(difference["mean"])
        assert pooled["differences"][key]["f1"]["per_run"] == pytest.approx([difference["mean"]] * 2)
    assert pooled["checkpoint_steps"]["trained"] == [best_step] * 2

    # Rerunning skips every finished part: no training, no evaluation, greedy or sampled.
    def fail(*args, **kwargs):
        raise AssertionError("a finished part ran again")

    monkeypatch.setattr("searchrl.agent.train.train_agent", fail)
    monkeypatch.setattr("searchrl.agent.train._play_dev", fail)
    with pytest.warns(UserWarning, match="left out"):
        main([*argv, "--samples", "2"])
    again = json.loads(capsys.readouterr().out)
    assert {k: again[k] for k in (*names, "sampled")} == {k: with_samples[k] for k in (*names, "sampled")}

    # Without --json: the table, then one line per comparison.
    with pytest.warns(UserWarning, match="left out"):
        main(argv[:-1])
    lines = capsys.readouterr().out.splitlines()
    compared = summary["differences"]["trained_vs_warm_start"]
    assert (f"trained vs warm_start: f1 {compared['mean']:+.4f} (95% interval {compared['low']:+.4f} to "
            f"{compared['high']:+.4f}; better on {compared['better']}, worse on {compared['worse']} of 2)") in lines
    assert any(line.startswith("trained vs trained_no_retry: f1 ") for line in lines)
    with pytest.warns(UserWarning, match="left out"):
        main([*argv[:-1], "--samples", "2"])
    lines = capsys.readouterr().out.splitlines()
    compared = sampled["differences"]["trained_vs_trained_no_retry"]["retries_per_episode"]
    assert (f"sampled trained vs trained_no_retry: retries_per_episode {compared['mean']:+.4f} (95% interval "
            f"{compared['low']:+.4f} to {compared['high']:+.4f}; more on {compared['better']}, fewer on "
            f"{compared['worse']} of 2)") in lines


def test_recipe_refuses_evaluation_questions_that_all_overlap_training(tiny_lm_dir, tmp_path, capsys):
    data = write_data(tmp_path / "data")
    config = tiny_recipe(tiny_lm_dir, tmp_path / "agent.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "agent", "--data", str(data), "--eval-questions", str(data / "questions.jsonl"),
              "--out", str(tmp_path / "run"), "--config", str(config), "--set", "grpo.steps=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "share an id or a gold document" in err and "Traceback" not in err


def test_held_out_check_by_id_and_by_gold_document(tmp_path):
    from searchrl.data.types import QAExample

    seen = [QAExample("a", "?", ("x",), ("c1",)), QAExample("b", "?", ("y",), ("c2", "c3"))]
    path = write_eval_questions(tmp_path / "eval.jsonl", [
        {"id": "a", "question": "same id", "answers": ["x"], "gold_ids": ["c9"]},
        {"id": "z", "question": "same chunk", "answers": ["x"], "gold_ids": ["c3"]},
        {"id": "k", "question": "new", "answers": ["x"], "gold_ids": ["c7"]},
    ])
    with pytest.warns(UserWarning, match="left out 2 of 3"):
        kept, left_out = recipe_module.held_out_questions(path, seen)
    assert [e.id for e in kept] == ["k"] and left_out == 2
    with pytest.raises(DataError, match="all 1 evaluation questions"):
        recipe_module.held_out_questions(write_eval_questions(tmp_path / "bad.jsonl", [
            {"id": "q", "question": "?", "answers": ["x"], "gold_ids": ["c1"]}]), seen)


def test_recipe_config_points_at_the_data_folder(tmp_path):
    from searchrl.agent.config import AgentTrainConfig

    data = write_data(tmp_path / "data")
    (data / "paraphrases.jsonl").write_text(json.dumps({"_id": "p1", "text": "a paraphrase", "source_id": "c0"}) + "\n")
    config = AgentTrainConfig.model_validate({"tool": {"noise": {"distractors": "paraphrases.jsonl"}}})
    resolved = recipe_module.recipe_config(config, data=data, out=tmp_path / "run")
    assert resolved.data.corpus == data.resolve() / "corpus.jsonl"
    assert resolved.data.questions == data.resolve() / "questions.jsonl"
    assert resolved.tool.noise.distractors == data.resolve() / "paraphrases.jsonl"  # relative to --data
    other = write_eval_questions(tmp_path / "mine.jsonl", [])
    given = config.model_copy(update={"data": config.data.model_copy(update={"questions": other})})
    assert recipe_module.recipe_config(given, data=data, out=tmp_path / "run").data.questions == other.resolve()


def test_comparison_leaves_out_questions_a_failed_search_left_unscored(tmp_path):
    from searchrl.agent.evaluate import example_key
    from searchrl.data.types import QAExample

    examples = [QAExample(id=f"q{i}", question=f"question {i}?", answers=("x",), gold_ids=(f"c{i}",)) for i in range(3)]

    def transcripts(name, f1s):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"question_id": e.id, "example_key": example_key(e), "scores": {"f1": f1}}) + "\n"
                                for e, f1 in zip(examples, f1s)))
        return path

    compared = recipe_module.compare_policies(
        {"warm_start": transcripts("warm", [0.0, 0.5, 0.2]), "trained": transcripts("trained", [1.0, None, 0.2])},
        examples, "f1")
    difference = compared["trained_vs_warm_start"]
    assert difference["left_out"] == 1 and difference["num_queries"] == 2
    assert difference["mean"] == pytest.approx(0.5) and (difference["better"], difference["ties"]) == (1, 1)


def test_sampled_comparison_averages_each_questions_episodes(tmp_path):
    from searchrl.agent.evaluate import example_key
    from searchrl.data.types import QAExample

    examples = [QAExample(id=f"q{i}", question=f"question {i}?", answers=("x",), gold_ids=(f"c{i}",)) for i in range(2)]

    def transcripts(name, episodes):
        """``episodes``: per question, (searches, f1) of each sampled copy; f1 None marks a failed search tool."""
        rows = []
        for example, copies in zip(examples, episodes):
            for j, (searches, f1) in enumerate(copies):
                rows.append({"question_id": f"{example.id}~{j}", "example_key": example_key(example),
                             "searches": [{}] * searches, "finish_reason": "tool_error" if f1 is None else "answered",
                             "scores": {"f1": f1}})
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    warm = transcripts("warm", [[(1, 0.0), (1, 1.0), (1, 0.5)], [(1, 0.0), (1, 0.0), (1, 0.0)]])
    # q0: retried twice in three episodes (2 searches, then 3 searches: 1 and 2 retries), q1: once in two scored ones.
    trained = transcripts("trained", [[(2, 1.0), (3, 1.0), (1, 0.0)], [(2, 1.0), (1, 0.0), (4, None)]])
    compared = recipe_module.compare_sampled({"warm_start": warm, "trained": trained}, examples, 3)
    retries, f1 = compared["trained_vs_warm_start"]["retries_per_episode"], compared["trained_vs_warm_start"]["f1"]
    assert retries["mean"] == pytest.approx(((1 + 2 + 0) / 3 + (1 + 0) / 2) / 2)  # the failed episode is left out
    assert (retries["better"], retries["worse"], retries["num_queries"]) == (2, 0, 2)
    assert f1["mean"] == pytest.approx(((2 / 3 - 0.5) + (0.5 - 0.0)) / 2)
    # A transcript missing an episode is an error that says to rerun, not a mean over fewer.
    short = transcripts("short", [[(1, 0.0)] * 3, [(1, 0.0)] * 2])
    with pytest.raises(DataError, match="hold 5 of the 6 episodes"):
        recipe_module.compare_sampled({"warm_start": short, "trained": trained}, examples, 3)


def test_a_finished_evaluation_of_other_settings_is_played_again(tiny_lm_dir, tmp_path):
    from searchrl.agent.config import load_agent_config
    from searchrl.data.types import QAExample

    data = write_data(tmp_path / "data")
    config = recipe_module.recipe_config(
        load_agent_config(str(tiny_recipe(tiny_lm_dir, tmp_path / "agent.yaml"))), data=data, out=tmp_path / "run")
    examples = [QAExample(id="h8", question="How was power saved?", answers=("shutting down",), gold_ids=("c8",))]
    out_path = tmp_path / "run" / "eval" / "warm_start.jsonl"
    first = recipe_module.evaluate_policy(config, None, examples, out_path)
    first_key = json.loads(out_path.read_text().splitlines()[0])["eval_key"]

    # The same transcripts file, now for other limits: played again under them, not refused.
    other = config.model_copy(update={"episode": config.episode.model_copy(update={"max_turns": 1})})
    second = recipe_module.evaluate_policy(other, None, examples, out_path)
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(records) == 1 and records[0]["eval_key"] != first_key
    assert second["turns_per_episode"] <= 1 and first["num_questions"] == second["num_questions"] == 1
    cached = json.loads(out_path.with_suffix(".json").read_text())
    assert cached["identity"]["episode"]["max_turns"] == 1 and cached["metrics"] == second


def test_an_evaluation_cut_short_resumes_under_its_settings_and_is_played_again_under_others(tiny_lm_dir, tmp_path):
    from searchrl.agent.config import load_agent_config
    from searchrl.data.types import QAExample

    data = write_data(tmp_path / "data")
    config = recipe_module.recipe_config(
        load_agent_config(str(tiny_recipe(tiny_lm_dir, tmp_path / "agent.yaml"))), data=data, out=tmp_path / "run")
    examples = [QAExample(id="h8", question="How was power saved?", answers=("shutting down",), gold_ids=("c8",)),
                QAExample(id="h9", question="How much water per day?", answers=("six ounces",), gold_ids=("c9",))]
    out_path = tmp_path / "run" / "eval" / "warm_start.jsonl"
    cache = out_path.with_suffix(".json")
    recipe_module.evaluate_policy(config, None, examples, out_path)
    finished = out_path.read_text().splitlines()

    def cut_short():
        # What an interruption after the first question leaves: one transcript, the identity without metrics.
        out_path.write_text(finished[0] + "\n")
        stored = json.loads(cache.read_text())
        cache.write_text(json.dumps({**stored, "metrics": None}))

    cut_short()
    resumed = recipe_module.evaluate_policy(config, None, examples, out_path)
    assert out_path.read_text().splitlines()[0] == finished[0] and resumed["num_questions"] == 2
    assert json.loads(cache.read_text())["metrics"] == resumed

    # Cut short again, then rerun under other limits: played again from the start, not refused.
    cut_short()
    other = config.model_copy(update={"episode": config.episode.model_copy(update={"max_turns": 1})})
    played = recipe_module.evaluate_policy(other, None, examples, out_path)
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(records) == 2 and {r["eval_key"] for r in records} != {json.loads(finished[0])["eval_key"]}
    assert played["num_questions"] == 2 and json.loads(cache.read_text())["identity"]["episode"]["max_turns"] == 1
