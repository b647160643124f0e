"""Chunk-disjoint splits, the GRPO rollout function and a whole (tiny) agent training run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from searchrl.agent.episode import ChatFormat, EpisodeConfig, ScriptedPolicy
from searchrl.agent.protocol import format_information, user_prompt
from searchrl.agent.splits import load_split, make_split, source_groups, split_by_source
from searchrl.agent.tool import SearchTool
from searchrl.agent.train import (
    AgentRollout,
    AgentTrainConfig,
    agent_dataset_rows,
    load_agent_config,
    train_agent_from_yaml,
)
from searchrl.data.types import Document, QAExample
from searchrl.errors import ConfigError
from searchrl.retrieval import build_retriever

DOCS = {
    "c1": "The oxygen tank number two failed at 55 hours into the flight.",
    "c2": "The commander of the crew was James Lovell, a Navy captain.",
    "c3": "The lunar module served as a lifeboat with batteries and water.",
    "c4": "Splashdown happened in the Pacific Ocean near Samoa.",
    "c5": "The command module pilot was John Swigert after a late crew change.",
    "c6": "Carbon dioxide filters were adapted with tape and cardboard.",
}
QUESTIONS = [
    QAExample("q1", "When did the oxygen tank fail?", ("55 hours",), ("c1",)),
    QAExample("q2", "Which oxygen tank failed?", ("number two",), ("c1",)),
    QAExample("q3", "Who was the commander of the crew?", ("James Lovell",), ("c2",)),
    QAExample("q4", "What rank did the commander hold?", ("Navy captain",), ("c2",)),
    QAExample("q5", "What served as a lifeboat?", ("lunar module",), ("c3",)),
    QAExample("q6", "Where was the splashdown?", ("Pacific Ocean",), ("c4",)),
    QAExample("q7", "Who was the command module pilot?", ("John Swigert",), ("c5",)),
    QAExample("q8", "How were the carbon dioxide filters adapted?", ("tape and cardboard",), ("c6",)),
]


# ----------------------------------------------------------------------------------------
# Splits


def _gold(examples):
    return {g for e in examples for g in e.gold_ids}


def test_groups_follow_shared_gold_ids_transitively():
    examples = [
        QAExample("a", "?", ("x",), ("c1",)),
        QAExample("b", "?", ("x",), ("c2", "c3")),
        QAExample("c", "?", ("x",), ("c3", "c1")),  # links a and b
        QAExample("d", "?", ("x",), ()),
        QAExample("e", "?", ("x",), ("c9",)),
    ]
    assert source_groups(examples) == [[0, 1, 2], [3], [4]]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_is_disjoint_by_source_and_deterministic(seed):
    # Three questions per chunk; every ninth question also cites the next chunk, chaining groups.
    examples = [
        QAExample(f"q{i}", "?", ("a",), (f"c{i // 3}",) + ((f"c{i // 3 + 1}",) if i % 9 == 0 else ())) for i in range(30)
    ]
    split = split_by_source(examples, dev_size=6, seed=seed)
    assert not _gold(split.train) & _gold(split.dev)
    assert len(split.train) + len(split.dev) == 30 and split.dev
    again = split_by_source(examples, dev_size=6, seed=seed)
    assert [e.id for e in again.dev] == [e.id for e in split.dev]


def test_split_seeds_differ_and_sizes_are_respected():
    examples = [QAExample(f"q{i}", "?", ("a",), (f"c{i // 2}",)) for i in range(40)]
    dev_sets = {tuple(e.id for e in split_by_source(examples, dev_size=8, seed=s).dev) for s in range(4)}
    assert len(dev_sets) > 1 and all(len(d) == 8 for d in dev_sets)


def test_make_split_writes_reuses_and_refuses_another_seed(tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(json.dumps({"id": e.id, "question": e.question, "answers": list(e.answers), "gold_ids": list(e.gold_ids)}) + "\n" for e in QUESTIONS)
    )
    first = make_split(questions, tmp_path / "split", dev_size=2, seed=5)
    assert (tmp_path / "split" / "train.jsonl").exists() and (tmp_path / "split" / "dev.jsonl").exists()
    reloaded = load_split(tmp_path / "split")
    assert [e.id for e in reloaded.dev] == [e.id for e in first.dev]
    assert [e.id for e in make_split(questions, tmp_path / "split", dev_size=2, seed=5).dev] == [e.id for e in first.dev]
    with pytest.raises(ConfigError, match="seed"):
        make_split(questions, tmp_path / "split", dev_size=2, seed=6)


def test_apollo_split_is_chunk_disjoint(shared_data):
    from searchrl.data.qa import load_qa

    split = split_by_source(load_qa(shared_data / "apollo13" / "questions.jsonl"), dev_size=40, seed=0)
    assert len(split.dev) == 40 and not _gold(split.train) & _gold(split.dev)


# ----------------------------------------------------------------------------------------
# Configuration


def test_config_rejects_unknown_keys_and_drops_retry_for_the_ablation(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"grpo": {"steps": 3}, "retry_reward": False}))
    config = load_agent_config(path)
    assert config.grpo.steps == 3 and config.reward_weights().retry == 0.0 and config.rewards.retry == 1.0
    assert config.rollout_episode_config().temperature == config.grpo.temperature
    assert config.eval_episode_config().temperature == 0.0
    with pytest.raises(ConfigError, match="stepz"):
        load_agent_config(path, ["grpo.stepz=4"])


def test_spoiled_retry_reward_needs_noise_that_can_spoil_a_search():
    # Without noise that removes results the term would be a silent 0 in every episode.
    with pytest.raises(ConfigError, match="tool.noise.fail_prob"):
        load_agent_config(None, ["rewards.retry_mode=spoiled"])
    with pytest.raises(ConfigError, match="tool.noise.fail_prob"):
        load_agent_config(None, ["rewards.retry_mode=spoiled", "tool.noise.shuffle_prob=0.5"])
    assert load_agent_config(None, ["rewards.retry_mode=spoiled", "tool.noise.fail_prob=0.3"]).rewards.retry_mode == "spoiled"
    assert load_agent_config(None, ["rewards.retry_mode=spoiled", "retry_reward=false"]).retry_reward is False  # the ablation arm


def test_answer_temperature_reaches_rollouts_only_and_only_with_the_answer_words_untrained():
    config = load_agent_config(None, ["grpo.train_answer_text=false", "grpo.answer_temperature=0", "grpo.temperature=1.0"])
    rollout = config.rollout_episode_config()
    assert (rollout.temperature, rollout.answer_temperature) == (1.0, 0.0)
    assert config.eval_episode_config().answer_temperature is None  # evaluation is greedy throughout
    assert load_agent_config(None, ["grpo.train_answer_text=false"]).rollout_episode_config().answer_temperature is None
    # Sampling the answer's words away from the policy while training them would be off-policy.
    with pytest.raises(ConfigError, match="train_answer_text"):
        load_agent_config(None, ["grpo.answer_temperature=0"])
    with pytest.raises(ConfigError, match="grpo.answer_temperature"):
        load_agent_config(None, ["episode.answer_temperature=0"])


def test_shipped_configs_load():
    from searchrl.recipes import RECIPES_DIR

    for name in ("agent-cpu.yaml", "agent-gpu.yaml"):
        config = load_agent_config(RECIPES_DIR / name)
        assert config.rewards.correctness == 4.0 and config.grpo.num_generations >= 2


# ----------------------------------------------------------------------------------------
# The rollout function




@pytest.fixture(scope="module")
def tool() -> SearchTool:
    corpus = {k: Document(k, v) for k, v in DOCS.items()}
    return SearchTool(build_retriever("bm25").index(list(corpus.values()), show_progress=False), corpus, k=2)


def _scripted(tokenizer):
    """Search once, then answer correctly for even question numbers and wrongly for odd ones."""

    def script(prompt_text: str, turn: int) -> str:
        example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
        if turn == 0:
            return f"<think>look</think>\n<search>{example.question}</search>"
        right = int(example.id[1:]) % 2 == 0
        return f"<answer>{example.answers[0] if right else 'no idea'}</answer>"

    return ScriptedPolicy(tokenizer, script)


def _fake_trainer(step: int = 0):
    model = SimpleNamespace(training=True, train=lambda mode=True: None, eval=lambda: None)
    return SimpleNamespace(
        state=SimpleNamespace(global_step=step),
        model=model,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m, is_main_process=True),
    )


def test_rollout_output_matches_what_trl_expects(tool, tokenizer):
    rollout = AgentRollout(
        tool, QUESTIONS, EpisodeConfig(max_turns=3), policy_factory=lambda trainer: _scripted(tokenizer)
    )
    rows = agent_dataset_rows(QUESTIONS[:2])
    prompts = [rows[0]["prompt"]] * 3 + [rows[1]["prompt"]] * 3  # TRL repeats each prompt per generation
    out = rollout(prompts, _fake_trainer())
    assert set(out) >= {"prompt_ids", "completion_ids", "logprobs", "env_mask", "episode"}
    assert len(out["completion_ids"]) == len(out["env_mask"]) == len(out["prompt_ids"]) == len(out["episode"]) == 6

    fmt = ChatFormat(tokenizer)
    for i, (ids, mask, episode) in enumerate(zip(out["completion_ids"], out["env_mask"], out["episode"])):
        assert len(ids) == len(mask)
        example = QUESTIONS[i // 3]
        assert episode["question_id"] == example.id and episode["num_turns"] == 2
        assert out["prompt_ids"][i] == fmt.prompt_ids(fmt.initial_messages(example.question))
        # Masked-out tokens are exactly the tool results (with their template tokens) and the
        # end-of-turn token appended after each turn's stop string (</search>, </answer>): the
        # policy never sampled it, so it gets no gradient.
        env_tokens = [t for t, m in zip(ids, mask) if m == 0]
        results = [format_information(s["text"]) for s in episode["searches"]]
        eot = fmt.end_of_turn_ids
        assert env_tokens == [t for content in results for t in eot + fmt.user_turn_ids(content)] + eot
        assert ids[-1] == eot[-1] and mask[-1] == 0
        # It has no sampling logprob either, so TRL gets None there and computes its own.
        assert out["logprobs"] is None or len(out["logprobs"][i]) == len(ids)


def _logged_rollout(tool, tokenizer, **options):
    """The first two questions' episodes from a scripted rollout with ``options``, and what it logged."""
    logged = []
    run = SimpleNamespace(log_metrics=lambda step, metrics, prefix="": logged.append({prefix + k: v for k, v in metrics.items()}))
    rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3), run=run,
                           policy_factory=lambda trainer: _scripted(tokenizer), **options)
    trainer = _fake_trainer()
    trainer.processing_class = tokenizer
    rows = agent_dataset_rows(QUESTIONS[:2])
    return rollout([rows[0]["prompt"], rows[1]["prompt"]], trainer), logged


def test_rollout_can_leave_the_answer_words_out_of_the_loss(tool, tokenizer):
    out, logged = _logged_rollout(tool, tokenizer, train_answer_text=False)
    for ids, mask, episode in zip(out["completion_ids"], out["env_mask"], out["episode"]):
        kept = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        search_turn = episode["messages"][2]["content"]
        assert kept == search_turn + "<answer>" and episode["answer"] not in kept
    expected = sum(map(sum, out["env_mask"])) / 2
    assert logged[-1]["rollout/loss_tokens_per_episode"] == pytest.approx(expected)


def test_rollout_with_answer_credit_returns_where_the_answer_words_are(tool, tokenizer):
    out, logged = _logged_rollout(tool, tokenizer, answer_credit=True)
    for ids, mask, answer, episode in zip(out["completion_ids"], out["env_mask"], out["answer_mask"], out["episode"]):
        # the whole episode stays in the loss; answer_mask marks the words after <answer>
        assert mask == [int(m) for m in mask] and sum(mask) > sum(answer) > 0
        assert all(a <= m for a, m in zip(answer, mask))
        assert tokenizer.decode([t for t, a in zip(ids, answer) if a]) == f"{episode['answer']}</answer>"
    assert logged[-1]["rollout/answer_tokens_per_episode"] == pytest.approx(sum(map(sum, out["answer_mask"])) / 2)
    with pytest.raises(ConfigError, match="train_answer_text"):
        AgentRollout(tool, QUESTIONS, EpisodeConfig(), train_answer_text=False, answer_credit=True)


def test_rollout_rejects_unknown_prompts(tool, tokenizer):
    from searchrl.errors import DataError

    rollout = AgentRollout(tool, QUESTIONS[:1], EpisodeConfig(), policy_factory=lambda trainer: _scripted(tokenizer))
    with pytest.raises(DataError, match="not in the training set"):
        rollout([agent_dataset_rows(QUESTIONS[1:2])[0]["prompt"]], _fake_trainer())


def test_two_grpo_steps_with_the_rollout_function(tool, tokenizer, tiny_lm_dir, tmp_path):
    """TRL scores the scripted episodes with our rewards; the loss counts model tokens only."""
    import warnings

    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    from searchrl.agent.rewards import RewardWeights, build_reward_functions
    from searchrl.training import LoraSettings, build_grpo_config, build_lora_config

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=4)))
    rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3), policy_factory=lambda trainer: _scripted(tokenizer))
    functions, weights = build_reward_functions(RewardWeights(metric="em"))
    args = build_grpo_config(
        output_dir=tmp_path, max_steps=2, num_generations=2, prompts_per_step=2, device="cpu", save_steps=100,
        extra={"reward_weights": weights},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=model, reward_funcs=functions, args=args, processing_class=tokenizer, rollout_func=rollout,
            train_dataset=Dataset.from_list(agent_dataset_rows(QUESTIONS)),
        )
        trainer.train()
    assert trainer.state.global_step == 2
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 2
    for entry in logs:
        # Every scripted episode searches once and answers in a well-formed way.
        assert entry["rewards/format_reward/mean"] == 1.0
        assert entry["rewards/retrieval_reward/mean"] == 1.0
    # TRL counts only env_mask == 1 tokens as completion length: the tokens the model sampled, not
    # the results nor the end-of-turn tokens appended after its stop strings.
    episodes = rollout.last_episodes
    sampled = [sum(e.completion_sampled) for e in episodes]
    assert logs[-1]["completions/mean_length"] == pytest.approx(sum(sampled) / len(sampled))
    assert all(sum(e.completion_sampled) < sum(e.completion_mask) < len(e.completion_ids) for e in episodes)


def test_searchrl_trainer_scores_only_model_tokens_and_trains_as_trl_does(tool, tokenizer, tiny_lm_dir, tmp_path,
                                                                          monkeypatch):
    """Two steps with a KL term, TRL's GRPOTrainer against searchrl's: the same loss, gradient norm and
    trained weights, while searchrl keeps each group in one micro-batch and projects only the episodes'
    model tokens (env_mask), not the search results."""
    import itertools
    import warnings

    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    from searchrl.agent.rewards import RewardWeights, build_reward_functions
    from searchrl.training import LoraSettings, build_grpo_config, build_lora_config
    from searchrl.training import trainer as module

    scored_masks = []
    completion_logprobs = module.completion_logprobs

    def recording(*args, scored=None, **kwargs):
        scored_masks.append(scored)
        return completion_logprobs(*args, scored=scored, **kwargs)

    monkeypatch.setattr(module, "completion_logprobs", recording)
    logs, rollouts, micro_batches, trained = {}, {}, {}, {}
    for name, trainer_class in [("trl", GRPOTrainer), ("searchrl", module.grpo_trainer_class())]:
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=4)))
        answers = itertools.count()  # every other episode answers right: the groups' rewards differ

        def script(prompt_text: str, turn: int, answers=answers) -> str:
            example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
            if turn == 0:
                return f"<think>look</think>\n<search>{example.question}</search>"
            return f"<answer>{example.answers[0] if next(answers) % 2 else 'no idea'}</answer>"

        rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3),
                               policy_factory=lambda trainer, script=script: ScriptedPolicy(tokenizer, script))
        functions, weights = build_reward_functions(RewardWeights(metric="em"))
        args = build_grpo_config(
            output_dir=tmp_path / name, max_steps=2, num_generations=2, prompts_per_step=4, micro_batch_size=2,
            device="cpu", save_steps=100, learning_rate=1e-2, beta=0.04, extra={"reward_weights": weights},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = trainer_class(
                model=model, reward_funcs=functions, args=args, processing_class=tokenizer, rollout_func=rollout,
                train_dataset=Dataset.from_list(agent_dataset_rows(QUESTIONS)),
            )
            compute_loss = trainer._compute_loss

            def recording_loss(model, inputs, compute_loss=compute_loss, name=name):
                micro_batches.setdefault(name, []).append(inputs["prompt_ids"])
                return compute_loss(model, inputs)

            trainer._compute_loss = recording_loss
            trainer.train()
        logs[name] = [entry for entry in trainer.state.log_history if "loss" in entry and "kl" in entry]
        rollouts[name] = rollout
        trained[name] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert len(logs["trl"]) == len(logs["searchrl"]) == 2
    assert logs["trl"][-1]["kl"] > 0  # the second step's policy has moved: the KL term is live
    for ours, theirs in zip(logs["searchrl"], logs["trl"]):
        for key in ("loss", "grad_norm"):  # the update
            assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-6), key
        for key in ("kl", "entropy"):  # means of micro-batch means: they depend on which rows share one
            assert ours[key] == pytest.approx(theirs[key], rel=2e-2), key
    # Adam moves each weight by about the learning rate (1e-2) whatever the size of its gradient, so the
    # rounding of near-zero gradient entries shows up to ~1e-5; a different update would move ~1e-2.
    assert trained["trl"]
    for name, weight in trained["trl"].items():
        torch.testing.assert_close(trained["searchrl"][name], weight, rtol=1e-3, atol=1e-4,
                                   msg=lambda message, name=name: f"{name}: {message}")
    # searchrl's micro-batches hold whole groups (TRL shuffles the rows), so the prompt pass is shared
    assert len(micro_batches["searchrl"]) == len(micro_batches["trl"]) == 8
    assert all(len(torch.unique(rows, dim=0)) == 1 for rows in micro_batches["searchrl"])
    assert not all(len(torch.unique(rows, dim=0)) == 1 for rows in micro_batches["trl"])
    # searchrl's passes (reference and policy) were told which tokens the loss reads: the env_mask
    assert scored_masks and all(mask is not None for mask in scored_masks)
    env_tokens = [len(e.completion_mask) - sum(e.completion_mask) for e in rollouts["searchrl"].last_episodes]
    assert min(env_tokens) > 0 and any((mask == 0).sum() >= min(env_tokens) for mask in scored_masks)


def one_grpo_step(rollout, tokenizer, tiny_lm_dir, tmp_path, weights=None, **trainer_options):
    """One GRPO step of a LoRA'd tiny model on ``rollout`` (4 questions x 2 episodes, std-scaled
    advantages, EM rewards unless ``weights`` says otherwise); returns the trainer and the advantages
    each micro-batch's loss read."""
    import warnings

    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from searchrl.agent.rewards import RewardWeights, build_reward_functions
    from searchrl.training import LoraSettings, build_grpo_config, build_lora_config
    from searchrl.training import trainer as module

    losses = []
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=4)))
    functions, reward_weights = build_reward_functions(weights or RewardWeights(metric="em"))
    args = build_grpo_config(
        output_dir=tmp_path, max_steps=1, num_generations=2, prompts_per_step=4, micro_batch_size=4, device="cpu",
        save_steps=100, scale_rewards="group", extra={"reward_weights": reward_weights},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = module.grpo_trainer_class()(
            model=model, reward_funcs=functions, args=args, processing_class=tokenizer, rollout_func=rollout,
            train_dataset=Dataset.from_list(agent_dataset_rows(QUESTIONS)), **trainer_options,
        )
        compute_loss = trainer._compute_loss
        trainer._compute_loss = lambda model, inputs: losses.append(inputs["advantages"]) or compute_loss(model, inputs)
        trainer.train()
    return trainer, losses


def test_answer_credit_gives_the_answer_words_only_the_correctness_part_of_the_advantage(
        tool, tokenizer, tiny_lm_dir, tmp_path, monkeypatch):
    """One GRPO step with answer credit: every token but the answer's words keeps TRL's advantage; the
    answer's words get the correctness term's share, 0 where the group's answers tie."""
    import itertools

    import torch

    from searchrl.agent.rewards import RewardWeights, answer_reward_funcs
    from searchrl.training import credit

    calls = []
    split = credit.answer_credited_advantages

    def recording(rewards, weights, funcs, mask, **kwargs):
        out = split(rewards, weights, funcs, mask, **kwargs)
        calls.append({"rewards": rewards.clone(), "weights": weights.clone(), "funcs": list(funcs), "mask": mask,
                      "advantages": kwargs["advantages"].clone(), "out": out.clone()})
        return out

    monkeypatch.setattr(credit, "answer_credited_advantages", recording)
    searches, answers = itertools.count(), itertools.count()

    def script(prompt_text: str, turn: int) -> str:
        example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
        if turn == 0:  # in each group one episode searches the question, the other another document's words
            other = next(text for key, text in DOCS.items() if key not in example.gold_ids and key != "c5")
            return f"<search>{example.question if next(searches) % 2 == 0 else other}</search>"
        return f"<answer>{example.answers[0] if next(answers) % 4 == 0 else 'no idea'}</answer>"

    rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3), answer_credit=True,
                           policy_factory=lambda trainer: ScriptedPolicy(tokenizer, script))
    trainer, losses = one_grpo_step(rollout, tokenizer, tiny_lm_dir, tmp_path,
                                    answer_reward_funcs=answer_reward_funcs(RewardWeights(metric="em")))

    assert len(calls) == 1 and calls[0]["funcs"] == [trainer.reward_func_names.index("correctness_reward"),
                                                     trainer.reward_func_names.index("retry_reward")]
    call = calls[0]
    mask, out, advantages, rewards = call["mask"].bool(), call["out"], call["advantages"], call["rewards"]
    episodes = rollout.last_episodes
    for row, episode in enumerate(episodes):  # the mask holds the answer's words and nothing else
        ids = torch.tensor(episode.completion_ids)[mask[row, : len(episode.completion_ids)]]
        assert tokenizer.decode(ids).startswith(episode.answer) and not mask[row, len(episode.completion_ids):].any()
    # every other token keeps TRL's advantage ...
    assert torch.equal(out[~mask], advantages.unsqueeze(1).expand_as(out)[~mask])
    # ... the answer's words get the correctness and retry terms' part, scaled as TRL scales the sum
    total = (rewards * call["weights"]).sum(dim=1).view(-1, 2)
    part = (rewards[:, calls[0]["funcs"]] * call["weights"][calls[0]["funcs"]]).sum(dim=1).view(-1, 2)
    expected = ((part - part.mean(dim=1, keepdim=True)) / (total.std(dim=1, keepdim=True) + 1e-4)).view(-1)
    for row in range(len(episodes)):
        assert torch.allclose(out[row][mask[row]], expected[row].expand(int(mask[row].sum())))
    # the script made groups whose answers tie while their searches differ: answer words 0, the rest not
    ties = [g for g in range(4) if part[g, 0] == part[g, 1] and total[g, 0] != total[g, 1]]
    assert ties and all(out[2 * g][mask[2 * g]].abs().max() == 0 and advantages[2 * g] != 0 for g in ties)
    assert any(expected != 0)
    # and the loss read these per-token advantages (two micro-batches of whole groups, in order)
    assert len(losses) == 2 and torch.equal(torch.cat(losses), out)


def test_an_answer_advantage_floor_stops_answers_being_pushed_down_and_leaves_the_rest(
        tool, tokenizer, tiny_lm_dir, tmp_path):
    """One GRPO step with answer credit and a floor of 0: the loss reads the answer's words'
    advantages raised to 0 where they were negative, every other token's exactly as without it."""
    import itertools

    import torch

    from searchrl.agent.rewards import RewardWeights, answer_reward_funcs

    def run(floor, directory):
        searches, answers = itertools.count(), itertools.count()

        def script(prompt_text: str, turn: int) -> str:
            example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
            if turn == 0:
                other = next(text for key, text in DOCS.items() if key not in example.gold_ids and key != "c5")
                return f"<search>{example.question if next(searches) % 2 == 0 else other}</search>"
            return f"<answer>{example.answers[0] if next(answers) % 4 == 0 else 'no idea'}</answer>"

        rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3), answer_credit=True,
                               policy_factory=lambda trainer: ScriptedPolicy(tokenizer, script))
        batches = []
        torch.manual_seed(0)
        trainer, losses = one_grpo_step(
            lambda prompts, trainer: batches.append(rollout(prompts, trainer)) or batches[-1],
            tokenizer, tiny_lm_dir, directory, answer_advantage_floor=floor,
            answer_reward_funcs=answer_reward_funcs(RewardWeights(metric="em")))
        masks = batches[0]["answer_mask"]  # the words after <answer>, as the rollout marked them
        width = torch.cat(losses).size(1)
        logged = trainer.state.log_history[0].get("answer/floored")
        return torch.cat(losses), torch.tensor([m + [0] * (width - len(m)) for m in masks]).bool(), logged

    plain, mask, not_logged = run(None, tmp_path / "plain")
    floored, same_mask, logged = run(0.0, tmp_path / "floored")
    assert torch.equal(mask, same_mask) and mask.any()
    answered, raised = mask.any(dim=1), ((plain < 0) & mask).any(dim=1)
    assert not_logged is None and logged == pytest.approx((raised.sum() / answered.sum()).item())
    assert (plain[mask] < 0).any() and (plain[mask] > 0).any()  # the script made answers worse and better
    assert torch.equal(floored[mask], plain[mask].clamp(min=0))
    assert torch.equal(floored[~mask], plain[~mask]) and (plain[~mask] < 0).any()  # the search still pushed down


def test_later_turn_credit_compares_what_follows_a_first_search_only_with_episodes_whose_first_search_ended_alike(
        tool, tokenizer, tiny_lm_dir, tmp_path, monkeypatch):
    """One GRPO step with later-turn credit: the first turn keeps TRL's advantage; what the model wrote
    after the first result gets the later terms' part, centred within the group's episodes whose first
    search found (or missed) the gold chunk alike, and 0 where the other episode's first search ended
    otherwise -- so a retry after a miss is no longer pushed down for the miss before it."""
    import collections

    import torch

    from searchrl.agent.rewards import RewardWeights, later_turn_reward_funcs
    from searchrl.training import credit

    calls = []
    split = credit.later_turn_advantages

    def recording(rewards, weights, funcs, outcome, mask, **kwargs):
        out = split(rewards, weights, funcs, outcome, mask, **kwargs)
        calls.append({"rewards": rewards.clone(), "weights": weights.clone(), "funcs": list(funcs), "outcome": outcome,
                      "mask": torch.as_tensor(mask).bool(), "advantages": kwargs["advantages"].clone(), "out": out.clone()})
        return out

    monkeypatch.setattr(credit, "later_turn_advantages", recording)
    member = collections.Counter()

    def script(prompt_text: str, turn: int) -> str:
        # q1, q2: one episode finds the gold chunk at once, the other misses, searches again and finds it;
        # q3, q4: both miss, one searches again, the other answers wrongly; q5-q8: both find, one answers wrongly.
        example = next(e for e in QUESTIONS if user_prompt(e.question) in prompt_text)
        number = int(example.id[1:])
        other = next(text for key, text in DOCS.items() if key not in example.gold_ids and key != "c5")
        if turn == 0:
            member[example.id] += 1
            second = member[example.id] == 2
            if number <= 2:
                return f"<search>{other if second else example.question}</search>"
            if number <= 4:
                return f"<search>{other}{' zzz' if second else ''}</search>"
            return f"<search>{example.question}{' please' if second else ''}</search>"
        missed_first = f"<search>{other}</search>" in prompt_text
        if turn == 1 and missed_first:
            return f"<search>{example.question}</search>"
        wrong = "zzz" in prompt_text or "please" in prompt_text
        return f"<answer>{'no idea' if wrong else example.answers[0]}</answer>"

    weights = RewardWeights(metric="em", retry=0.5, retry_mode="miss", retrieval_scope="first")
    later, outcome = later_turn_reward_funcs(weights)
    rollout = AgentRollout(tool, QUESTIONS, EpisodeConfig(max_turns=3),
                           policy_factory=lambda trainer: ScriptedPolicy(tokenizer, script))
    trainer, losses = one_grpo_step(rollout, tokenizer, tiny_lm_dir, tmp_path, weights=weights,
                                    later_turn_funcs=later, first_outcome_func=outcome)

    assert len(calls) == 1
    call = calls[0]
    names = trainer.reward_func_names
    assert call["funcs"] == [names.index(n) for n in later] and call["outcome"] == names.index("retrieval_reward")
    mask, out, advantages, rewards = call["mask"], call["out"], call["advantages"], call["rewards"]
    episodes = rollout.last_episodes
    for row, episode in enumerate(episodes):  # the mask holds the model's tokens after the first result, only
        # the tokens the model sampled (an end-of-turn token appended after a stop string is not)
        model_tokens = torch.tensor(episode.completion_mask).bool() & torch.tensor(episode.completion_sampled).bool()
        first_gap = next(i for i, m in enumerate(model_tokens.tolist()) if not m)
        expected = model_tokens.clone()
        expected[:first_gap] = False
        assert torch.equal(mask[row, : len(episode.completion_mask)], expected)
        assert not mask[row, len(episode.completion_mask):].any()
    assert torch.equal(out[~mask], advantages.unsqueeze(1).expand_as(out)[~mask])  # the first turn: TRL's
    weights_tensor = call["weights"]
    total = (rewards * weights_tensor).sum(dim=1).view(-1, 2)
    part = (rewards[:, call["funcs"]] * weights_tensor[call["funcs"]]).sum(dim=1).view(-1, 2)
    found = rewards[:, call["outcome"]].view(-1, 2)
    std = total.std(dim=1, keepdim=True) + 1e-4
    mixed = alike = 0
    for group in range(4):
        for member_index in range(2):
            row = 2 * group + member_index
            values = out[row][mask[row]]
            if found[group, 0] != found[group, 1]:  # no episode of the group whose first search ended alike
                assert values.abs().max() == 0
                mixed += bool(advantages[row] != 0)
            else:
                centred = (part[group, member_index] - part[group].mean()) / std[group, 0]
                assert torch.allclose(values, centred.expand_as(values))
                alike += bool(centred != 0)
    assert mixed and alike  # the script made both kinds of group, with something to credit in each
    retried = [row for row, e in enumerate(episodes) if len(e.searches) > 1 and found.view(-1)[row] == 0]
    assert retried and any(advantages[row] < 0 for row in retried)  # GRPO would push those retries down
    assert trainer.state.log_history[0]["later/rows"] == pytest.approx(1.0)
    assert len(losses) == 2 and torch.equal(torch.cat(losses), out)


def test_later_turn_credit_needs_the_first_searchs_retrieval_term():
    import torch

    from searchrl.agent.rewards import RewardWeights, later_turn_reward_funcs
    from searchrl.training.credit import later_turn_advantages

    config = load_agent_config(None, ["grpo.later_turn_credit=true", "rewards.retrieval_scope=first"])
    assert config.grpo.later_turn_credit
    for overrides in (["rewards.retrieval_scope=any"], ["rewards.retrieval_scope=first", "rewards.retrieval=0"]):
        with pytest.raises(Exception, match="retrieval_scope: first"):
            load_agent_config(None, ["grpo.later_turn_credit=true", *overrides])
    with pytest.raises(ConfigError, match="retrieval"):
        later_turn_reward_funcs(RewardWeights())
    # an unscorable sample (NaN) is nobody's peer; a sample alone in its first-search outcome gets 0
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [float("nan")] * 2, [0.0, 1.0]])
    out = later_turn_advantages(rewards, torch.ones(2), [1], 0, torch.ones(4, 1), num_generations=2,
                                scale_rewards="none", advantages=torch.zeros(4))
    assert out[:, 0].tolist() == [0.5, -0.5, 0.0, 0.0]
    with pytest.raises(ConfigError, match="scale_rewards"):
        later_turn_advantages(rewards, torch.ones(2), [1], 0, torch.ones(4, 1), num_generations=2,
                              scale_rewards="max", advantages=torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        later_turn_advantages(rewards, torch.ones(2), [1], 0, torch.ones(3, 1), num_generations=2,
                              scale_rewards="none", advantages=torch.zeros(4))


def test_an_answer_advantage_floor_needs_the_answers_own_advantage():
    import torch

    from searchrl.training.credit import floored_answer_advantages

    assert load_agent_config(None, ["grpo.answer_credit=answer_terms", "grpo.answer_advantage_floor=0"]) \
        .grpo.answer_advantage_floor == 0
    with pytest.raises(Exception, match="answer_credit"):
        load_agent_config(None, ["grpo.answer_advantage_floor=0"])
    with pytest.raises(ValueError, match="per-token"):
        floored_answer_advantages(torch.tensor([1.0, -1.0]), torch.tensor([[0, 1], [0, 1]]), 0.0)
    with pytest.raises(ValueError, match="shape"):
        floored_answer_advantages(torch.zeros(2, 3), torch.ones(2, 2), 0.0)


def test_answer_credit_with_every_term_is_grpo_and_rejects_what_it_cannot_split():
    import torch

    from searchrl.training.credit import answer_credited_advantages
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0],
                            [float("nan")] * 3, [1.0, 1.0, 1.0]])
    weights = torch.tensor([4.0, 2.0, 1.0])
    total = (rewards * weights).nansum(dim=1)
    total[4] = torch.nan
    mask = torch.ones(6, 3, dtype=torch.long)
    for scaling in ("group", "batch", "none"):  # TRL's advantage, as its _generate_and_score_completions computes it
        centred = total - torch.nanmean(total.view(-1, 2), dim=1).repeat_interleave(2)
        std = nanstd(total.view(-1, 2), dim=1).repeat_interleave(2) if scaling == "group" else nanstd(total)
        trl = torch.nan_to_num(centred / (std + 1e-4) if scaling != "none" else centred, nan=0.0)
        out = answer_credited_advantages(rewards, weights, [0, 1, 2], mask, num_generations=2, scale_rewards=scaling,
                                         advantages=trl)
        assert torch.allclose(out, trl.unsqueeze(1).expand(6, 3), atol=1e-6), scaling
    rows = answer_credited_advantages(rewards, weights, [0], mask[2:4], num_generations=2, scale_rewards="none",
                                      advantages=trl[2:4], rows=slice(2, 4))
    assert rows[:, 0].tolist() == [1.0, -1.0]  # this process's rows: correctness 0.5 vs 0.0, weight 4, centred
    with pytest.raises(ConfigError, match="scale_rewards"):
        answer_credited_advantages(rewards, weights, [0], mask, num_generations=2, scale_rewards="max",
                                   advantages=trl)
    with pytest.raises(Exception, match="train_answer_text"):
        load_agent_config(None, ["grpo.answer_credit=answer_terms", "grpo.train_answer_text=false"])


# ----------------------------------------------------------------------------------------
# A whole run, then a resume


def _write_data(directory):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as handle:
        handle.writelines(json.dumps({"_id": key, "title": "", "text": text}) + "\n" for key, text in DOCS.items())
    with open(directory / "questions.jsonl", "w") as handle:
        handle.writelines(json.dumps({"id": e.id, "question": e.question, "answers": list(e.answers), "gold_ids": list(e.gold_ids)}) + "\n" for e in QUESTIONS)


def test_train_agent_from_yaml_end_to_end_and_resume(tmp_path, tiny_lm_dir, monkeypatch):
    import searchrl.training

    thresholds = []

    class Recording(searchrl.training.DevEvaluationCallback):
        def __init__(self, *args, **kwargs):
            thresholds.append(kwargs.get("min_delta"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(searchrl.training, "DevEvaluationCallback", Recording)  # the trainer imports it from here
    _write_data(tmp_path / "data")
    config = {
        "model": str(tiny_lm_dir),
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "data": {"questions": str(tmp_path / "data" / "questions.jsonl"), "corpus": str(tmp_path / "data" / "corpus.jsonl"), "dev_size": 2},
        "tool": {"k": 2},
        "episode": {"max_turns": 2, "max_turn_tokens": 6, "max_model_tokens": 16},
        "lora": {"r": 4, "alpha": 8},
        "sft": {"enabled": True, "max_steps": 2, "batch_size": 2, "max_tokens": 4096},
        "grpo": {"steps": 2, "prompts_per_step": 1, "num_generations": 2, "save_steps": 1},
        "eval": {"every": 1, "min_delta": 0.05},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    run = train_agent_from_yaml(path, [])
    assert thresholds == [0.05]  # eval.min_delta reaches the selection

    assert (run / "sft" / "sft.json").exists() and (run / "sft" / "adapter" / "adapter_config.json").exists()
    assert (run / "best" / "adapter_config.json").exists() and (run / "final" / "adapter_config.json").exists()
    assert (run / "report.md").exists()
    split = load_split(run / "split")
    assert len(split.dev) == 2 and not _gold(split.train) & _gold(split.dev)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in records if "dev/f1" in r) == [0, 1, 2]  # before, during and after RL
    assert sorted(r["step"] for r in records if "rollout/episodes" in r) == [1, 2]
    assert any("sft/loss_last" in r for r in records)
    assert sorted(p.name for p in (run / "dev").iterdir()) == ["step-000000.jsonl", "step-000001.jsonl", "step-000002.jsonl"]

    # Extending the same run resumes from its last checkpoint: the warm-start is not redone.
    sft_time = (run / "sft" / "sft.json").stat().st_mtime
    assert train_agent_from_yaml(path, ["grpo.steps=3"]) == run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in records if "rollout/episodes" in r) == [1, 2, 3]
    assert (run / "sft" / "sft.json").stat().st_mtime == sft_time
    assert (run / "checkpoints" / "checkpoint-3").exists()

    # Any other change to a finished run's configuration is refused.
    with pytest.raises(ConfigError, match="different configuration"):
        train_agent_from_yaml(path, ["grpo.learning_rate=0.1"])


def test_training_config_refuses_judge_without_model():
    with pytest.raises(ValueError, match="judge_model"):
        AgentTrainConfig.model_validate({"rewards": {"metric": "judge"}})
