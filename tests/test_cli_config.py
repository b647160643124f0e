"""A CLI that does not surprise: --print-config, "did you mean" for unknown keys, shell completion,
and the libraries' warnings kept off the terminal unless ``-v``."""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import pytest
import yaml

from searchrl.coaug.config import CoAugConfig
from searchrl.config import config_keys, load_config, suggest_keys
from test_cli_retrieval import CORPUS, QRELS, QUERIES, assert_user_error, run_cli, write_jsonl


@pytest.fixture
def coaug_yaml(tmp_path) -> Path:
    path = tmp_path / "coaug.yaml"
    path.write_text(yaml.safe_dump({"data": str(tmp_path / "beir"), "grpo": {"steps": 12}, "lora": {"r": 8}}))
    return path


def test_print_config_prints_the_resolved_config_and_every_key_with_its_help(coaug_yaml, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "coaug", "--config", coaug_yaml, "--set", "grpo.learning_rate=5e-4",
                             "--out", tmp_path / "run", "--print-config")
    assert code == 0, err
    assert not (tmp_path / "run").exists()  # nothing was trained
    printed = yaml.safe_load(out)
    assert printed == load_config(CoAugConfig, coaug_yaml, ["grpo.learning_rate=5e-4",
                                                            f"output_dir={tmp_path / 'run'}"]).model_dump(mode="json")
    assert printed["grpo"]["steps"] == 12 and printed["grpo"]["learning_rate"] == 5e-4 and printed["lora"]["r"] == 8
    # Every key with its type, default and the field's description, as comments (the text stays a config).
    key_lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("#   ")}
    assert set(key_lines) == {key.key for key in config_keys(CoAugConfig)}
    assert "RL steps" in key_lines["grpo.steps"] and "int, default 300" in key_lines["grpo.steps"]
    assert "colocate|server" in key_lines["grpo.vllm_mode"]
    again = tmp_path / "printed.yaml"
    again.write_text(out)
    assert load_config(CoAugConfig, again).model_dump() == load_config(CoAugConfig, coaug_yaml, [
        "grpo.learning_rate=5e-4", f"output_dir={tmp_path / 'run'}"]).model_dump()


def test_print_config_for_the_agent(tmp_path, capsys):
    config = tmp_path / "agent.yaml"
    config.write_text("tool:\n  k: 4\n")
    code, out, err = run_cli(capsys, "train", "agent", "--config", config, "--set", "episode.max_turns=3", "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["tool"]["k"] == 4 and printed["episode"]["max_turns"] == 3
    assert any(line.split()[1] == "retry_reward" and "ReZero" in line for line in out.splitlines() if line.startswith("#   "))


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("grpo.stpes=3", "did you mean grpo.steps?"),  # a typo inside the right section
        ("steps=3", "did you mean grpo.steps?"),  # the right name in the wrong section
        ("grpp.steps=3", "did you mean grpo?"),  # a typo in a section name
        ("lora.rank=4", "lora.r"),
    ],
)
def test_unknown_set_keys_get_a_suggestion(coaug_yaml, capsys, override, suggestion):
    code, out, err = run_cli(capsys, "train", "coaug", "--config", coaug_yaml, "--set", override, "--print-config")
    assert_user_error(code, err, "unknown key", suggestion)
    assert out == ""


def test_suggestions_and_their_absence():
    assert suggest_keys(CoAugConfig, ["eval", "evry"]) == ["eval.every"]
    assert suggest_keys(CoAugConfig, ["zzzzzz"]) == []
    with pytest.raises(Exception, match=r"zzzzzz: unknown key \(see the keys with --print-config\)"):
        load_config(CoAugConfig, None, ["data=x", "zzzzzz=1"])


def test_shell_completion_is_available(capsys, monkeypatch):
    # Name the shell rather than detect it from the parent processes, which differ from run to run.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    code, out, err = run_cli(capsys, "--show-completion", "bash")
    assert code == 0, err
    assert "_searchrl_completion" in out and "_SEARCHRL_COMPLETE" in out
    monkeypatch.setenv("_SEARCHRL_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "searchrl eval --save")
    monkeypatch.setenv("COMP_CWORD", "2")
    code, out, err = run_cli(capsys)
    assert code == 0, err
    assert out.split() == ["--save-run"]


def _library_module() -> types.ModuleType:
    """A stand-in dependency whose code warns, as transformers or datasets do."""
    module = types.ModuleType("fakelib")
    exec(
        "import warnings\n"
        "def build(*args, **kwargs):\n"
        "    warnings.warn('fakelib.old_api is deprecated', DeprecationWarning)\n"
        "    warnings.warn('fakelib advisory notice', UserWarning)\n"
        "    from searchrl.retrieval import BM25Retriever\n"
        "    return BM25Retriever()\n",
        module.__dict__,
    )
    return module


def test_library_warnings_show_only_with_verbose(tmp_path, capsys, monkeypatch):
    from searchrl.cli import retrieval as cli_retrieval

    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", CORPUS)
    write_jsonl(root / "queries.jsonl", QUERIES)
    (root / "qrels" / "test.tsv").write_text("\n".join(QRELS) + "\n")
    expansions = write_jsonl(tmp_path / "d.jsonl", [{"id": "d4", "expansion": "carbon"}])
    monkeypatch.setattr(cli_retrieval, "_build_retriever", lambda kind, model, options: _library_module().build())
    args = ["eval", "--data", root, "--split", "test", "--doc-expansions", expansions, "--json"]

    with warnings.catch_warnings():
        code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "fakelib" not in err
    assert "3 of 4 documents have no expansion" in " ".join(err.split())  # searchrl's own warnings still show

    with warnings.catch_warnings():
        code, out, err = run_cli(capsys, "-v", *args)
    assert code == 0, err
    assert "fakelib.old_api is deprecated" in err and "fakelib advisory notice" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.steps=3", "optim.steps is now grpo.steps"),
        ("optim.lr_scheduler=cosine", "optim.lr_scheduler is now grpo.lr_scheduler_type"),
        ("batch.samples_per_prompt=4", "batch.samples_per_prompt is now grpo.num_generations"),
        ("generation.temperature=0.9", "generation.temperature is now grpo.temperature"),
        ("save_every=5", "save_every is now grpo.save_steps"),
        ("keep_checkpoints=3", "keep_checkpoints is now grpo.save_total_limit"),
        ("engine=vllm", "engine is now grpo.use_vllm"),
        ("reward.bm25_k1=0.9", "reward.bm25_k1 is now bm25.k1"),
        ("dense_model=m", "dense_model is now encoder"),
        ("retriever=sparse", "retriever: sparse is now retriever: bm25"),
    ],
)
def test_old_coaug_keys_name_their_new_place(coaug_yaml, capsys, override, message):
    code, out, err = run_cli(capsys, "train", "coaug", "--config", coaug_yaml, "--set", override, "--print-config")
    assert out == ""
    assert_user_error(code, err, message)


def test_both_trainers_share_the_grpo_keys():
    from searchrl.agent.config import AgentTrainConfig
    from searchrl.training import GRPOSettings

    shared = {key.key for key in config_keys(GRPOSettings)}
    for model in (CoAugConfig, AgentTrainConfig):
        keys = {key.key for key in config_keys(model)}
        assert {f"grpo.{k}" for k in shared} <= keys, model.__name__
