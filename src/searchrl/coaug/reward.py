"""The entangled co-augmentation reward: in-batch nDCG@k over randomly sampled pools.

Every query prompt and every document prompt of a training step has several sampled
expansions. A query sample is good if, against a *typical* pool of expanded documents, it ranks
its own relevant documents high; a document sample is good if the queries ranked well in the
pools it took part in. So, for ``T`` rounds:

1. pick one sample per document prompt at random — the pool;
2. for every query sample, rank the pool by score and compute nDCG@k with the graded
   relevance of the sample's own query;
3. a query sample's reward is its mean nDCG over the rounds; a document sample's reward is the
   weighted mean of the nDCGs of all query samples in the rounds where it was picked, with
   weight ``1 + w * relevance`` for rows of queries it is relevant to and ``1`` otherwise
   (so a document is also paid less when it crowds other queries' results).

Conventions (each one pinned by a test):

* nDCG is trec_eval's (and so ir-measures'): linear gain ``rel`` and discount
  ``1 / log2(rank + 1)``. The ideal DCG is taken over the pool; every document prompt is in
  every pool exactly once, so it is fixed per query prompt.
* A query prompt with no relevant document in the pool has nDCG 0 in every round; those rows
  carry no information about documents and are left out of document rewards.
* Ties in score are broken deterministically. ``ties="pessimistic"`` (default) puts the less
  relevant document first, then the lower document-prompt index, then the lower sample index:
  a query that matches nothing (all scores 0) earns nothing, whatever the batch order.
  ``ties="index"`` is a plain stable sort by index (what a stable ``argsort`` of the scores
  gives; batch order then leaks into the reward — e.g. relevant documents listed first win ties).
* A document sample never picked in any round has no reward: ``NaN`` (give TRL ``None``).

The second half of this module is :class:`CoAugReward`, the reward function TRL calls once per
step: it rebuilds the step's batch, parses and joins the expansions, scores them and returns
role-scaled rewards (see :mod:`searchrl.coaug.train` for how a step maps onto TRL).

Implementation: the order of all document samples for a query sample does not depend on the
round, so it is sorted once per query sample (``[query samples x doc samples]``). A round only
decides which samples are present, and the top-k of a pool is the first ``k`` *present* samples
in that fixed order. So instead of a top-k over ``[rounds x queries x pool]`` per round, the
code walks down the fixed orders a position at a time with ``[queries x rounds]`` arrays,
counting present samples (their rank) and adding the discounted gain of present relevant ones;
with ``G`` samples per prompt about ``k * G`` positions are needed, and memory stays at
``O(queries x rounds)`` without chunking. Document rewards need only a weighted count over
the picks plus a sum over the few (query sample, relevant document sample) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from searchrl.data.types import document_text
from searchrl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from searchrl.augment import ExpansionPolicy
    from searchrl.coaug.batch import CoAugBatch, CoAugBatchBuilder
    from searchrl.coaug.evaluate import BatchScorer

Ties = Literal["pessimistic", "index"]

_LAYOUT_HINT = "map samples to prompts with CoAugBatch.sample_layout"
_MAX_BLOCK_ELEMENTS = 1 << 22  # cells of the full-ranking fallback processed at once (~4M)


@dataclass(frozen=True)
class SampledRewards:
    """Output of :func:`sampled_ndcg_rewards`.

    Attributes:
        query_rewards: ``[num_query_samples]`` mean nDCG@k over the rounds.
        document_rewards: ``[num_doc_samples]`` weighted mean nDCG of the rounds the sample was
            picked in; ``NaN`` if it was never picked or no query row had a relevant document.
        ndcg: ``[rounds, num_query_samples]`` nDCG@k of every query sample in every round.
        picks: ``[rounds, num_doc_prompts]`` the document sample picked for each prompt per round.
        times_picked: ``[num_doc_samples]`` number of rounds each document sample was picked in.
    """

    query_rewards: np.ndarray
    document_rewards: np.ndarray
    ndcg: np.ndarray
    picks: np.ndarray
    times_picked: np.ndarray


def cosine_score_matrix(query_embeddings: np.ndarray, doc_embeddings: np.ndarray) -> np.ndarray:
    """``[num_queries, num_docs]`` cosine similarities (rows normalised, one matrix product).

    A zero vector has similarity 0 with everything.

    >>> cosine_score_matrix(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])).round(4)
    array([[1.    , 0.    , 0.7071]])
    """
    queries = _unit_rows(np.asarray(query_embeddings, dtype=np.float64), "query_embeddings")
    docs = _unit_rows(np.asarray(doc_embeddings, dtype=np.float64), "doc_embeddings")
    if queries.shape[1] != docs.shape[1]:
        raise DataError(
            f"query embeddings have dimension {queries.shape[1]}, document embeddings {docs.shape[1]}",
            hint="encode queries and documents with the same model",
        )
    return queries @ docs.T


def as_reward_list(rewards: np.ndarray) -> list[float | None]:
    """Rewards as TRL reward functions return them: floats, ``None`` where there is no reward.

    >>> as_reward_list(np.array([0.5, np.nan]))
    [0.5, None]
    """
    return [None if np.isnan(value) else float(value) for value in np.asarray(rewards, dtype=np.float64)]


def merge_duplicate_documents(
    doc_ids: Sequence[str], relevance: np.ndarray, doc_prompt_of_sample: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Make a document drawn several times in one step one pool slot, as CoAug does.

    A relevant document drawn twice for a query (sampling with replacement), or a document in
    two groups, would otherwise be two slots of every pool: the query's ideal DCG would count it
    twice and a query could be paid twice for the same document. Merged, the slot's samples are
    the union of the prompts' samples, so each round picks one of them.

    Returns ``(relevance, doc_prompt_of_sample)`` over the distinct documents, first occurrence
    first.

    >>> relevance = np.array([[1, 1, 0]])
    >>> merged, owner = merge_duplicate_documents(["d1", "d1", "d2"], relevance, np.array([0, 0, 1, 1, 2]))
    >>> merged.tolist(), owner.tolist()
    ([[1, 0]], [0, 0, 0, 0, 1])
    """
    slot_of_id: dict[str, int] = {}
    slot_of_column = np.array([slot_of_id.setdefault(d, len(slot_of_id)) for d in doc_ids], dtype=np.int64)
    first_column = np.unique(slot_of_column, return_index=True)[1]
    return np.asarray(relevance)[:, first_column], slot_of_column[np.asarray(doc_prompt_of_sample, dtype=np.int64)]


def group_spread_metrics(
    rewards: np.ndarray, prompt_of_sample: np.ndarray, role_of_prompt: Sequence[str], *, tolerance: float = 1e-9
) -> dict[str, float]:
    """How much the rewards of each prompt's samples differ: what GRPO's advantages are made of.

    ``reward_std_within_group`` is the mean over prompts of the standard deviation of their
    samples' rewards (``NaN`` rewards left out); ``frac_zero_std_groups`` the share of prompts
    whose samples all got the same reward (no gradient from them); both also per role.

    >>> m = group_spread_metrics(np.array([0.5, 0.5, 0.2, 0.6]), np.array([0, 0, 1, 1]), ["query", "document"])
    >>> round(m["coaug/frac_zero_std_groups"], 2), round(m["coaug/reward_std_within_group_document"], 2)
    (0.5, 0.2)
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    prompt_of_sample = np.asarray(prompt_of_sample, dtype=np.int64)
    stds, roles = [], []
    for prompt in np.unique(prompt_of_sample):
        values = rewards[prompt_of_sample == prompt]
        values = values[np.isfinite(values)]
        if values.size >= 2:
            stds.append(float(values.std()))
            roles.append(role_of_prompt[prompt])
    if not stds:
        return {}
    std, role = np.array(stds), np.array(roles)
    metrics = {
        "coaug/reward_std_within_group": float(std.mean()),
        "coaug/frac_zero_std_groups": float((std <= tolerance).mean()),
    }
    for name in ("query", "document"):
        mask = role == name
        if mask.any():
            metrics[f"coaug/reward_std_within_group_{name}"] = float(std[mask].mean())
            metrics[f"coaug/frac_zero_std_groups_{name}"] = float((std[mask] <= tolerance).mean())
    return metrics


def draw_picks(
    doc_prompt_of_sample: np.ndarray,
    rounds: int,
    seed: int | np.random.Generator | None = None,
    *,
    num_doc_prompts: int | None = None,
) -> np.ndarray:
    """``[rounds, num_doc_prompts]``: for each round, one document sample per prompt, uniformly.

    Prompts may have different numbers of samples (e.g. an unexpanded document has one).

    >>> draw_picks(np.array([0, 0, 1]), rounds=3, seed=0).shape
    (3, 2)
    """
    prompt_of_sample = _as_index_array(doc_prompt_of_sample, "doc_prompt_of_sample")
    num_prompts = _count_prompts(prompt_of_sample, num_doc_prompts)
    counts = np.bincount(prompt_of_sample, minlength=num_prompts)
    _require_every_prompt_sampled(counts)
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}", hint="CoAug uses 512")
    rng = np.random.default_rng(seed)
    samples_by_prompt = np.argsort(prompt_of_sample, kind="stable")
    first_sample = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offset = np.floor(rng.random((rounds, num_prompts)) * counts).astype(np.int64)
    return samples_by_prompt[first_sample + np.minimum(offset, counts - 1)]


def sampled_ndcg_rewards(
    scores: np.ndarray,
    query_prompt_of_sample: np.ndarray,
    doc_prompt_of_sample: np.ndarray,
    relevance: np.ndarray,
    *,
    rounds: int = 512,
    k: int = 10,
    relevant_weight: float = 10.0,
    seed: int | np.random.Generator | None = None,
    picks: np.ndarray | None = None,
    ties: Ties = "pessimistic",
) -> SampledRewards:
    """Sampled in-batch nDCG@k rewards for every query sample and every document sample.

    Args:
        scores: ``[num_query_samples, num_doc_samples]`` retrieval scores (BM25 or cosine).
        query_prompt_of_sample: ``[num_query_samples]`` index of each sample's query prompt
            (a row of ``relevance``).
        doc_prompt_of_sample: ``[num_doc_samples]`` index of each sample's document prompt
            (a column of ``relevance``); every document prompt needs at least one sample.
        relevance: ``[num_query_prompts, num_doc_prompts]`` graded relevance, 0 = not relevant.
        rounds: number of sampled pools ``T`` (ignored when ``picks`` is given).
        k: rank cut-off of nDCG.
        relevant_weight: ``w`` in the document weight ``1 + w * relevance``.
        seed: seed or ``numpy.random.Generator`` for the picks.
        picks: ``[rounds, num_doc_prompts]`` document sample indices to use instead of random
            ones (``picks[t, p]`` must be a sample of prompt ``p``), e.g. from :func:`draw_picks`.
        ties: ``"pessimistic"`` or ``"index"``; see the module docstring.

    Returns:
        :class:`SampledRewards`.

    Two queries, two documents with two samples each; query 0 wants document 0, query 1
    wants document 1. Query sample 0 ranks document 0's samples first, query sample 1 ranks
    document 0's samples first too (wrong), so in every pool query 0 scores 1 and query 1
    scores ``1 / log2(3)``:

    >>> scores = np.array([[3.0, 2.0, 1.0, 0.5],
    ...                    [3.0, 2.0, 1.0, 0.5]])
    >>> relevance = np.array([[1, 0], [0, 1]])
    >>> r = sampled_ndcg_rewards(scores, np.array([0, 1]), np.array([0, 0, 1, 1]), relevance, rounds=8, seed=0)
    >>> r.query_rewards.round(4)
    array([1.    , 0.6309])
    """
    if ties not in ("pessimistic", "index"):
        raise ConfigError(f"unknown tie-break {ties!r}", hint="use 'pessimistic' or 'index'")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}", hint="nDCG@10 uses k=10")
    if not (np.isfinite(relevant_weight) and relevant_weight >= 0):
        raise ConfigError(f"relevant_weight must be a finite number >= 0, got {relevant_weight}", hint="CoAug uses 10")
    scores = np.asarray(scores, dtype=np.float64)
    relevance = np.asarray(relevance, dtype=np.float64)
    query_prompt_of_sample = _as_index_array(query_prompt_of_sample, "query_prompt_of_sample")
    doc_prompt_of_sample = _as_index_array(doc_prompt_of_sample, "doc_prompt_of_sample")
    _check_inputs(scores, query_prompt_of_sample, doc_prompt_of_sample, relevance)
    num_doc_samples = scores.shape[1]
    num_doc_prompts = relevance.shape[1]
    samples_per_prompt = np.bincount(doc_prompt_of_sample, minlength=num_doc_prompts)
    _require_every_prompt_sampled(samples_per_prompt)

    if picks is None:
        picks = draw_picks(doc_prompt_of_sample, rounds, seed, num_doc_prompts=num_doc_prompts)
    else:
        picks = _check_picks(picks, doc_prompt_of_sample, num_doc_prompts)
    num_rounds = picks.shape[0]
    # picked_by_sample[j, t]: sample j is in round t's pool ([samples, rounds] so that the
    # per-sample gathers below read contiguous rows).
    picked_by_sample = np.zeros((num_doc_samples, num_rounds), dtype=bool)
    picked_by_sample[picks, np.arange(num_rounds)[:, None]] = True

    # gains[q, j]: relevance of document sample j's prompt for query sample q's prompt.
    gains = relevance[query_prompt_of_sample][:, doc_prompt_of_sample]
    ranking = _rank_all_samples(scores, gains, doc_prompt_of_sample, ties)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal_dcg = (-np.sort(-relevance, axis=1))[:, :k] @ discounts[: min(k, num_doc_prompts)]
    query_ideal_dcg = ideal_dcg[query_prompt_of_sample]

    dcg = _pool_dcg(picked_by_sample, ranking, gains, k, max_depth=4 * k * int(samples_per_prompt.max()))
    has_relevant = query_ideal_dcg > 0
    ndcg = np.where(has_relevant, dcg / np.where(has_relevant, query_ideal_dcg, 1.0), 0.0)

    times_picked = np.bincount(picks.ravel(), minlength=num_doc_samples)
    document_rewards = _document_rewards(
        ndcg, picks, picked_by_sample, gains, has_relevant, relevant_weight, times_picked
    )

    return SampledRewards(
        query_rewards=ndcg.mean(axis=0),
        document_rewards=document_rewards,
        ndcg=ndcg,
        picks=picks,
        times_picked=times_picked,
    )


def _document_rewards(
    ndcg: np.ndarray,
    picks: np.ndarray,
    picked_by_sample: np.ndarray,
    gains: np.ndarray,
    has_relevant: np.ndarray,
    relevant_weight: float,
    times_picked: np.ndarray,
) -> np.ndarray:
    """Weighted mean nDCG of the rounds each document sample was picked in (``NaN`` if none).

    The weight of query row ``q`` for document sample ``j`` is ``1 + w * gains[q, j]``, or 0
    if ``q``'s prompt has no relevant document. Split as "1 for every row" plus "w * gain for the
    few relevant pairs", the numerator is one weighted count over the picks plus a sum over the
    relevant (query sample, document sample) pairs only.
    """
    num_samples = picked_by_sample.shape[0]
    row_mask = has_relevant.astype(np.float64)
    # Weight-1 part: sum over rounds where j was picked of sum_q ndcg[t, q].
    round_totals = ndcg @ row_mask
    numerator = np.bincount(picks.ravel(), np.repeat(round_totals, picks.shape[1]), minlength=num_samples)
    weight_per_round = np.full(num_samples, row_mask.sum())
    pair_query, pair_doc = np.nonzero(gains * row_mask[:, None])
    if pair_query.size:
        pair_weight = relevant_weight * gains[pair_query, pair_doc]
        # ndcg_when_picked[q, r] = sum of ndcg[t, q] over the rounds where the r-th relevant
        # document sample was picked: one product over the few samples relevant to anything.
        relevant_samples, pair_column = np.unique(pair_doc, return_inverse=True)
        ndcg_when_picked = ndcg.T @ picked_by_sample[relevant_samples].T.astype(np.float64)
        pair_ndcg_when_picked = ndcg_when_picked[pair_query, pair_column]
        numerator += np.bincount(pair_doc, pair_weight * pair_ndcg_when_picked, minlength=num_samples)
        weight_per_round += np.bincount(pair_doc, pair_weight, minlength=num_samples)
    total_weight = times_picked * weight_per_round
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total_weight > 0, numerator / total_weight, np.nan)


def _rank_all_samples(
    scores: np.ndarray, gains: np.ndarray, doc_prompt_of_sample: np.ndarray, ties: Ties
) -> np.ndarray:
    """``[num_query_samples, num_doc_samples]``: every document sample, best first, per query sample."""
    num_samples = scores.shape[1]
    # The last tie-break, (prompt, sample) order, folded into one code per sample.
    tie_code = np.empty(num_samples, dtype=np.int64)
    tie_code[np.lexsort((np.arange(num_samples), doc_prompt_of_sample))] = np.arange(num_samples)
    tie_code = np.broadcast_to(tie_code, scores.shape)
    # np.lexsort sorts by the last key first.
    keys = (tie_code, gains, -scores) if ties == "pessimistic" else (tie_code, -scores)
    return np.lexsort(keys, axis=-1)


def _pool_dcg(
    picked_by_sample: np.ndarray, ranking: np.ndarray, gains: np.ndarray, k: int, max_depth: int
) -> np.ndarray:
    """``[rounds, num_query_samples]`` DCG@k of each round's pool for each query sample.

    Walks down every query sample's fixed ranking one position at a time, for all rounds and
    query samples at once: ``seen`` counts the pool members met so far (the rank of the next
    one), and a present relevant sample adds ``gain / log2(rank + 1)``. The walk stops once
    every row has met ``min(k, pool size)`` pool members; rows still short after ``max_depth``
    positions are finished over their full ranking.
    """
    num_rounds = picked_by_sample.shape[1]
    num_queries, num_samples = ranking.shape
    max_depth = min(max_depth, num_samples)
    pool_size = int(picked_by_sample[:, 0].sum())  # one sample per document prompt, every round
    cutoff = min(k, pool_size)  # a row is complete once it has met this many pool members
    discount_by_rank = np.zeros(num_samples + 1)
    discount_by_rank[1 : cutoff + 1] = 1.0 / np.log2(np.arange(2, cutoff + 2))

    query_rows = np.arange(num_queries)
    seen = np.zeros((num_queries, num_rounds), dtype=np.int32)
    dcg = np.zeros((num_queries, num_rounds))
    for position in range(max_depth):
        samples = ranking[:, position]
        present = picked_by_sample[samples]  # [queries, rounds]
        seen += present
        gain = gains[query_rows, samples]
        relevant = np.flatnonzero(gain)
        if relevant.size:
            dcg[relevant] += present[relevant] * discount_by_rank[seen[relevant]] * gain[relevant, None]
        if position % 8 == 7 and seen.min() >= cutoff:
            break

    query_idx, round_idx = np.nonzero(seen < cutoff)
    rows_per_block = max(1, _MAX_BLOCK_ELEMENTS // num_samples)
    for start in range(0, query_idx.size, rows_per_block):
        queries = query_idx[start : start + rows_per_block]
        rounds = round_idx[start : start + rows_per_block]
        full_ranking = ranking[queries]
        present = picked_by_sample[full_ranking, rounds[:, None]]  # [rows, samples]
        rank = np.cumsum(present, axis=1)
        row_gains = np.take_along_axis(gains[queries], full_ranking, axis=1)
        dcg[queries, rounds] = np.einsum("rs,rs->r", discount_by_rank[rank] * present, row_gains)
    return dcg.T


def _check_inputs(
    scores: np.ndarray, query_prompt_of_sample: np.ndarray, doc_prompt_of_sample: np.ndarray, relevance: np.ndarray
) -> None:
    if scores.ndim != 2:
        raise DataError(
            f"scores must be a [query samples x document samples] matrix, got shape {scores.shape}",
            hint="score every query sample against every document sample",
        )
    if relevance.ndim != 2:
        raise DataError(
            f"relevance must be a [query prompts x document prompts] matrix, got shape {relevance.shape}",
            hint="use CoAugBatch.relevance",
        )
    if len(query_prompt_of_sample) != scores.shape[0] or len(doc_prompt_of_sample) != scores.shape[1]:
        raise DataError(
            f"scores has shape {scores.shape} but there are {len(query_prompt_of_sample)} query samples "
            f"and {len(doc_prompt_of_sample)} document samples",
            hint="one score row per query sample, one column per document sample",
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise DataError("the batch has no query samples or no document samples", hint="a step needs both")
    if not np.isfinite(scores).all():
        raise DataError("scores contain NaN or infinite values", hint="check the scorer and the embeddings")
    if not np.isfinite(relevance).all() or (relevance < 0).any():
        raise DataError("relevance must be finite and non-negative", hint="map negative qrels grades to 0")
    if query_prompt_of_sample.max() >= relevance.shape[0]:
        raise DataError(
            f"query prompt index {query_prompt_of_sample.max()} out of range for {relevance.shape[0]} relevance rows",
            hint=_LAYOUT_HINT,
        )
    if doc_prompt_of_sample.max() >= relevance.shape[1]:
        raise DataError(
            f"document prompt index {doc_prompt_of_sample.max()} out of range for "
            f"{relevance.shape[1]} relevance columns",
            hint=_LAYOUT_HINT,
        )


def _check_picks(picks: np.ndarray, doc_prompt_of_sample: np.ndarray, num_doc_prompts: int) -> np.ndarray:
    picks = np.asarray(picks)
    if picks.ndim != 2 or picks.shape[1] != num_doc_prompts or picks.shape[0] < 1:
        raise DataError(
            f"picks must have shape [rounds, {num_doc_prompts}], got {picks.shape}",
            hint="one document sample per document prompt and round",
        )
    if not np.issubdtype(picks.dtype, np.integer) or picks.min() < 0 or picks.max() >= len(doc_prompt_of_sample):
        raise DataError("picks must be document sample indices", hint=f"integers in [0, {len(doc_prompt_of_sample)})")
    wrong = doc_prompt_of_sample[picks] != np.arange(num_doc_prompts)
    if wrong.any():
        round_index, prompt = map(int, np.argwhere(wrong)[0])
        raise DataError(
            f"picks[{round_index}, {prompt}] = {int(picks[round_index, prompt])} is a sample of document prompt "
            f"{int(doc_prompt_of_sample[picks[round_index, prompt]])}, not {prompt}",
            hint="picks[t, p] must be one of prompt p's samples, e.g. from draw_picks",
        )
    return picks.astype(np.int64, copy=False)


def _as_index_array(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{name} must be a 1-D integer array", hint="one prompt index per sample")
    if array.size and array.min() < 0:
        raise DataError(f"{name} contains a negative prompt index", hint=_LAYOUT_HINT)
    return array.astype(np.int64, copy=False)


def _count_prompts(prompt_of_sample: np.ndarray, num_prompts: int | None) -> int:
    observed = int(prompt_of_sample.max()) + 1 if prompt_of_sample.size else 0
    if num_prompts is None:
        return observed
    if observed > num_prompts:
        raise DataError(f"prompt index {observed - 1} out of range for {num_prompts} prompts", hint=_LAYOUT_HINT)
    return num_prompts


def _require_every_prompt_sampled(counts: np.ndarray) -> None:
    missing = np.flatnonzero(counts == 0)
    if counts.size == 0:
        raise DataError("there are no document samples", hint="a step needs at least one document")
    if missing.size:
        raise DataError(
            f"document prompt(s) {missing[:5].tolist()} have no sample",
            hint="every document prompt needs at least one sample; an unexpanded document counts as one sample",
        )


def _unit_rows(matrix: np.ndarray, name: str) -> np.ndarray:
    if matrix.ndim != 2:
        raise DataError(f"{name} must be a 2-D array, got shape {matrix.shape}", hint="one embedding per row")
    if not np.isfinite(matrix).all():
        raise DataError(f"{name} contain NaN or infinite values", hint="check the encoder output")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


# ----------------------------------------------------------------------------------------------
# The reward as TRL calls it: one call per step, with every completion of the step


PROMPT_KINDS = ("query", "relevant", "hard_negative", "random_negative")
"""The kinds of prompt a :class:`searchrl.coaug.batch.CoAugBatch` holds."""


@dataclass(frozen=True)
class AdvantageScales:
    """Multiplier of the centred reward per prompt role."""

    query: float = 1.0
    relevant_document: float = 0.2
    negative_document: float = 0.1

    def __post_init__(self) -> None:
        for name in ("query", "relevant_document", "negative_document"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ConfigError(f"advantage scale {name}={value} must be a finite number >= 0")

    def for_kind(self, kind: str) -> float:
        """The scale of a prompt kind: ``query``, ``relevant``, ``hard_negative`` or ``random_negative``."""
        if kind == "query":
            return self.query
        if kind == "relevant":
            return self.relevant_document
        if kind in ("hard_negative", "random_negative"):
            return self.negative_document
        raise DataError(f"unknown prompt kind {kind!r}", hint=f"use one of {PROMPT_KINDS}")


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


@dataclass
class RewardCall:
    """What the last reward call computed (for logging and tests)."""

    step: int
    raw_rewards: np.ndarray  # per completion, before role scaling (NaN = no reward)
    scaled_rewards: np.ndarray  # what TRL received (NaN for None)
    prompt_of_completion: np.ndarray  # the step's prompt index of each completion
    prompt_kinds: list[str]  # kind of each of the step's prompts
    expansions: list[str]
    metrics: dict[str, float]


class CoAugReward:
    """TRL reward function for one whole co-augmentation step (the entangled, sampled nDCG reward).

    Called by TRL with all ``P × G`` completions of a step and the dataset columns of
    :func:`step_rows`. It rebuilds the step's batch from ``builder`` (deterministic per step),
    parses each completion with the :class:`~searchrl.augment.ExpansionPolicy`, appends the
    expansions with :func:`~searchrl.data.query_text` / :func:`~searchrl.data.document_text`,
    scores every query sample against every document sample, draws ``rounds`` pools with
    :func:`~searchrl.coaug.reward.sampled_ndcg_rewards`, and returns ``role_scale × reward``
    per completion (``None`` for a document sample never drawn).

    Under several processes (``accelerate launch``) TRL hands each process its share of the
    step; the shares are gathered first, so N processes compute the rewards one process would.

    >>> from searchrl.data import Document
    >>> from searchrl.augment import ExpansionPolicy
    >>> from searchrl.coaug.batch import CoAugBatchBuilder
    >>> from searchrl.coaug.bm25 import CorpusStatistics
    >>> from searchrl.coaug.evaluate import BatchScorer
    >>> corpus = {f"d{i}": Document(f"d{i}", f"filler text number {i}") for i in range(6)}
    >>> corpus["d0"] = Document("d0", "vitamin d deficiency and bone fractures")
    >>> builder = CoAugBatchBuilder(corpus, {"q1": "vitamin d bone"}, {"q1": {"d0": 1}}, mode="query",
    ...                             queries_per_step=1, group_size=3, relevant_per_query=1)
    >>> reward = CoAugReward(builder, ExpansionPolicy(), BatchScorer("bm25",
    ...     statistics=CorpusStatistics.from_documents(corpus.values())), samples_per_prompt=2, rounds=4)
    >>> reward(prompts=[None, None], completions=[" fracture</answer>", " bone fracture"],
    ...        step=[0, 0], prompt_index=[0, 0], role=["query"] * 2, kind=["query"] * 2,
    ...        item_id=["q1", "q1"], group=[0, 0])
    [1.0, 1.0]
    """

    __name__ = "coaug_ndcg"

    def __init__(
        self,
        builder: CoAugBatchBuilder,
        policy: ExpansionPolicy,
        scorer: BatchScorer,
        *,
        samples_per_prompt: int,
        rounds: int = 512,
        k: int = 10,
        relevant_weight: float = 10.0,
        ties: str = "pessimistic",
        scales: AdvantageScales = AdvantageScales(),
        merge_duplicates: bool = True,
        seed: int = 0,
    ) -> None:
        self.builder = builder
        self.merge_duplicates = merge_duplicates
        self.policy = policy
        self.scorer = scorer
        self.samples_per_prompt = samples_per_prompt
        self.rounds = rounds
        self.k = k
        self.relevant_weight = relevant_weight
        self.ties = ties
        self.scales = scales
        self.seed = seed
        self.last: RewardCall | None = None
        self.calls = 0

    # -- layout checks -------------------------------------------------------------------
    def _check_layout(self, batch: CoAugBatch, step: int, prompt_index: np.ndarray, item_id: Sequence[str]) -> None:
        prompts = batch.prompts
        G = self.samples_per_prompt
        expected = np.repeat(np.arange(len(prompts)), G)
        if len(prompt_index) != len(expected) or not np.array_equal(np.sort(prompt_index), expected):
            counts = np.bincount(prompt_index, minlength=len(prompts))
            raise ConfigError(
                f"the reward call for step {step} got {len(prompt_index)} completions covering "
                f"{int((counts > 0).sum())} of the step's {len(prompts)} prompts (expected every prompt exactly "
                f"{G} times)",
                hint="one generation batch must be exactly one step: generation_batch_size = prompts × "
                "samples_per_prompt, shuffle_dataset false, a single process",
            )
        for index, given in zip(prompt_index, item_id):
            if prompts[index].item_id != given:
                raise ConfigError(
                    f"step {step} prompt {index} is {given!r} in the dataset but {prompts[index].item_id!r} "
                    "when the batch is rebuilt",
                    hint="the training data or the batch settings changed since the dataset was built",
                )

    # -- the call ------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        *,
        step: Sequence[int],
        prompt_index: Sequence[int],
        item_id: Sequence[str],
        log_metric: Any = None,
        **_: Any,
    ) -> list[float | None]:
        world = _process_group_size()
        if world > 1:
            # Each process holds a share of the step's completions; the pool needs all of them.
            # Gather every share (in process order), score the whole step on every process (the
            # same seed gives the same rewards), and return this process's share.
            import torch.distributed as dist

            local = [list(completions), [int(s) for s in step], [int(i) for i in prompt_index], list(item_id)]
            shares: list[Any] = [None] * world
            dist.all_gather_object(shares, local)
            rewards = self._score_step(
                [c for share in shares for c in share[0]], [s for share in shares for s in share[1]],
                [i for share in shares for i in share[2]], [d for share in shares for d in share[3]],
                log_metric if dist.get_rank() == 0 else None,
            )
            start = sum(len(share[0]) for share in shares[: dist.get_rank()])
            return rewards[start : start + len(completions)]
        return self._score_step(completions, step, prompt_index, item_id, log_metric)

    def _score_step(
        self, completions: Sequence[Any], step: Sequence[int], prompt_index: Sequence[int], item_id: Sequence[str],
        log_metric: Any,
    ) -> list[float | None]:
        steps = set(int(s) for s in step)
        if len(steps) != 1:
            raise ConfigError(
                f"one reward call mixes prompts of steps {sorted(steps)}",
                hint="one generation batch must be exactly one step (see searchrl.coaug.train)",
            )
        current = steps.pop()
        batch = self.builder.build(current)
        prompt_of_completion = np.asarray(prompt_index, dtype=np.int64)
        self._check_layout(batch, current, prompt_of_completion, item_id)
        self.calls += 1

        parsed = [self.policy.parse(completion_text(c)) for c in completions]
        expansions = [p.text for p in parsed]
        prompts_of_step = batch.prompts
        prompt_position = {id(item): index for index, item in enumerate(prompts_of_step)}
        # Completions of each prompt, in call order.
        completions_of_prompt: dict[int, list[int]] = {}
        for position, index in enumerate(prompt_of_completion):
            completions_of_prompt.setdefault(int(index), []).append(position)

        # Lay the samples out query by query and document by document (relevance order).
        def samples(items, join) -> tuple[list[str], list[int], list[int]]:
            texts, owner, completion_of_sample = [], [], []
            for row, item in enumerate(items):
                if item.expand:
                    for position in completions_of_prompt[prompt_position[id(item)]]:
                        texts.append(join(item, expansions[position]))
                        owner.append(row)
                        completion_of_sample.append(position)
                else:
                    texts.append(join(item, None))
                    owner.append(row)
                    completion_of_sample.append(-1)
            return texts, owner, completion_of_sample

        corpus = self.builder.corpus
        q_texts, q_owner, q_completion = samples(batch.queries, lambda item, e: self.scorer.query_text(item.text, e))
        d_texts, d_owner, d_completion = samples(batch.documents, lambda item, e: document_text(corpus[item.item_id], e))
        relevance = batch.relevance
        d_owner = np.asarray(d_owner)
        if self.merge_duplicates:
            relevance, d_owner = merge_duplicate_documents([item.item_id for item in batch.documents], relevance, d_owner)
        scores = self.scorer.score(q_texts, d_texts)
        result = sampled_ndcg_rewards(
            scores,
            np.asarray(q_owner),
            d_owner,
            relevance,
            rounds=self.rounds,
            k=self.k,
            relevant_weight=self.relevant_weight,
            seed=np.random.default_rng([self.seed, current]),
            ties=self.ties,
        )

        raw = np.full(len(completions), np.nan)
        for sample, position in enumerate(q_completion):
            if position >= 0:
                raw[position] = result.query_rewards[sample]
        for sample, position in enumerate(d_completion):
            if position >= 0:
                raw[position] = result.document_rewards[sample]
        kinds = [item.kind for item in prompts_of_step]
        scale = np.array([self.scales.for_kind(kinds[i]) for i in prompt_of_completion])
        scaled = raw * scale

        metrics = self._metrics(parsed, raw, prompt_of_completion, prompts_of_step, completions)
        metrics.update(group_spread_metrics(raw, prompt_of_completion, [item.role for item in prompts_of_step]))
        metrics["coaug/pool_documents"] = float(relevance.shape[1])
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(name, value)
        self.last = RewardCall(current, raw, scaled, prompt_of_completion, kinds, expansions, metrics)
        return [None if np.isnan(v) else float(v) for v in scaled]

    @staticmethod
    def _metrics(parsed, raw, prompt_of_completion, prompts_of_step, completions) -> dict[str, float]:
        roles = np.array([prompts_of_step[i].role for i in prompt_of_completion])
        kinds = np.array([prompts_of_step[i].kind for i in prompt_of_completion])
        empty = np.array([not p.text for p in parsed])
        well_formed = np.array([p.ok for p in parsed])
        words = np.array([len(p.text.split()) for p in parsed])
        length = np.array([len(completion_text(c)) for c in completions])
        metrics: dict[str, float] = {
            "coaug/empty_expansion_rate": float(empty.mean()),
            "coaug/format_ok_rate": float(well_formed.mean()),
            "coaug/expansion_words": float(words.mean()),
            "coaug/completion_chars": float(length.mean()),
        }
        groups = {
            "query": roles == "query",
            "relevant_doc": kinds == "relevant",
            "negative_doc": (roles == "document") & (kinds != "relevant"),
        }
        for name, mask in groups.items():
            if mask.any():
                values = raw[mask]
                if np.isfinite(values).any():
                    metrics[f"coaug/reward_{name}"] = float(np.nanmean(values))
                metrics[f"coaug/empty_rate_{name}"] = float(empty[mask].mean())
        return metrics


def _process_group_size() -> int:
    """Processes of the running ``torch.distributed`` group (1 when there is none)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
