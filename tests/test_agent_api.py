"""The Python API: ``searchrl.Agent`` (plain models and training checkpoints) and the package's exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import searchrl
from searchrl.agent.api import Agent, agent_settings, find_training_run
from searchrl.agent.episode import ScriptedPolicy
from searchrl.agent.tool import SearchTool
from searchrl.cli import main
from searchrl.data.types import Document
from searchrl.errors import ConfigError
from searchrl.retrieval.bm25 import BM25Retriever

DOCS = [
    Document("c1", "The number two oxygen tank exploded at 55 hours."),
    Document("c2", "Jim Lovell commanded Apollo 13."),
    Document("c3", "The crew used the lunar module as a lifeboat."),
]
SCRIPT = {
    "Which tank exploded?": ["<search>oxygen tank exploded</search>", "<answer>the oxygen tank</answer>"],
    "Who commanded Apollo 13?": ["<search>commanded Apollo</search>", "<answer>Jim Lovell</answer>"],
}


@pytest.fixture(scope="module")
def policy(tokenizer):
    return ScriptedPolicy(tokenizer, SCRIPT)


def _write_corpus(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in DOCS)
    )
    return folder


def _write_run(run, checkpoint_source, *, corpus=None, tool="{retriever: bm25, k: 1, max_chars: 20}",
               episode="{max_turns: 1, max_turn_tokens: 4, max_model_tokens: 8, system_prompt: Answer tersely.}"):
    shutil.copytree(checkpoint_source, run / "best")
    data = f"data: {{corpus: {corpus}}}\n" if corpus is not None else ""
    (run / "config.yaml").write_text(f"model: tiny\n{data}tool: {tool}\nepisode: {episode}\n")
    return run / "best"


# ----------------------------------------------------------------------------------------
# Package exports


def test_the_package_exports_the_entry_points():
    from searchrl import Agent as exported
    from searchrl import train_coaug, train_coaug_from_yaml

    assert exported is Agent
    assert callable(train_coaug) and callable(train_coaug_from_yaml)
    assert {"Agent", "train_coaug", "train_agent"} <= set(dir(searchrl))
    with pytest.raises(AttributeError):
        searchrl.no_such_name  # noqa: B018


def test_the_package_exports_the_agent_trainer():
    try:
        from searchrl import train_agent, train_agent_from_yaml
    except ImportError:
        pytest.xfail("searchrl.agent.train has no train_agent / train_agent_from_yaml yet")
    assert callable(train_agent) and callable(train_agent_from_yaml)


@pytest.mark.parametrize(
    "imports",
    [
        "import searchrl",
        # reading a config (the CLI's --help, validation, the recipe's settings) needs no torch either
        "import searchrl.agent.config, searchrl.coaug.config; from searchrl.training import GRPOSettings, LoraSettings",
    ],
)
def test_importing_the_package_and_its_configs_does_not_import_torch(imports):
    code = f"import sys; {imports}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_the_training_package_resolves_its_names_when_first_used():
    import searchrl.training as training

    assert training.StepProgressCallback.__module__ == "searchrl.training.callbacks"
    assert set(training.__all__) <= set(dir(training))
    with pytest.raises(AttributeError, match="no_such_name"):
        training.no_such_name  # noqa: B018


# ----------------------------------------------------------------------------------------
# Agent over any model and retriever


def test_ask_answers_one_question_with_its_transcript_and_sources(policy):
    agent = Agent(policy, "bm25", corpus=DOCS, k=2)
    answer = agent.ask("Which tank exploded?")
    assert answer.text == "the oxygen tank" and answer.answered and answer.error is None
    assert answer.searches == ["oxygen tank exploded"]
    assert answer.sources[0] == DOCS[0] and len(answer.sources) <= 2
    roles = [m["role"] for m in answer.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert answer.messages[3]["content"].startswith("<information>") and "oxygen tank exploded" in answer.messages[3]["content"]


def test_ask_reports_each_message_as_it_appears(policy):
    seen = []
    answer = Agent(policy, corpus=DOCS).ask("Who commanded Apollo 13?", on_message=seen.append)
    assert seen == answer.messages and answer.text == "Jim Lovell"


def test_ask_many_answers_in_order(policy):
    answers = Agent(policy, corpus={d.id: d for d in DOCS}).ask_many(["Who commanded Apollo 13?", "Which tank exploded?"])
    assert [a.text for a in answers] == ["Jim Lovell", "the oxygen tank"]
    assert answers[0].sources[0].id == "c2"
    with pytest.raises(ConfigError):
        Agent(policy, corpus=DOCS).ask_many("Which tank exploded?")


def test_agent_takes_a_retriever_or_a_ready_search_tool(policy, tmp_path):
    unindexed = Agent(policy, BM25Retriever(), corpus=DOCS, k=1)
    assert unindexed.ask("Which tank exploded?").sources == [DOCS[0]]
    loaded = Agent(policy, BM25Retriever().index(DOCS), data=_write_corpus(tmp_path / "data"), k=1)
    assert loaded.ask("Who commanded Apollo 13?").sources == [DOCS[1]]
    tool = SearchTool(BM25Retriever().index(DOCS), {d.id: d for d in DOCS}, k=3, max_chars=10)
    agent = Agent(policy, tool)
    assert agent.tool is tool and agent.settings["k"] == 3
    assert "The number …" in agent.ask("Which tank exploded?").messages[3]["content"]


def test_agent_rejects_settings_that_cannot_work(policy, tmp_path):
    with pytest.raises(ConfigError, match="encoder"):
        Agent(policy, "bm25", corpus=DOCS, encoder="all-minilm-l6-v2")
    with pytest.raises(ConfigError, match="data="):
        Agent(policy, "bm25")
    with pytest.raises(ConfigError, match="unknown agent settings: top_k"):
        agent_settings(None, top_k=3)


def test_agent_loads_a_model_folder(tiny_lm_dir, tmp_path):
    agent = Agent(str(tiny_lm_dir), data=_write_corpus(tmp_path / "data"), max_turns=1, max_turn_tokens=4, device="cpu")
    answer = agent.ask("Which tank exploded?")
    assert agent.model_name == str(tiny_lm_dir)
    assert answer.episode.num_turns == 1 and len(answer.messages) >= 3
    assert answer.finish_reason in ("answered", "no_action", "turn_limit", "token_budget")


# ----------------------------------------------------------------------------------------
# Agent from a training checkpoint


def test_from_checkpoint_uses_the_training_runs_settings_and_corpus(tiny_lm_dir, tmp_path):
    corpus = _write_corpus(tmp_path / "data") / "corpus.jsonl"
    checkpoint = _write_run(tmp_path / "run", tiny_lm_dir, corpus=corpus)
    agent = Agent.from_checkpoint(checkpoint, device="cpu")
    assert agent.training_run == (tmp_path / "run").resolve()
    assert agent.tool.k == 1 and agent.tool.max_chars == 20 and set(agent.tool.corpus) == {"c1", "c2", "c3"}
    config = agent.episode_config
    assert (config.max_turns, config.max_turn_tokens, config.max_model_tokens) == (1, 4, 8)
    answer = agent.ask("Which tank exploded?")
    assert answer.messages[0] == {"role": "system", "content": "Answer tersely."}
    assert answer.episode.num_turns == 1 and answer.episode.num_model_tokens <= 8


def test_from_checkpoint_settings_given_win_over_the_runs(tiny_lm_dir, tmp_path):
    checkpoint = _write_run(tmp_path / "run", tiny_lm_dir)
    agent = Agent.from_checkpoint(checkpoint, _write_corpus(tmp_path / "data"), k=3, max_turns=2, device="cpu")
    assert agent.tool.k == 3 and agent.episode_config.max_turns == 2
    assert agent.tool.max_chars == 20 and agent.episode_config.max_turn_tokens == 4


def test_from_checkpoint_refuses_what_is_not_a_training_checkpoint(tiny_lm_dir, tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint of `searchrl train agent`"):
        Agent.from_checkpoint(tiny_lm_dir, tmp_path)
    checkpoint = _write_run(tmp_path / "run", tiny_lm_dir, corpus=tmp_path / "gone.jsonl")
    with pytest.raises(ConfigError, match="data="):
        Agent.from_checkpoint(checkpoint)


def test_find_training_run_looks_one_and_two_folders_up(tiny_lm_dir, tmp_path):
    run = tmp_path / "run"
    _write_run(run, tiny_lm_dir)
    nested = run / "checkpoints" / "checkpoint-4"
    nested.mkdir(parents=True)
    assert find_training_run(run / "best").directory == run.resolve()
    assert find_training_run(nested).settings["k"] == 1
    assert find_training_run(tmp_path / "missing") is None
    (tmp_path / "other").mkdir()
    (tmp_path / "config.yaml").write_text("model: x\n")  # a config without tool/episode sections
    assert find_training_run(tmp_path / "other") is None


def test_ask_cli_prints_the_transcript_and_the_answer(tiny_lm_dir, tmp_path, capsys):
    checkpoint = _write_run(tmp_path / "run", tiny_lm_dir)
    main(["agent", "ask", "Which tank exploded?", "--data", str(_write_corpus(tmp_path / "data")),
          "--model", str(checkpoint), "--device", "cpu"])
    captured = capsys.readouterr()
    assert "Which tank exploded?" in captured.out and "finish:" in captured.out and "answer:" in captured.out
    assert "settings of the training run" in captured.err


class _FailingBM25(BM25Retriever):
    def search(self, queries, k=10, **kwargs):
        raise RuntimeError("index file vanished")


def _scripted_ask_cli(monkeypatch, policy, retriever=None) -> list[Agent]:
    """`agent ask` plays the scripted policy over the corpus --data names, with the settings the CLI resolved."""
    from searchrl.cli import agent as cli_agent

    agents = []

    def load(model, data, settings, **options):
        backend = retriever if retriever is not None else settings["retriever"]
        agents.append(Agent(policy, backend, data=data, k=settings["k"], max_turns=settings["max_turns"]))
        return agents[-1]

    monkeypatch.setattr(cli_agent, "_load_agent", load)
    return agents


def _run_ask(*args) -> int:
    try:
        main(["agent", "ask", *map(str, args)])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def test_ask_cli_json_prints_one_object_with_the_answer_and_searches(policy, tmp_path, capsys, monkeypatch):
    agents = _scripted_ask_cli(monkeypatch, policy)
    data = _write_corpus(tmp_path / "data")
    assert _run_ask("Which tank exploded?", "--data", data, "--k", "2", "--json") == 0
    out = capsys.readouterr().out
    record = json.loads(out)  # the whole of stdout is one JSON document: no transcript
    assert out.count("\n") == 1
    expected = Agent(policy, "bm25", corpus=DOCS, k=2).ask("Which tank exploded?").episode
    assert record == {
        "question": "Which tank exploded?",
        "answer": "the oxygen tank",
        "searches": [{"query": "oxygen tank exploded", "doc_ids": list(expected.searches[0]["doc_ids"])}],
        "num_searches": 1,
        "num_turns": 2,
        "finish_reason": "answered",
        "error": None,
        "model": agents[0].model_name,
        "retriever": "bm25",
        "k": 2,
    }
    assert record["searches"][0]["doc_ids"][0] == "c1" and len(record["searches"][0]["doc_ids"]) <= 2


def test_ask_cli_json_answer_is_null_and_exit_code_1_when_the_search_fails(policy, tmp_path, capsys, monkeypatch):
    _scripted_ask_cli(monkeypatch, policy, retriever=_FailingBM25().index(DOCS))
    assert _run_ask("Which tank exploded?", "--data", _write_corpus(tmp_path / "data"), "--json") == 1
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["answer"] is None and record["searches"] == [] and record["num_searches"] == 0
    assert record["finish_reason"] == "tool_error" and "index file vanished" in record["error"]
    assert "search failed" in captured.err


def test_ask_cli_without_json_prints_the_transcript_as_before(policy, tmp_path, capsys, monkeypatch):
    _scripted_ask_cli(monkeypatch, policy)
    assert _run_ask("Which tank exploded?", "--data", _write_corpus(tmp_path / "data"), "--k", "2") == 0
    out = capsys.readouterr().out
    assert "search results" in out and "<search>oxygen tank exploded</search>" in out
    assert "finish: answered   searches: 1   answer: the oxygen tank" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
