"""Rollouts for TRL's ``GRPOTrainer``: the training rows, the policies and the ``rollout_func``.

TRL's sampler already repeats every prompt ``num_generations`` times, so the ``rollout_func``
(:class:`AgentRollout`) plays exactly one episode per prompt it receives — ``num_generations``
episodes per question — with :func:`~searchrl.agent.episode.run_episodes` and the trainer's
*current* policy: on CPU (or GPU without vLLM) through ``transformers`` generation on the
trainer's model itself; with ``use_vllm`` through the vLLM engine TRL colocates and keeps in
sync with the trained weights (:class:`TrainerVLLMPolicy`), or a ``trl vllm-serve`` server on other
GPUs (:class:`TrainerVLLMServerPolicy`). Completions are the whole multi-turn
continuation after the prompt; ``env_mask`` is 0 on search results, inserted template tokens and
the end-of-turn tokens appended after a stop string, so only tokens the policy sampled get gradient.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from searchrl.agent.episode import (
    EpisodeConfig,
    EnginePolicy,
    TurnOutput,
    answer_mask,
    answer_text_mask,
    copy_numbers,
    resample_answers,
    rollout_batch,
    run_episodes,
)
from searchrl.agent.protocol import SYSTEM_PROMPT, user_prompt
from searchrl.agent.tool import SearchTool
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, DataError
from searchrl.llm.engine import SamplingParams


# ----------------------------------------------------------------------------------------
# Data


def agent_dataset_rows(examples: Sequence[QAExample], system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """Rows of the GRPO training set: the opening chat as ``prompt`` plus the reward columns."""
    return [
        {
            "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt(e.question)}],
            "question_id": e.id,
            "question": e.question,
            "answers": list(e.answers),
            "gold_ids": list(e.gold_ids),
        }
        for e in examples
    ]


def _prompt_key(prompt: Any) -> str:
    """The lookup key of a dataset prompt: the content of its last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise DataError("a rollout prompt has no user message", hint="rows must come from agent_dataset_rows()")
    return users[-1]


# ----------------------------------------------------------------------------------------
# Policies over the trainer's model


class TrainerVLLMPolicy:
    """Turn generation with the vLLM engine TRL colocates (``vllm_mode="colocate"``).

    TRL pushes the trained weights into this engine before every rollout, so episodes sample
    from the current policy. Sampled-token log-probabilities come back with the tokens, which
    TRL uses for its vLLM importance-sampling correction.
    """

    def __init__(self, trainer: Any) -> None:
        generation = getattr(trainer, "vllm_generation", None)
        if generation is None or getattr(generation, "mode", None) != "colocate":
            raise ConfigError("vLLM rollouts need vllm_mode 'colocate'", hint="set grpo.use_vllm: false to use transformers")
        if getattr(generation, "enable_sleep_mode", False):
            raise ConfigError("vLLM sleep mode is not supported by agent rollouts", hint="leave vllm_enable_sleep_mode off")
        if getattr(generation, "tensor_parallel_size", 1) > 1:
            raise ConfigError("agent rollouts support vLLM tensor_parallel_size 1 only")
        self.llm = generation.llm
        self.tokenizer = trainer.processing_class
        config = trainer.accelerator.unwrap_model(trainer.model).config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)

    def generate_turns(self, token_id_lists: Sequence[Sequence[int]], params: SamplingParams) -> list[TurnOutput]:
        from searchrl.llm.vllm_engine import vllm_sampling_params

        # No per-request seed: the episodes of one question send the same prompt, and a shared
        # seed would make the whole GRPO group sample the same tokens.
        sampling = vllm_sampling_params(params.model_copy(update={"n": 1, "seed": None}), logprobs=True)
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in token_id_lists], sampling_params=sampling, use_tqdm=False
        )
        turns = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = None
            if completion.logprobs is not None:
                logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids)]
            if completion.finish_reason == "length":
                finish = "length"
            elif isinstance(completion.stop_reason, str):
                finish = "stop"
            else:
                finish = "eos"
            turns.append(TurnOutput(ids, completion.text, logprobs, finish))  # type: ignore[arg-type]
        return turns


class TrainerVLLMServerPolicy:
    """Turn generation with a ``trl vllm-serve`` server (``vllm_mode="server"``).

    TRL's client sends the trained weights to the server before every rollout, as in colocate
    mode; each turn of every active episode is one request of token ids. The server returns
    token ids and the sampled tokens' log-probabilities, not text or a finish reason: the text is
    decoded here, and the finish reason read from the tokens (a stop string at the end, the
    end-of-sequence token, or the token limit). A multi-turn rollout cannot take part in TRL's
    cross-process gathering (processes would need the same number of turns), so server mode
    trains the agent with one training process; co-augmentation uses TRL's own generation and
    has no such limit.
    """

    def __init__(self, trainer: Any) -> None:
        generation = getattr(trainer, "vllm_generation", None)
        if generation is None or getattr(generation, "mode", None) != "server":
            raise ConfigError("server rollouts need vllm_mode 'server'")
        processes = getattr(trainer.accelerator, "num_processes", 1)
        if processes != 1:
            raise ConfigError(
                f"agent rollouts through a vLLM server run in one training process, not {processes}",
                hint="launch training with one process (the server uses the other GPUs), or use vllm_mode: colocate",
            )
        self.client = generation.vllm_client
        self.tokenizer = trainer.processing_class
        config = trainer.accelerator.unwrap_model(trainer.model).config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)

    def generate_turns(self, token_id_lists: Sequence[Sequence[int]], params: SamplingParams) -> list[TurnOutput]:
        stop = list(params.stop)
        output = self.client.generate(
            prompts=[list(ids) for ids in token_id_lists],
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            logprobs=0,
            generation_kwargs={"stop": stop, "include_stop_str_in_output": True} if stop else None,
        )
        eos = self.tokenizer.eos_token_id
        turns = []
        for ids, logprobs in zip(output["completion_ids"], output.get("logprobs") or [None] * len(token_id_lists)):
            ids = list(ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            sampled = [float(step[0]) for step in logprobs] if logprobs is not None else None
            if any(text.endswith(s) for s in stop):
                finish = "stop"
            elif ids and ids[-1] == eos:
                finish = "eos"
            elif len(ids) >= params.max_new_tokens:
                finish = "length"
            else:
                finish = "eos"
            turns.append(TurnOutput(ids, text, sampled, finish))  # type: ignore[arg-type]
        return turns


def trainer_policy(trainer: Any, *, batch_size: int = 16) -> Any:
    """The episode policy that samples from the trainer's current model (vLLM when TRL runs it)."""
    if getattr(trainer, "use_vllm", False):
        if getattr(getattr(trainer, "vllm_generation", None), "mode", None) == "server":
            return TrainerVLLMServerPolicy(trainer)
        return TrainerVLLMPolicy(trainer)
    from searchrl.llm.transformers_engine import TransformersEngine

    model = trainer.accelerator.unwrap_model(trainer.model)
    engine = TransformersEngine.from_model(model, trainer.processing_class, batch_size=batch_size)
    # Without vLLM the sampler *is* the trained model (with the adapter merged in, which differs
    # only by rounding), so TRL's own log-probabilities stand and the extra scoring pass is skipped.
    return EnginePolicy(engine, logprobs=False)


# ----------------------------------------------------------------------------------------
# The rollout function


class AgentRollout:
    """``rollout_func`` for TRL's ``GRPOTrainer``: one search episode per received prompt.

    ``examples`` are the training questions; prompts are matched to them by their user
    message. Returns ``prompt_ids``, ``completion_ids``, ``env_mask``, ``logprobs`` and the
    ``episode`` records (read by the reward functions). Rollout statistics (searches, answers,
    finish reasons) go to ``run`` when one is given.

    ``policy_factory(trainer)`` builds the policy; the default samples from the trainer's model.
    ``train_answer_text=False`` leaves the words of each final answer out of the loss
    (:func:`~searchrl.agent.episode.answer_text_mask`); ``answer_credit=True`` returns where they
    are instead (``answer_mask``), for the trainer to give them their own advantage
    (:mod:`searchrl.training.credit`). ``answer_samples=K`` (K >= 1) also returns that advantage
    (``answer_advantage``): each answer is compared with K answers resampled from the point where
    it began (the context baseline), all scored by ``correctness_reward`` with ``answer_metric``.
    ``greedy_member=True`` plays the first episode of each question greedily (temperature 0, as
    evaluation plays it) and samples the others, so the group's advantage compares what the
    evaluated policy does with its samples (under several training processes, the first copy in each
    process's share of the step).
    """

    def __init__(
        self,
        tool: SearchTool,
        examples: Sequence[QAExample],
        episode_config: EpisodeConfig,
        *,
        run: Any = None,
        policy_factory: Any = None,
        generation_batch_size: int = 16,
        train_answer_text: bool = True,
        answer_credit: bool = False,
        answer_samples: int = 0,
        answer_metric: str = "em",
        greedy_member: bool = False,
    ) -> None:
        if (answer_credit or answer_samples) and not train_answer_text:
            raise ConfigError("answer credit trains the answer's words, which train_answer_text=False leaves out",
                              hint="use one of the two")
        if answer_samples and answer_credit:
            raise ConfigError("answer_samples gives the answer's words the context baseline's advantage; "
                              "answer_credit gives them the answer terms' part of GRPO's", hint="use one of the two")
        if answer_samples and answer_metric not in ("em", "f1"):
            raise ConfigError(f"the context baseline scores resampled answers with em or f1, not {answer_metric!r}",
                              hint="use rewards.metric em or f1")
        if answer_samples < 0:
            raise ConfigError(f"answer_samples must be 0 (off) or more, not {answer_samples}")
        self.tool = tool
        self.train_answer_text = train_answer_text
        self.answer_credit = answer_credit
        self.answer_samples = answer_samples
        self.answer_metric = answer_metric
        self.greedy_member = greedy_member
        self.by_prompt = {user_prompt(e.question): e for e in examples}
        if len(self.by_prompt) != len(examples):
            raise DataError("two training questions have the same text", hint="remove duplicate questions")
        self.episode_config = episode_config
        self.run = run
        self.policy_factory = policy_factory or (lambda trainer: trainer_policy(trainer, batch_size=generation_batch_size))
        self.last_episodes: list = []

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        import torch

        try:
            examples = [self.by_prompt[_prompt_key(p)] for p in prompts]
        except KeyError as err:
            raise DataError(f"rollout prompt not in the training set: {err}") from None
        step = int(trainer.state.global_step)
        # A different seed every step: the engine seeds its sampler per call, and the same seed
        # each step would replay the same random numbers.
        config = self.episode_config.model_copy(update={"seed": self.episode_config.seed + 10_007 * (step + 1)})
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        # searchrl's trainer samples with the LoRA adapter merged (restored before the update)
        sampling = getattr(trainer, "generation_context", contextlib.nullcontext)
        answers = resampled = None
        try:
            with torch.no_grad(), sampling():
                policy = self.policy_factory(trainer)
                episodes = run_episodes(policy, self.tool, examples, config, step=step,
                                        greedy=greedy_members(examples) if self.greedy_member else None)
                if self.answer_credit or self.answer_samples:
                    answers = [answer_mask(r, trainer.processing_class.decode) for r in episodes]
                if self.answer_samples:
                    # a seed no turn or answer continuation of these episodes uses
                    resampled = resample_answers(policy, episodes, config, samples=self.answer_samples,
                                                 seed=config.seed + 2 * config.max_turns, answer_masks=answers)
        finally:
            if was_training:
                model.train()
        self.last_episodes = episodes
        masks = [r.completion_mask for r in episodes]
        if not self.train_answer_text:
            masks = [answer_text_mask(r, trainer.processing_class.decode) for r in episodes]
        advantages, baseline_stats = self._context_baselines(episodes, resampled) if resampled is not None else (None, {})
        batch = rollout_batch(episodes, completion_masks=masks, answer_masks=answers, answer_advantages=advantages)
        if self.run is not None and getattr(trainer, "accelerator", None) is not None and trainer.accelerator.is_main_process:
            stats = rollout_statistics(episodes, time.perf_counter() - started)
            stats["loss_tokens_per_episode"] = sum(map(sum, batch["env_mask"])) / max(len(episodes), 1)
            if answers is not None:
                stats["answer_tokens_per_episode"] = sum(map(sum, batch["answer_mask"])) / max(len(episodes), 1)
            self.run.log_metrics(step + 1, {**stats, **baseline_stats}, prefix="rollout/")
        return batch

    def _context_baselines(self, episodes: Sequence[Any], resampled: Sequence[list[str] | None]):
        """Each episode's answer advantage against its resampled answers (0 where there are none), and
        what to log: the share of episodes whose answer was resampled, the mean score of their own answers
        and of the resampled ones, and how often the advantage was not 0. (Only answered episodes are
        resampled, and their answers always score: the search tool did not fail.)"""
        from searchrl.agent.rewards import correctness_reward
        from searchrl.training.credit import context_baseline_advantage

        advantages, own_scores, sample_scores = [], [], []
        for episode, turns in zip(episodes, resampled):
            if turns is None:
                advantages.append(0.0)
                continue
            own = correctness_reward(episode, episode.answers, metric=self.answer_metric)
            others = [correctness_reward([*episode.assistant_turns[:-1], turn], episode.answers,
                                         metric=self.answer_metric) for turn in turns]
            if own is None or None in others:
                raise ValueError(f"episode {episode.sample_key}: an answered episode's answers could not be scored")
            advantages.append(context_baseline_advantage(own, others))
            own_scores.append(own)
            sample_scores.extend(others)
        baselined = len(own_scores)
        stats = {
            "answer_baseline_rate": baselined / max(len(episodes), 1),
            "answer_own_score": sum(own_scores) / max(baselined, 1),
            "answer_resampled_score": sum(sample_scores) / max(len(sample_scores), 1),
            "answer_advantage_nonzero": sum(a != 0 for a in advantages) / max(baselined, 1),
        }
        return advantages, stats


def greedy_members(examples: Sequence[QAExample]) -> list[bool]:
    """``True`` for the first occurrence of each question: the group member played greedily.

    >>> a, b = QAExample("q1", "Who?", ["x"]), QAExample("q2", "When?", ["y"])
    >>> greedy_members([a, a, b, b, a])
    [True, False, True, False, False]
    """
    return [n == 0 for n in copy_numbers(examples)]


def rollout_statistics(episodes: Sequence[Any], seconds: float | None = None) -> dict[str, float]:
    """Means over a batch of episodes: searches, retries (searches after the first), turns, answered and
    tool-error rates, tokens."""
    n = max(len(episodes), 1)
    stats = {
        "episodes": float(len(episodes)),
        "searches_per_episode": sum(e.num_searches for e in episodes) / n,
        "retries_per_episode": sum(max(e.num_searches - 1, 0) for e in episodes) / n,
        "retry_rate": sum(e.num_searches > 1 for e in episodes) / n,
        "answered_rate": sum(e.finish_reason == "answered" for e in episodes) / n,
        "tool_error_rate": sum(e.finish_reason == "tool_error" for e in episodes) / n,
        "turns_per_episode": sum(e.num_turns for e in episodes) / n,
        "model_tokens_per_episode": sum(e.num_model_tokens for e in episodes) / n,
        "completion_tokens_per_episode": sum(len(e.completion_ids) for e in episodes) / n,
    }
    if seconds is not None:
        stats["seconds"] = seconds
    return stats


__all__ = [
    "AgentRollout",
    "TrainerVLLMPolicy",
    "agent_dataset_rows",
    "rollout_statistics",
    "trainer_policy",
]
