"""Agent GRPO settings: loss presets, the KL reference, fired reward terms, honest dev selection, retry transcripts."""

from __future__ import annotations

import json

import pytest
import yaml

from searchrl.agent.config import LOSS_PRESETS, AgentTrainConfig, load_agent_config
from searchrl.agent.rewards import RewardWeights, build_reward_functions, fired_rates
from searchrl.agent.rollout import rollout_statistics
from searchrl.agent.sft import alternative_queries, build_transcripts
from searchrl.agent.tool import SearchTool
from searchrl.data.types import Document, QAExample
from searchrl.retrieval import build_retriever
from test_agent_recipe import TOPICS, write_data


# ----------------------------------------------------------------------------------------
# Loss presets


def test_rezero_preset_fills_in_reinforce_settings_and_explicit_values_win(tmp_path):
    rezero = AgentTrainConfig.model_validate({"grpo": {"preset": "rezero"}}).grpo
    assert (rezero.scale_rewards, rezero.beta, rezero.max_grad_norm, rezero.loss_type, rezero.epsilon_high) == (
        "group", 0.04, 0.1, "grpo", None)
    ours = AgentTrainConfig().grpo
    assert ours.preset == "searchrl"
    assert {k: getattr(ours, k) for k in LOSS_PRESETS["searchrl"]} == LOSS_PRESETS["searchrl"]
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"grpo": {"preset": "rezero", "beta": 0.02}}))
    assert load_agent_config(path).grpo.beta == 0.02  # the file's own value
    assert load_agent_config(path, ["grpo.max_grad_norm=0.5"]).grpo.max_grad_norm == 0.5
    with pytest.raises(Exception, match="preset"):
        AgentTrainConfig.model_validate({"grpo": {"preset": "ppo"}})


def test_the_stored_config_reloads_to_the_same_settings():
    config = AgentTrainConfig.model_validate({"grpo": {"preset": "rezero", "beta": 0.02}})
    again = AgentTrainConfig.model_validate(config.model_dump(mode="json"))
    assert again == config


def test_shipped_recipes_say_which_preset_they_use():
    for name in ("agent-cpu", "agent-gpu"):
        assert load_agent_config(name).grpo.preset in LOSS_PRESETS


# ----------------------------------------------------------------------------------------
# Rewards and rollouts: how often each term fired, retries per episode


def test_fired_rates_count_non_zero_terms_among_scored_samples():
    assert fired_rates({"retry": [0.0, 0.0], "format": [None, None]}) == {"retry": 0.0, "format": 0.0}
    logged = {}
    functions, _ = build_reward_functions(RewardWeights(metric="em", max_searches=2))
    episodes = [
        {"messages": [{"role": "assistant", "content": "<search>a</search>"}, {"role": "user", "content": "r"},
                      {"role": "assistant", "content": "<search>b</search>"}, {"role": "user", "content": "r"},
                      {"role": "assistant", "content": "<answer>Lovell</answer>"}],
         "searches": [{"doc_ids": ["c9"]}, {"doc_ids": ["c2"]}], "finish_reason": "answered"},
        {"messages": [{"role": "assistant", "content": "Haise"}], "searches": [],
         "finish_reason": "answered"},
    ]
    columns = {"episode": episodes, "answers": [["Lovell"], ["Lovell"]], "gold_ids": [["c2"], ["c2"]],
               "log_metric": lambda name, value: logged.__setitem__(name, value)}
    values = {f.__name__: f(prompts=["p", "p"], completions=["", ""], **columns) for f in functions}
    assert values["retry_reward"] == [1.0, 0.0]  # max_searches 2: a correct answer after one retry earns 1.0
    assert logged["rewards/fired_retry"] == 0.5 and logged["rewards/fired_correctness"] == 0.5
    assert logged["rewards/fired_retrieval"] == 0.5 and logged["rewards/fired_format"] == 0.5


def test_the_retry_gap_says_what_searching_again_earned_inside_each_group():
    """Logged per batch: retried minus single-search episodes of one question, averaged over such groups."""
    logged = {}
    functions, weights = build_reward_functions(RewardWeights(metric="em", max_searches=2))

    def episode(searches, answer):
        turns = [m for _ in range(searches) for m in ({"role": "assistant", "content": "<search>q</search>"},
                                                       {"role": "user", "content": "r"})]
        return {"messages": [*turns, {"role": "assistant", "content": f"<answer>{answer}</answer>"}],
                "searches": [{"doc_ids": ["c1"]}] * searches, "finish_reason": "answered"}

    # q1: the retry answered right, the single search wrong; q2: the reverse; q3 never retried (no pair)
    episodes = [episode(2, "Lovell"), episode(1, "Haise"), episode(2, "Haise"), episode(1, "Lovell"),
                episode(1, "Lovell"), episode(1, "Haise")]
    columns = {"episode": episodes, "answers": [["Lovell"]] * 6, "gold_ids": [["c9"]] * 6,
               "question": ["q1", "q1", "q2", "q2", "q3", "q3"],
               "log_metric": lambda name, value: logged.__setitem__(name, value)}
    for f in functions:
        f(prompts=["p"] * 6, completions=[""] * 6, **columns)
    assert logged["rewards/retry_gap_groups"] == 2
    assert logged["rewards/retry_gap_correctness"] == 0.0  # +1 in q1, -1 in q2
    assert logged["rewards/retry_gap_retry"] == 0.5  # the correct retry in q1 earned the retry term
    names = [f.__name__.removesuffix("_reward") for f in functions]
    assert logged["rewards/retry_gap"] == pytest.approx(sum(
        w * logged[f"rewards/retry_gap_{n}"] for n, w in zip(names, weights)))
    logged.clear()
    columns["question"] = ["q1", "q2", "q3", "q4", "q5", "q6"]  # no question has both kinds of episode
    for f in functions:
        f(prompts=["p"] * 6, completions=[""] * 6, **columns)
    assert not any(k.startswith("rewards/retry_gap") for k in logged)


def test_rollout_statistics_count_retries_per_episode():
    from types import SimpleNamespace

    episodes = [SimpleNamespace(num_searches=n, finish_reason="answered", num_turns=n + 1, num_model_tokens=10,
                                completion_ids=[1, 2]) for n in (0, 1, 2, 3)]
    stats = rollout_statistics(episodes)
    assert stats["retries_per_episode"] == (0 + 0 + 1 + 2) / 4 and stats["retry_rate"] == 0.5


# ----------------------------------------------------------------------------------------
# Retry transcripts after a real miss


def test_a_question_whose_keyword_query_misses_gets_a_retry_from_other_keywords():
    corpus = {
        # The full keyword query "crew ate dinner meal" ranks the decoy first with k=1.
        "decoy": Document("decoy", "crew crew crew meal meal meal"),
        "gold": Document("gold", "At dinner the astronauts ate hot dogs."),
    }
    tool = SearchTool(build_retriever("bm25").index(list(corpus.values()), show_progress=False), corpus, k=1)
    question = QAExample("q", "What did the crew eat at dinner?", ("hot dogs",), ("gold",))
    assert tool.search("crew eat dinner").doc_ids == ("decoy",)
    plain, counts = build_transcripts([question], tool, retry_fraction=0.0)
    assert not plain and counts["skipped_not_found"] == 1
    transcripts, counts = build_transcripts([question], tool, retry_fraction=0.0, retry_after_miss=True)
    assert counts["retry_after_miss"] == 1 and transcripts[0].kind == "retry"
    first, second = transcripts[0].queries
    assert first == "crew eat dinner" and second in alternative_queries(question.question)
    assert "gold" in tool.search(second).doc_ids and "hot dogs" in transcripts[0].turns[-1]


# ----------------------------------------------------------------------------------------
# A run: KL to the warm-start, the selection and report parts of dev


def test_kl_reference_is_the_warm_start_dev_is_cut_in_two_and_training_questions_are_replayed(tiny_lm_dir, tmp_path):
    from searchrl.agent.train import train_agent

    data = write_data(tmp_path / "data")
    config = AgentTrainConfig.model_validate({
        "model": str(tiny_lm_dir), "device": "cpu", "output_dir": str(tmp_path / "run"),
        "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl"), "dev_size": 4},
        "tool": {"k": 2}, "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
        "lora": {"r": 4, "alpha": 8},
        "sft": {"enabled": True, "max_steps": 1, "batch_size": 2, "max_tokens": 4096},
        "grpo": {"preset": "rezero", "steps": 2, "prompts_per_step": 1, "num_generations": 2, "save_steps": 1},
        "eval": {"every": 1, "report_fraction": 0.5, "train_questions": 3},
    })
    run = train_agent(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kl = [r["train/kl"] for r in records if "train/kl" in r]
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-6)  # the first step samples the reference itself
    fired = [r for r in records if "train/rewards/fired_format" in r]
    assert len(fired) == 2 and all(0.0 <= r["train/rewards/fired_retry"] <= 1.0 for r in fired)
    assert all("rollout/retries_per_episode" in r for r in records if "rollout/episodes" in r)

    selection = json.loads((run / "selection.json").read_text())
    questions = {json.loads(line)["id"]: json.loads(line) for line in (run / "split" / "dev.jsonl").read_text().splitlines()}
    assert sorted(selection["select"] + selection["report"]) == sorted(questions)
    gold = lambda ids: {g for i in ids for g in questions[i]["gold_ids"]}  # noqa: E731
    assert selection["select"] and selection["report"] and not gold(selection["select"]) & gold(selection["report"])
    select_steps = sorted(r["step"] for r in records if "dev/f1" in r)
    report_steps = sorted(r["step"] for r in records if "dev_report/f1" in r)
    assert select_steps == report_steps == [0, 1, 2]
    assert all(r["dev/num_questions"] == len(selection["select"]) for r in records if "dev/num_questions" in r)
    report = (run / "report.md").read_text()
    assert "chosen on the selection part" in report and "report f1" in report

    # eval.train_questions: the same 3 training questions replayed greedily at every evaluation, logged apart
    train_ids = {json.loads(line)["id"] for line in (run / "split" / "train.jsonl").read_text().splitlines()}
    assert len(selection["train_eval"]) == 3 and set(selection["train_eval"]) <= train_ids
    fit = [r for r in records if "train_eval/f1" in r]
    assert [r["step"] for r in fit] == [0, 1, 2] and all(r["train_eval/num_questions"] == 3 for r in fit)
    for step in (0, 1, 2):
        played = [json.loads(line)["question_id"] for line in
                  (run / "train_eval" / f"step-{step:06d}.jsonl").read_text().splitlines()]
        assert sorted(played) == sorted(selection["train_eval"])
    assert not any("train_eval/f1" in r and "dev/f1" in r for r in records)  # never the selection score
    assert "train f1" in report and "training questions replayed at each evaluation (train f1) | 3" in report


def test_sampled_dev_episodes_choose_best_and_the_greedy_play_is_still_logged(tiny_lm_dir, tmp_path):
    from searchrl.agent.train import train_agent

    data = write_data(tmp_path / "data")
    config = AgentTrainConfig.model_validate({
        "model": str(tiny_lm_dir), "device": "cpu", "output_dir": str(tmp_path / "run"),
        "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl"), "dev_size": 2},
        "tool": {"k": 2}, "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
        "lora": {"r": 4, "alpha": 8},
        "grpo": {"steps": 1, "prompts_per_step": 1, "num_generations": 2, "save_steps": 5, "temperature": 1.0},
        "eval": {"every": 1, "report_fraction": 0, "samples": 3},
    })
    run = train_agent(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    select = json.loads((run / "selection.json").read_text())["select"]
    chosen = {r["step"]: r for r in records if "dev/f1" in r}
    greedy = {r["step"]: r for r in records if "dev_greedy/f1" in r}
    assert sorted(chosen) == sorted(greedy) == [0, 1]
    for step in (0, 1):
        sampled = [json.loads(line) for line in (run / "dev" / f"step-{step:06d}.sampled-3.jsonl").read_text().splitlines()]
        assert sorted(r["question_id"] for r in sampled) == sorted(f"{q}~{j}" for q in select for j in range(3))
        assert chosen[step]["dev/f1"] == pytest.approx(sum(r["scores"]["f1"] for r in sampled) / len(sampled))
        played = [json.loads(line) for line in (run / "dev" / f"step-{step:06d}.jsonl").read_text().splitlines()]
        assert greedy[step]["dev_greedy/f1"] == pytest.approx(sum(r["scores"]["f1"] for r in played) / len(played))
    best = json.loads((run / "best.json").read_text())
    assert best["value"] == pytest.approx(max(r["dev/f1"] for r in chosen.values()))  # the sampled mean chose
    report = (run / "report.md").read_text()
    assert "| step | select em (3 sampled) | select f1 (3 sampled) | select greedy f1 | report em |" in report
    assert "the mean of 3 sampled episodes per question" in report


def test_replaying_training_questions_or_sampling_dev_changes_nothing_in_training(tiny_lm_dir, tmp_path):
    """The replay and the sampled dev episodes are outside the update: the same seed gives the same steps with or
    without either."""
    import torch
    from safetensors.torch import load_file

    from searchrl.agent.train import train_agent

    data = write_data(tmp_path / "data")

    def steps(name, train_questions, samples=0):
        config = AgentTrainConfig.model_validate({
            "model": str(tiny_lm_dir), "device": "cpu", "output_dir": str(tmp_path / name),
            "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl"), "dev_size": 2},
            "tool": {"k": 2}, "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "grpo": {"steps": 2, "prompts_per_step": 1, "num_generations": 2, "save_steps": 5, "temperature": 1.0},
            "eval": {"every": 1, "report_fraction": 0, "train_questions": train_questions, "samples": samples},
        })
        run = train_agent(config)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("train_eval/f1" in r for r in records) == bool(train_questions)
        logged = [(r["step"], r["train/loss"], r["train/reward"], r["train/num_tokens"]) for r in records if "train/loss" in r]
        return logged, load_file(str(run / "final" / "adapter_model.safetensors"))

    (plain_steps, plain), (replay_steps, replay) = steps("plain", 0), steps("replay", 3)
    sampled_steps, sampled = steps("sampled", 0, samples=2)
    assert plain_steps == replay_steps == sampled_steps and len(plain_steps) == 2
    for other in (replay, sampled):
        assert plain.keys() == other.keys() and all(torch.equal(plain[k], other[k]) for k in plain)  # the same weights


def test_the_kl_reference_adapter_is_a_frozen_copy_of_the_starting_adapter(tiny_lm_dir, tmp_path):
    """TRL 1.16 keeps a frozen copy named "ref" of a loaded adapter when beta > 0."""
    import torch
    from peft import get_peft_model

    from searchrl.agent.train import AgentSplit, DevEvaluation, build_tool, build_trainer, load_policy_model
    from searchrl.runs import RunDirectory
    from searchrl.training import LoraSettings, build_lora_config

    data = write_data(tmp_path / "data")
    config = AgentTrainConfig.model_validate({
        "model": str(tiny_lm_dir), "device": "cpu", "output_dir": str(tmp_path / "run"),
        "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl")},
        "lora": {"r": 4, "alpha": 8}, "grpo": {"preset": "rezero", "num_generations": 2, "prompts_per_step": 1},
    })
    from transformers import AutoModelForCausalLM

    start = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=4, alpha=8)))
    with torch.no_grad():
        for name, parameter in start.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)  # a trained-looking adapter: not the base model
    start.save_pretrained(str(tmp_path / "warm"))
    model, tokenizer = load_policy_model(config, tmp_path / "warm", "cpu")
    run = RunDirectory.create_or_resume(tmp_path / "run", config)
    examples = [QAExample(f"q{i}", t[2], (t[3],), (f"c{i}",)) for i, t in enumerate(TOPICS[:4])]
    questions = AgentSplit(train=examples, select=[], report=[])
    trainer = build_trainer(config, run, model, tokenizer, build_tool(config), examples,
                            DevEvaluation(config, run, build_tool(config), questions))
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    assert "ref" in peft_model.peft_config
    parameters = dict(peft_model.named_parameters())
    copies = [(name, name.replace(".default.", ".ref.")) for name in parameters if ".default." in name]
    assert copies and all(torch.equal(parameters[a], parameters[b]) for a, b in copies)
    assert all(parameters[a].requires_grad and not parameters[b].requires_grad for a, b in copies)


def test_freed_memory_is_returned_after_every_warm_start_and_rl_step(tiny_lm_dir, tmp_path, monkeypatch):
    """bf16 batches of changing width left GBs of freed heap behind (see searchrl.memory)."""
    from searchrl import memory
    from searchrl.agent import sft, train

    calls = []
    monkeypatch.setattr(sft, "release_freed_memory", lambda: calls.append("sft"))
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append("rl step"))
    data = write_data(tmp_path / "data")
    config = AgentTrainConfig.model_validate({
        "model": str(tiny_lm_dir), "device": "cpu", "output_dir": str(tmp_path / "run"),
        "data": {"questions": str(data / "questions.jsonl"), "corpus": str(data / "corpus.jsonl"), "dev_size": 2},
        "tool": {"k": 2}, "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
        "lora": {"r": 4, "alpha": 8}, "sft": {"enabled": True, "max_steps": 2, "batch_size": 2, "max_tokens": 4096},
        "grpo": {"steps": 2, "prompts_per_step": 1, "num_generations": 2, "save_steps": 5},
        "eval": {"every": 5, "at_start": False, "report_fraction": 0},
    })
    train.train_agent(config)
    assert calls.count("sft") == 2  # one per warm-start step
    assert calls.count("rl step") == 2  # one per RL step (searchrl.training.ReleaseMemoryCallback)


def test_a_dev_score_that_only_ties_by_rounding_does_not_replace_best(tmp_path):
    """Two steps whose greedy answers differ but score the same sum must tie: step 0 stays best/."""
    from searchrl.agent.train import _numbers
    from searchrl.runs import RunDirectory

    step0 = [0.0] * 7 + [1.0, 0.8, 0.0, 0.0, 0.5] + [0.0] * 4 + [2 / 3, 0.0, 0.0, 0.0]
    step4 = [0.0] * 8 + [0.8, 0.0, 0.0, 0.5] + [0.0] * 4 + [2 / 3, 0.0, 1.0, 0.0]
    raw = [sum(s) / len(s) for s in (step0, step4)]
    assert raw[0] != raw[1]  # the order of the sum shows in the last bit
    run = RunDirectory.create_or_resume(tmp_path / "run", {"x": 1})
    for step, value in zip((0, 4), raw):
        run.update_best(step, "f1", _numbers({"f1": value, "finish_reasons": {}})["f1"])
    assert run.best()["step"] == 0
