"""Answer credit: the words of an answer get the advantage of the reward terms that read them.

GRPO gives every token of a sample one advantage, the sample's weighted reward sum relative to
its group. In an agent episode most of that sum is earned by the search (was a gold passage
retrieved, were the tags well formed) and only the correctness term reads the words of the final
answer. Trained on the whole advantage, the answer's words are pushed up or down by how the
search went: an episode whose search succeeded but whose answer was wrong still raises the
probability of that wrong answer. On Apollo 13 with SmolLM2-135M that moved answers away from
the warm-start's while retrieval improved (``grpo.train_answer_text`` and docs/EXPERIMENTS.md,
"Training the search").

With the sums-then-normalise advantage TRL computes (``multi_objective_aggregation:
sum_then_normalize``), the advantage is linear in the reward terms:

    A = (R - mean_g R) / s = sum_k w_k (r_k - mean_g r_k) / s,

where ``g`` is the sample's group and ``s`` the group's (or batch's) reward standard deviation, or
1 with ``scale_rewards: none``. :func:`answer_credited_advantages` keeps ``A`` on every token
but the answer's words, which get only the part of the sum that comes from the terms named as
reading the answer (for the agent: correctness, and the retry term when it pays only for a
correct answer; see ``searchrl.agent.rewards.answer_reward_funcs``). Where every answer term ties
within a group, the answer's words get advantage 0 and only the KL term (if any) moves them.

Measured on Apollo 13 with SmolLM2-135M (docs/EXPERIMENTS.md, "Crediting the answer's words"), answers drifted
under answer credit as well and held-out F1 did not improve; alone it is not enough (with the floor
below, ``agent-cpu`` uses it).

Both keep comparing answers written after *different* searches: within a group, an answer to
passages that hold the reference is compared with answers to passages that do not. The
*context baseline* (:func:`context_baseline_advantage`) compares an answer only with answers
to the same passages: the rollout samples a few more answers from the point where the
episode's own answer began (``searchrl.agent.episode.resample_answers``), and the answer's
words get its correctness relative to theirs, scaled like a GRPO group of those answers
(:func:`with_answer_advantages` puts it on the answer's words). What the search found no
longer moves the answer's words; every other token keeps GRPO's advantage. Measured on Apollo 13
with SmolLM2-135M (docs/EXPERIMENTS.md, "Comparing each answer only with answers to the same passages"), it
raised the reading of shown answers on the dev questions but not on held-out ones (held-out F1
-0.006 and +0.020 against the warm-start for seeds 0 and 1); the recipes leave it off.

Under all three an answer worse than its baseline has its words pushed down, and pushing a
135M model away from one wrong answer moves probability to other words, not to the right one.
:func:`floored_answer_advantages` (``grpo.answer_advantage_floor``) raises the answer's words'
advantages to a floor: at 0, answers that scored above their baseline are reinforced and the
rest are left alone, reward-filtered imitation for the answer and GRPO for the search. With
answer credit and a floor of 0 (``agent-cpu``; docs/EXPERIMENTS.md, "Floored answer
advantages"), held-out F1 against the warm-start was +0.010, +0.038, -0.012, +0.024 and +0.017 for
seeds 0-4, every interval including 0.

*Later-turn credit* (:func:`later_turn_advantages`, ``grpo.later_turn_credit``) applies the same
reasoning to the decision to search again. GRPO's one advantage per episode charges everything the
model wrote after its first search with that search's outcome: an episode that missed, searched again
and answered scores below the episodes whose first search found the passage, so its search-again is
pushed down with the miss, although after a miss searching again beats answering. With it, the tokens
after the first result get only the terms the first search does not settle, compared with the episodes
of the group whose first search ended alike (:func:`after_first_result` marks those tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from searchrl.errors import ConfigError

#: ``scale_rewards`` values whose advantage :func:`answer_credited_advantages` can split by term.
SCALINGS = ("group", "batch", "none")


def answer_credited_advantages(
    rewards_per_func: Any,
    weights: Any,
    answer_funcs: Sequence[int],
    answer_mask: Any,
    *,
    num_generations: int,
    scale_rewards: str,
    advantages: Any,
    rows: slice | None = None,
) -> Any:
    """Per-token advantages (rows x tokens): ``advantages`` except on the answer's words.

    ``rewards_per_func`` is TRL's samples x reward-functions matrix over all processes (NaN where
    a function did not score a sample), ``weights`` its reward weights, ``answer_funcs`` the
    columns of the terms that read the answer, ``answer_mask`` (this process's rows x completion
    tokens, 1 on the answer's words) where the answer's advantage applies, ``advantages`` TRL's
    per-sample advantages of this process's rows, and ``rows`` which rows of ``rewards_per_func``
    are this process's (default: all).

    >>> import torch
    >>> rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # correctness, retrieval
    >>> total = rewards.sum(dim=1)
    >>> advantages = total - total.view(-1, 2).mean(dim=1).repeat_interleave(2)
    >>> mask = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1]])  # the second token is the answer
    >>> answer_credited_advantages(rewards, torch.ones(2), [0], mask, num_generations=2,
    ...                            scale_rewards="none", advantages=advantages)
    tensor([[ 0.5000,  0.5000],
            [-0.5000, -0.5000],
            [ 0.0000,  0.0000],
            [ 0.0000,  0.0000]])
    """
    import torch

    total, part, _ = _weighted_sums(rewards_per_func, weights, answer_funcs, scale_rewards, "answer credit")
    groups = part.view(-1, num_generations)
    centred = (groups - torch.nanmean(groups, dim=1, keepdim=True)).view(-1)
    answer_advantages = _scaled(centred, total, num_generations, scale_rewards)[rows if rows is not None else slice(None)]
    return with_answer_advantages(advantages, answer_mask, answer_advantages)


def _weighted_sums(rewards_per_func: Any, weights: Any, funcs: Sequence[int], scale_rewards: str, what: str):
    """``(total, part, unscorable)``: each sample's weighted reward sum, the part of it from ``funcs``
    (both NaN where no function scored the sample) and which samples those are."""
    import torch

    if scale_rewards not in SCALINGS:
        raise ConfigError(
            f"{what} cannot split advantages scaled with scale_rewards={scale_rewards!r}",
            hint=f"use one of {', '.join(SCALINGS)}",
        )
    rewards_per_func = rewards_per_func.float()
    weights = weights.to(rewards_per_func.device, torch.float32)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    total = (rewards_per_func * weights).nansum(dim=1)
    part = (rewards_per_func[:, list(funcs)] * weights[list(funcs)]).nansum(dim=1)
    total[unscorable] = torch.nan
    part[unscorable] = torch.nan
    return total, part, unscorable


def _scaled(centred: Any, total: Any, num_generations: int, scale_rewards: str) -> Any:
    """``centred`` divided as TRL divides the advantage under ``scale_rewards`` (NaN -> 0)."""
    import torch
    from trl.trainer.utils import nanstd  # TRL's own, so the scaling is exactly the advantage's

    if scale_rewards == "group":
        centred = centred / (nanstd(total.view(-1, num_generations), dim=1).repeat_interleave(num_generations) + 1e-4)
    elif scale_rewards == "batch":
        centred = centred / (nanstd(total) + 1e-4)
    return torch.nan_to_num(centred, nan=0.0)


def context_baseline_advantage(own: float, others: Sequence[float]) -> float:
    """GRPO's advantage of an answer among answers sampled from the same point of the same episode.

    ``own`` is the episode's answer's score, ``others`` those of the resampled answers; the
    group is all of them: ``(own - mean) / (std + 1e-4)`` with the sample standard deviation, as
    TRL scales a group, and 0 when every answer scores the same (or there are no others).

    >>> round(context_baseline_advantage(1.0, [0.0, 0.0, 0.0]), 3)
    1.5
    >>> context_baseline_advantage(0.5, [0.5, 0.5])
    0.0
    """
    import statistics

    scores = [float(own), *map(float, others)]
    if len(scores) < 2 or max(scores) == min(scores):
        return 0.0
    return (scores[0] - statistics.fmean(scores)) / (statistics.stdev(scores) + 1e-4)


def with_answer_advantages(advantages: Any, answer_mask: Any, answer_advantages: Any) -> Any:
    """Per-token advantages (rows x tokens): ``answer_advantages[row]`` on the tokens ``answer_mask``
    marks, ``advantages`` on every other token (TRL's, one per row, or already per token).
    ``answer_advantages`` is one number per row (a sequence or a tensor). Later-turn credit puts its
    values on the tokens after the first search's results the same way.

    >>> import torch
    >>> with_answer_advantages(torch.tensor([1.0, -1.0]), torch.tensor([[0, 1], [0, 0]]), [0.5, 2.0])
    tensor([[ 1.0000,  0.5000],
            [-1.0000, -1.0000]])
    """
    import torch

    answer_mask = torch.as_tensor(answer_mask, device=advantages.device).bool()
    per_row = torch.as_tensor(answer_advantages, device=advantages.device, dtype=advantages.dtype).reshape(-1)
    per_token = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    if (answer_mask.dim() != 2 or answer_mask.size(0) != advantages.size(0) or per_row.numel() != advantages.size(0)
            or (advantages.dim() == 2 and tuple(answer_mask.shape) != tuple(advantages.shape))):
        raise ValueError(f"a mask of shape {tuple(answer_mask.shape)} and {per_row.numel()} values per row for "
                         f"advantages of shape {tuple(advantages.shape)}")
    return torch.where(answer_mask, per_row.unsqueeze(1), per_token)


def after_first_result(tool_mask: Any) -> Any:
    """1 on the model's tokens written after the first tool result (its second and later turns), 0 elsewhere.

    ``tool_mask`` (rows x completion tokens) is 1 on tokens the model wrote and 0 on what the tool
    and the chat template added; a row's first run of 0s after a model token is the end of its first
    turn (a token the template appended after a stop string, then the search results).

    >>> import torch
    >>> after_first_result(torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1], [1, 1, 1, 0, 0, 0, 0, 0]]))
    tensor([[0, 0, 0, 0, 1, 1, 0, 1],
            [0, 0, 0, 0, 0, 0, 0, 0]])
    """
    import torch

    model = torch.as_tensor(tool_mask).bool()
    written = torch.cummax(model.int(), dim=1).values.bool()  # a model token at or before this position
    gap = written & ~model  # a tool or template token after the model has written
    return (model & (torch.cumsum(gap.int(), dim=1) > 0)).long()


def later_turn_advantages(
    rewards_per_func: Any,
    weights: Any,
    later_funcs: Sequence[int],
    outcome_func: int,
    later_mask: Any,
    *,
    num_generations: int,
    scale_rewards: str,
    advantages: Any,
    rows: slice | None = None,
) -> Any:
    """Per-token advantages (rows x tokens): ``advantages`` except on the tokens ``later_mask`` marks
    (what the model wrote after its first search's results), which are compared only with the episodes
    of their group whose first search ended alike.

    GRPO compares whole episodes, so the tokens of a second search are credited with the first one's
    outcome: an episode that searched again after a first search that missed scores below the
    episodes whose first search found the passage, and its decision to search again is pushed down
    with the miss, although after a miss searching again is the better move. Here the tokens after the
    first result get the part of the reward from ``later_funcs`` (the terms the first search does not
    settle), centred on the mean of the group's episodes with the same value of ``outcome_func`` (a
    term the first search alone decides: the retrieval term read on the first search), and scaled as
    TRL scales the advantage (``scale_rewards``). An episode with no such peer in its group gets 0 there.
    ``rewards_per_func``, ``weights``, ``advantages`` (one per row, or rows x tokens) and ``rows`` are as
    in :func:`answer_credited_advantages`.

    >>> import torch
    >>> rewards = torch.tensor([[0.0, 0.5], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # retrieval (first search), retry
    >>> later = torch.tensor([[1, 1], [1, 1], [0, 0], [0, 0]])  # only the first two wrote after a result
    >>> total = rewards.sum(dim=1)
    >>> advantages = total - total.mean()  # one group of four, unscaled
    >>> later_turn_advantages(rewards, torch.ones(2), [1], 0, later, num_generations=4, scale_rewards="none",
    ...                       advantages=advantages)
    tensor([[ 0.2500,  0.2500],
            [-0.2500, -0.2500],
            [ 0.3750,  0.3750],
            [ 0.3750,  0.3750]])
    """
    import torch

    total, part, unscorable = _weighted_sums(rewards_per_func, weights, later_funcs, scale_rewards, "later-turn credit")
    outcome = rewards_per_func[:, outcome_func].float()
    valid = ~(unscorable | torch.isnan(outcome))
    groups, cells, ok = part.view(-1, num_generations), outcome.view(-1, num_generations), valid.view(-1, num_generations)
    peers = (cells.unsqueeze(2) == cells.unsqueeze(1)) & ok.unsqueeze(2) & ok.unsqueeze(1)  # [group, sample, peer]
    counts = peers.sum(dim=2)
    means = (peers * torch.nan_to_num(groups).unsqueeze(1)).sum(dim=2) / counts.clamp(min=1)
    centred = torch.where(counts >= 2, groups - means, torch.zeros_like(groups)).view(-1)
    later_values = _scaled(centred, total, num_generations, scale_rewards)[rows if rows is not None else slice(None)]
    return with_answer_advantages(advantages, later_mask, later_values)


def floored_answer_advantages(advantages: Any, answer_mask: Any, floor: float) -> Any:
    """Per-token ``advantages`` (rows x tokens) with those on the answer's words raised to at least
    ``floor``; every other token's unchanged.

    With ``floor=0`` an answer is reinforced when it scored above its group and otherwise left
    alone, never pushed down: reward-filtered imitation for the answer's words, GRPO for the rest.

    >>> import torch
    >>> floored_answer_advantages(torch.tensor([[-1.0, -2.0], [0.5, 1.5]]), torch.tensor([[0, 1], [0, 1]]), 0.0)
    tensor([[-1.0000,  0.0000],
            [ 0.5000,  1.5000]])
    """
    import torch

    if advantages.dim() != 2:
        raise ValueError("an answer advantage floor needs per-token advantages (answer credit), "
                         f"got a tensor of shape {tuple(advantages.shape)}")
    answer_mask = torch.as_tensor(answer_mask, device=advantages.device).bool()
    if tuple(answer_mask.shape) != tuple(advantages.shape):
        raise ValueError(f"answer mask of shape {tuple(answer_mask.shape)} for advantages of shape "
                         f"{tuple(advantages.shape)}")
    return torch.where(answer_mask, advantages.clamp(min=floor), advantages)


__all__ = ["SCALINGS", "after_first_result", "answer_credited_advantages", "context_baseline_advantage",
           "floored_answer_advantages", "later_turn_advantages",
           "with_answer_advantages"]
