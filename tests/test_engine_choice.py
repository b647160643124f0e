"""`--engine auto` (the default of `augment` and `agent eval`): vLLM where it is installed and runs
here, else transformers; and the choice reaching the engine factory with the right options."""

from __future__ import annotations

import json
import sys

import pytest
from test_agent_episode import _write_tiny_data
from test_augment import beir_folder, fake_build_engine, run_cli  # noqa: F401 (fixtures)

import searchrl.llm as llm
from searchrl.cli import main


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)


@pytest.fixture
def usable_vllm(monkeypatch):
    monkeypatch.setattr(llm, "vllm_device", lambda: "cpu")


def test_augment_defaults_to_transformers_without_vllm(no_vllm, beir_folder, tmp_path, fake_build_engine, capsys):
    assert run_cli(["augment", "corpus", "--data", str(beir_folder), "--out", str(tmp_path / "o"), "--model", "m",
                    "--no-progress"]) == 0
    assert fake_build_engine == [("transformers", {"batch_size": 16, "model": "m"})]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["settings"]["engine"] == "transformers"  # the engine that ran, not "auto"


def test_augment_defaults_to_vllm_where_it_runs_with_bigger_batches(usable_vllm, beir_folder, tmp_path,
                                                                   fake_build_engine, capsys):
    assert run_cli(["augment", "corpus", "--data", str(beir_folder), "--out", str(tmp_path / "o"), "--model", "m",
                    "--no-progress"]) == 0
    assert fake_build_engine == [("vllm", {"model": "m"})]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["settings"]["engine"] == "vllm" and manifest["run"]["batch_size"] == 256


@pytest.fixture
def recorded_engines(monkeypatch, tiny_lm_dir):
    """`build_engine` gives the tiny transformers model, as a vLLM engine would serve it, and records the kind."""
    from searchrl.llm.transformers_engine import TransformersEngine

    built: list[str] = []

    def build_engine(kind, model, **options):
        built.append(kind)
        engine = TransformersEngine(tiny_lm_dir, device="cpu", dtype="float32")
        engine.context_length = 4096
        return engine

    monkeypatch.setattr(llm, "build_engine", build_engine)
    return built


def agent_eval(tmp_path, tiny_lm_dir, *extra):
    questions = _write_tiny_data(tmp_path / "data")
    return main(["agent", "eval", "--questions", str(questions), "--data", str(tmp_path / "data"),
                 "--model", str(tiny_lm_dir), "--json", "--limit", "2", "--max-turns", "1", "--max-turn-tokens", "4",
                 "--device", "cpu", *extra])


def test_agent_eval_auto_uses_transformers_without_vllm(no_vllm, recorded_engines, tiny_lm_dir, tmp_path, capsys):
    agent_eval(tmp_path, tiny_lm_dir)
    assert recorded_engines == []  # the Agent's own transformers engine
    assert json.loads(capsys.readouterr().out)["num_questions"] == 2


def test_agent_eval_auto_uses_vllm_where_it_runs(usable_vllm, recorded_engines, tiny_lm_dir, tmp_path, capsys):
    agent_eval(tmp_path, tiny_lm_dir)
    assert recorded_engines == ["vllm"]
    assert json.loads(capsys.readouterr().out)["num_questions"] == 2


def test_agent_eval_refuses_an_engine_without_token_ids(tiny_lm_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        agent_eval(tmp_path, tiny_lm_dir, "--engine", "openai")
    assert exit_info.value.code == 2 and "token-level generation" in capsys.readouterr().err
