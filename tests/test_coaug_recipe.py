"""``searchrl recipe coaug`` end to end with the tiny model: train, expand, compare, resume."""

from __future__ import annotations

import json

import pytest

from searchrl.cli import main
from searchrl.coaug import recipe as recipe_module
from searchrl.coaug.dataset import DevSelection
from searchrl.errors import ConfigError
from test_coaug_train import TOPICS, tiny_config, write_tiny_beir


def tiny_beir_with_test(directory):
    folder = write_tiny_beir(directory)
    header = "query-id\tcorpus-id\tscore\n"
    (folder / "qrels" / "test.tsv").write_text(header + f"q{len(TOPICS) - 1}\td{len(TOPICS) - 1}-1\t1\n")
    return folder


def test_recipe_trains_expands_and_compares_then_resumes_without_work(tiny_lm_dir, tmp_path, monkeypatch):
    from searchrl.runs import RunDirectory

    data = tiny_beir_with_test(tmp_path / "beir")
    out = tmp_path / "run"
    config = tiny_config(tiny_lm_dir, data, out, grpo__steps=1, eval__every=1)
    keep = RunDirectory.update_best
    with monkeypatch.context() as patch:  # the tiny model's step 1 rarely beats step 0: make every evaluation win
        patch.setattr(RunDirectory, "update_best", lambda self, *a, **k: keep(self, *a, **{**k, "min_delta": -1.0}))
        summary = recipe_module.run_coaug_recipe(config, eval_split="test", out=out)
    assert summary["checkpoint"]["step"] == 1 and "note" not in summary["checkpoint"]
    assert {"bm25", "untrained", "trained", "num_queries", "selection", "checkpoint"} <= set(summary)
    assert summary["num_queries"] == 1 and summary["queries"] == "all 1 judged queries of test"
    for name in ("bm25", "untrained", "trained"):
        assert 0.0 <= summary[name] <= 1.0 and summary[name] == summary["measures"][name]["ndcg@10"]
    # both policies expanded every document and the evaluation query
    for name in ("untrained", "trained"):
        lines = (out / "expansions" / name / "corpus" / "expansions.jsonl").read_text().splitlines()
        assert len(lines) == 32
        assert (out / "expansions" / name / "queries-test" / "expansions.jsonl").read_text().count("\n") == 1
    assert json.loads((out / "recipe.json").read_text())["trained"] == summary["trained"]
    # query by query: the mean difference is the difference of the means
    for key in ("trained_vs_untrained", "trained_vs_bm25", "untrained_vs_bm25"):
        name, baseline = key.split("_vs_")
        difference = summary["differences"][key]
        assert difference["metric"] == "ndcg@10" and difference["num_queries"] == 1
        assert difference["mean"] == pytest.approx(summary[name] - summary[baseline])

    # each query's nDCG@10 for pooling runs: the means are the figures printed
    scores = json.loads((out / "per_question.json").read_text())
    assert scores["recipe"] == "coaug" and len(scores["questions"]) == 1
    for name in ("bm25", "untrained", "trained"):
        assert list(scores["scores"]["ndcg@10"][name].values()) == pytest.approx([summary[name]])

    # rerun: nothing is trained or generated again, and the figures are the same
    def fail(*args, **kwargs):
        raise AssertionError("a finished part ran again")

    monkeypatch.setattr("searchrl.coaug.train.train_coaug", fail)
    monkeypatch.setattr("searchrl.llm.build_engine", fail)
    again = recipe_module.run_coaug_recipe(config, eval_split="test", out=out)
    assert {k: again[k] for k in ("bm25", "untrained", "trained")} == {k: summary[k] for k in ("bm25", "untrained", "trained")}

    # the finished run under another configuration is not reported as if it were this one
    monkeypatch.undo()
    other = config.model_copy(update={"lora": config.lora.model_copy(update={"r": config.lora.r * 2})})
    with pytest.raises(ConfigError, match="different configuration: lora.r"):
        recipe_module.run_coaug_recipe(other, eval_split="test", out=out)


def test_recipe_on_dev_reports_only_queries_that_did_not_choose_the_checkpoint(tiny_lm_dir, tmp_path):
    data = tiny_beir_with_test(tmp_path / "beir")
    out = tmp_path / "run"
    config = tiny_config(tiny_lm_dir, data, out, grpo__steps=1, eval__every=1, mode="query", grpo__micro_batch_size=4)
    summary = recipe_module.run_coaug_recipe(config, eval_split="dev", out=out)
    selection = DevSelection.load(out / "selection.json")
    assert summary["num_queries"] == len(selection.report) == 1
    assert "held out from checkpoint selection" in summary["queries"]
    assert not (out / "expansions" / "trained" / "corpus").exists()  # query mode expands no document
    with pytest.raises(ConfigError, match="training split"):
        recipe_module.run_coaug_recipe(config, eval_split="train", out=out)


def test_a_run_whose_checkpoints_never_clear_min_delta_reports_the_untrained_expansions_as_trained(
        tiny_lm_dir, tmp_path):
    data = tiny_beir_with_test(tmp_path / "beir")
    out = tmp_path / "run"
    config = tiny_config(tiny_lm_dir, data, out, grpo__steps=1, eval__every=1, mode="query", grpo__micro_batch_size=4,
                         eval__min_delta=2.0)
    summary = recipe_module.run_coaug_recipe(config, eval_split="test", out=out)
    assert summary["checkpoint"]["step"] == 0 and "eval.min_delta (2.0)" in summary["checkpoint"]["note"]
    assert summary["trained"] == summary["untrained"]
    assert summary["differences"]["trained_vs_untrained"]["mean"] == 0
    assert not (out / "expansions" / "trained").exists()  # best/ is the untrained policy: nothing is expanded twice


def test_recipe_command_prints_one_json_object(tiny_lm_dir, tmp_path, capsys):
    data = tiny_beir_with_test(tmp_path / "beir")
    out = tmp_path / "run"
    config = tiny_config(tiny_lm_dir, data, out, grpo__steps=1, eval__every=1, mode="query", grpo__micro_batch_size=4)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    main(["recipe", "coaug", "--data", str(data), "--eval-split", "test", "--out", str(out), "--config", str(path),
          "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["eval_split"] == "test" and printed["num_queries"] == 1
    # without --json (the finished run is only rescored): three scores, then one line per comparison
    main(["recipe", "coaug", "--data", str(data), "--eval-split", "test", "--out", str(out), "--config", str(path)])
    text = capsys.readouterr().out
    assert f"  trained    {printed['trained']:.4f}" in text.splitlines()
    assert "trained vs untrained: ndcg@10 " in text and "untrained vs bm25: ndcg@10 " in text


def test_checkpoints_chosen_on_held_out_training_queries_leave_all_of_dev_for_reporting(tiny_lm_dir, tmp_path):
    from searchrl.coaug.train import prepare_coaug

    data = tiny_beir_with_test(tmp_path / "beir")
    out = tmp_path / "run"
    config = tiny_config(tiny_lm_dir, data, out, grpo__steps=1, eval__every=1, mode="query", grpo__micro_batch_size=4,
                         eval__select_on="train", eval__max_queries=2)
    setup = prepare_coaug(config)
    selection = DevSelection.load(out / "selection.json")
    assert selection.select_split == "train" and len(selection.select) == 2
    assert sorted(setup.evaluator.queries) == sorted(selection.select)  # they choose the checkpoint ...
    assert not set(selection.select) & set(setup.builder.queries)  # ... and are never trained on
    assert len(setup.builder.queries) == 6 - 2
    assert sorted(selection.report) == ["q6", "q7"]  # every judged dev query only reports
    setup.run.close()
    summary = recipe_module.run_coaug_recipe(config, eval_split="dev", out=out)
    assert summary["num_queries"] == 2 and "chosen on held-out training queries" in summary["queries"]
    assert summary["selection"].startswith("2 train queries held out of RL training")
    with pytest.raises(Exception, match="needs eval.max_queries"):
        tiny_config(tiny_lm_dir, data, out, eval__select_on="train", eval__max_queries=None)
