"""A sample whose reward cannot be fully computed drops out of the GRPO update entirely.

TRL leaves a sample out only when *every* reward function returns None for it; a judge failure
used to null correctness and retry while format and retrieval still scored, so the sample trained
on a partial reward as if its answer were wrong.
"""

from __future__ import annotations

from searchrl.agent.judge import LLMJudge
from searchrl.agent.rewards import RewardWeights, build_reward_functions
from searchrl.llm.engine import GenerationEngine

QUESTION = "Who commanded Apollo 13?"


class ScriptedJudge(GenerationEngine):
    """Replies by the proposed answer: YES for Lovell, NO for Haise, gibberish for anything else."""

    model_name = "judge-7b"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        replies = []
        for chat in prompts:
            proposed = chat[-1]["content"].split("Proposed answer:")[1].split("\n")[0]
            replies.append(["YES" if "Lovell" in proposed else "NO" if "Haise" in proposed else "I think maybe"])
        return replies


def _record(answer: str, *, finish: str = "answered") -> dict:
    turns = ["<search>commander</search>", f"<answer>{answer}</answer>"]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": QUESTION}]
    messages += [
        {"role": "assistant", "content": turns[0]},
        {"role": "user", "content": "<information>\n[1] ...\n</information>"},
        {"role": "assistant", "content": turns[1]},
    ]
    return {"question": QUESTION, "messages": messages, "finish_reason": finish,
            "searches": [{"query": "commander", "doc_ids": ["c2"]}]}


def _call_all(functions, episodes, logged):
    columns = dict(
        episode=episodes, answers=[["Jim Lovell"]] * len(episodes), gold_ids=[["c2"]] * len(episodes),
        question=[QUESTION] * len(episodes), trainer_state=None, log_extra=None,
        log_metric=lambda name, value: logged.append((name, value)),
    )
    completions = [[{"role": "assistant", "content": "x"}] for _ in episodes]
    prompts = ["p"] * len(episodes)
    # TRL calls every reward function with the same batch objects, one after the other.
    return {f.__name__: f(prompts=prompts, completions=completions, **columns) for f in functions}


def test_a_judge_failure_drops_the_sample_from_every_reward_term():
    engine = ScriptedJudge()
    functions, _ = build_reward_functions(
        RewardWeights(metric="judge"), judge=LLMJudge(engine, policy_model="policy")
    )
    logged: list = []
    episodes = [_record("Jim Lovell"), _record("something unclear"), _record("Fred Haise")]
    scores = _call_all(functions, episodes, logged)
    assert scores == {
        "correctness_reward": [1.0, None, 0.0],
        "format_reward": [1.0, None, 1.0],
        "retry_reward": [0.0, None, 0.0],
        "retrieval_reward": [1.0, None, 1.0],
    }
    # The judge is asked once per batch, not once per reward term.
    assert engine.calls == 1
    rates = [(name, value) for name, value in logged if not name.startswith("rewards/fired_")]  # fired_<term>: per term
    assert dict(rates) == {"rewards/unscorable_rate": 1 / 3, "rewards/judge_failure_rate": 1 / 3}
    assert len(rates) == 2  # logged once per batch, not once per reward function


def test_unscorable_rate_is_logged_without_a_judge_and_counts_tool_failures():
    functions, _ = build_reward_functions(RewardWeights(metric="em"))
    logged: list = []
    episodes = [_record("Jim Lovell"), _record("Jim Lovell", finish="tool_error"), _record("Haise"), _record("x")]
    scores = _call_all(functions, episodes, logged)
    assert all(values[1] is None for values in scores.values())
    assert scores["correctness_reward"] == [1.0, None, 0.0, 0.0]
    assert {k: v for k, v in logged if not k.startswith("rewards/fired_")} == {"rewards/unscorable_rate": 0.25}


def test_missing_gold_ids_only_leave_the_retrieval_term_unscored():
    """No gold ids is "not applicable" for the retrieval term, not a failure of the sample."""
    functions, _ = build_reward_functions(RewardWeights(metric="em"))
    episodes = [_record("Jim Lovell"), _record("Haise")]
    columns = dict(episode=episodes, answers=[["Jim Lovell"]] * 2, gold_ids=[[], []], question=[QUESTION] * 2)
    completions = ["x", "x"]
    scores = {f.__name__: f(prompts=["p"] * 2, completions=completions, **columns) for f in functions}
    assert scores["correctness_reward"] == [1.0, 0.0]
    assert scores["format_reward"] == [1.0, 1.0]
    assert scores["retrieval_reward"] == [None, None]


def test_calling_one_function_twice_on_the_same_list_rescores_it():
    """Reusing one list object for two batches must not serve the first batch's scores."""
    functions, _ = build_reward_functions(RewardWeights(metric="em"))
    correctness = functions[0]
    episodes = [_record("Jim Lovell")]
    completions = ["x"]
    assert correctness(prompts=["p"], completions=completions, episode=episodes, answers=[["Jim Lovell"]]) == [1.0]
    episodes[0] = _record("Haise")
    assert correctness(prompts=["p"], completions=completions, episode=episodes, answers=[["Jim Lovell"]]) == [0.0]


def test_grpo_trainer_leaves_a_judge_failure_out_and_logs_the_rate(tiny_lm_dir, tmp_path):
    """Through TRL's own aggregation: the dropped rows carry no reward at all, and the rate is logged."""
    import math
    import warnings

    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from searchrl.agent.episode import EpisodeConfig, ScriptedPolicy
    from searchrl.agent.protocol import user_prompt
    from searchrl.agent.tool import SearchTool
    from searchrl.agent.train import AgentRollout, agent_dataset_rows
    from searchrl.data.types import Document, QAExample
    from searchrl.retrieval import build_retriever
    from searchrl.training import LoraSettings, build_grpo_config, build_lora_config

    docs = {"c2": "The commander of the crew was James Lovell.", "c5": "The command module pilot was John Swigert."}
    corpus = {k: Document(k, v) for k, v in docs.items()}
    tool = SearchTool(build_retriever("bm25").index(list(corpus.values()), show_progress=False), corpus, k=1)
    questions = [
        QAExample("q1", "Who was the commander of the crew?", ("James Lovell",), ("c2",)),
        QAExample("q2", "Who was the command module pilot?", ("John Swigert",), ("c5",)),
    ]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm_dir))

    def script(prompt_text: str, turn: int) -> str:
        example = next(e for e in questions if user_prompt(e.question) in prompt_text)
        if turn == 0:
            return f"<search>{example.question}</search>"
        return "<answer>Jim Lovell</answer>" if example.id == "q1" else "<answer>unclear</answer>"

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)), build_lora_config(LoraSettings(r=4)))
    rollout = AgentRollout(tool, questions, EpisodeConfig(max_turns=3), policy_factory=lambda t: ScriptedPolicy(tokenizer, script))
    functions, weights = build_reward_functions(
        RewardWeights(metric="judge"), judge=LLMJudge(ScriptedJudge(), policy_model="policy")
    )
    args = build_grpo_config(
        output_dir=tmp_path, max_steps=1, num_generations=2, prompts_per_step=2, device="cpu", save_steps=100,
        extra={"reward_weights": weights},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=model, reward_funcs=functions, args=args, processing_class=tokenizer, rollout_func=rollout,
            train_dataset=Dataset.from_list(agent_dataset_rows(questions)),
        )
        trainer.train()
    entry = next(e for e in trainer.state.log_history if "reward" in e)
    assert entry["rewards/unscorable_rate"] == 0.5 and entry["rewards/judge_failure_rate"] == 0.5
    # Only the judged-correct episodes count: correctness 4 + format 2 + retrieval 1, nothing partial.
    assert entry["reward"] == 7.0
    format_scores = trainer._logs["rewards"]["format_reward"]
    assert sum(math.isnan(v) for v in format_scores) == 2 and sum(v == 1.0 for v in format_scores) == 2
