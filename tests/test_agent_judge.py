"""The judge must not be the policy: names are compared by what they resolve to, not as spelled."""

from __future__ import annotations

import json
import os

import pytest

from searchrl.agent.judge import LLMJudge, check_judge_model
from searchrl.errors import ConfigError
from searchrl.llm.engine import GenerationEngine
from searchrl.resolver import DEFAULT_LLM, PROVENANCE_FILE


@pytest.fixture(autouse=True)
def _local_only(monkeypatch, tmp_path):
    """An empty model cache, and no downloads: the check must never need the network."""
    monkeypatch.setenv("SEARCHRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEARCHRL_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    "judge, policy",
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"),
        ("smollm2-135m-instruct", DEFAULT_LLM),
        ("huggingfacetb/smollm2-135m-instruct", "SmolLM2"),
        ("Org/Model", "org/model"),
    ],
)
def test_aliases_and_spellings_of_one_model_are_the_same_model(judge, policy):
    with pytest.raises(ConfigError, match="is the policy model"):
        check_judge_model(judge, policy)


def test_paths_to_one_folder_are_the_same_model(tiny_lm_dir, tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(tiny_lm_dir, target_is_directory=True)
    monkeypatch.chdir(tiny_lm_dir.parent)
    for judge in (f"{tiny_lm_dir}/", str(link), f"./{tiny_lm_dir.name}", f"{tiny_lm_dir}/../{tiny_lm_dir.name}"):
        with pytest.raises(ConfigError, match="is the policy model"):
            check_judge_model(judge, str(tiny_lm_dir))


def test_a_name_and_the_folder_it_resolves_to_are_the_same_model(tmp_path):
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"  # where `models pull smollm2` puts it
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / PROVENANCE_FILE).write_text(json.dumps({"source": DEFAULT_LLM}), encoding="utf-8")
    with pytest.raises(ConfigError, match="is the policy model"):
        check_judge_model(str(folder), "smollm2")
    with pytest.raises(ConfigError, match="is the policy model"):
        check_judge_model(DEFAULT_LLM, os.path.relpath(folder))


def test_different_models_pass_without_downloading(tiny_lm_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the judge check tried to download a model")

    monkeypatch.setattr("searchrl.resolver.resolve.resolve_model", no_network)
    monkeypatch.setattr("searchrl.resolver.resolve_model", no_network)
    check_judge_model(str(tiny_lm_dir), "smollm2")
    check_judge_model("Qwen/Qwen2.5-7B-Instruct", "smollm2")
    check_judge_model("judge-model", None)


class NamedEngine(GenerationEngine):
    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def generate(self, prompts, params):
        return [["YES"] for _ in prompts]


def test_the_judge_refuses_an_engine_serving_the_policy_under_another_name():
    with pytest.raises(ConfigError, match="is the policy model"):
        LLMJudge(NamedEngine("HuggingFaceTB/SmolLM2-135M-Instruct"), policy_model="smollm2")
    assert LLMJudge(NamedEngine("Qwen/Qwen2.5-0.5B-Instruct"), policy_model="smollm2").judge(["q"], ["a"], [["a"]]) == [True]
