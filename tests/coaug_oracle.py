"""Test oracle: CoAug's group advantages computed directly, to check what TRL computes from our rewards.

TRL computes the advantages in training; these functions exist only so tests can state what
they must be: ``reward - mean reward of the prompt's samples`` (no std division), scaled by
the prompt's role.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from searchrl.coaug.reward import AdvantageScales
from searchrl.errors import DataError


def group_advantages(rewards: Sequence[float] | np.ndarray, prompt_of_sample: Sequence[int] | np.ndarray) -> np.ndarray:
    """``reward - mean reward of the same prompt`` for every sample (no std division).

    ``NaN`` rewards (samples without a reward) are left out of the mean and get advantage 0;
    a prompt with a single rewarded sample gets advantage 0.

    >>> group_advantages([1.0, 0.0, 0.5, float("nan"), 0.2], [0, 0, 1, 1, 2]).tolist()
    [0.5, -0.5, 0.0, 0.0, 0.0]
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    prompt_of_sample = np.asarray(prompt_of_sample)
    if rewards.ndim != 1 or prompt_of_sample.shape != rewards.shape:
        raise DataError(
            f"{rewards.size} rewards but {prompt_of_sample.size} prompt indices", hint="one prompt index per sample"
        )
    if rewards.size == 0:
        return rewards.copy()
    if not np.issubdtype(prompt_of_sample.dtype, np.integer) or prompt_of_sample.min() < 0:
        raise DataError("prompt indices must be non-negative integers")
    rewarded = ~np.isnan(rewards)
    if np.isinf(rewards).any():
        raise DataError("rewards contain infinite values")
    totals = np.bincount(prompt_of_sample, weights=np.where(rewarded, rewards, 0.0))
    counts = np.bincount(prompt_of_sample, weights=rewarded.astype(np.float64))
    means = totals / np.maximum(counts, 1.0)
    return np.where(rewarded, rewards - means[prompt_of_sample], 0.0)


def role_scaled_advantages(
    rewards: Sequence[float] | np.ndarray,
    prompt_of_sample: Sequence[int] | np.ndarray,
    prompt_kinds: Sequence[str],
    *,
    scales: AdvantageScales = AdvantageScales(),
) -> np.ndarray:
    """Group advantages multiplied by the scale of each sample's prompt kind.

    Args:
        rewards: one reward per sample (``NaN`` = no reward, advantage 0).
        prompt_of_sample: index of each sample's prompt into ``prompt_kinds``.
        prompt_kinds: kind of each prompt (``BatchItem.kind``): ``query``, ``relevant``,
            ``hard_negative`` or ``random_negative``.
        scales: multipliers per role.

    >>> role_scaled_advantages([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], [0, 0, 1, 1, 2, 2],
    ...                        ["query", "relevant", "random_negative"]).round(3).tolist()
    [0.5, -0.5, 0.1, -0.1, 0.05, -0.05]
    """
    centred = group_advantages(rewards, prompt_of_sample)
    scale_of_prompt = np.array([scales.for_kind(kind) for kind in prompt_kinds], dtype=np.float64)
    prompt_of_sample = np.asarray(prompt_of_sample)
    if prompt_of_sample.size and prompt_of_sample.max() >= len(scale_of_prompt):
        raise DataError(
            f"prompt index {int(prompt_of_sample.max())} but only {len(scale_of_prompt)} prompt kinds given",
            hint="give one kind per prompt",
        )
    return centred * scale_of_prompt[prompt_of_sample] if centred.size else centred
