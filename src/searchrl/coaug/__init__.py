"""Query/document co-augmentation trained with RL.

* :mod:`~searchrl.coaug.batch` — per-step prompt batches (queries, relevant documents, hard and
  random negatives) and the relevance matrix between them;
* :mod:`~searchrl.coaug.bm25` — in-batch BM25 scores with the indexed corpus's statistics
  (:func:`~searchrl.coaug.reward.cosine_score_matrix` for dense retrieval);
* :mod:`~searchrl.coaug.reward` — the sampled, entangled nDCG@k reward of every sample, and
  :class:`~searchrl.coaug.reward.CoAugReward`, the reward function TRL calls once per step;
* :mod:`~searchrl.coaug.evaluate` — the scorer shared by rewards, hard negatives and dev
  evaluation, and the dev evaluator;
* :mod:`~searchrl.coaug.config`, :mod:`~searchrl.coaug.dataset`, :mod:`~searchrl.coaug.train`
  — a run's configuration, its data and TRL rows, and the pipeline that trains it;
* :mod:`~searchrl.coaug.quickstart` and :mod:`~searchrl.coaug.recipe` — the two end-to-end commands.

One step, end to end::

    batch = builder.build(step)
    query_prompt_of_sample, doc_prompt_of_sample = batch.sample_layout(samples_per_prompt=5)
    scores = InBatchBM25(stats).score(query_sample_texts, doc_sample_texts)
    rewards = sampled_ndcg_rewards(scores, query_prompt_of_sample, doc_prompt_of_sample,
                                   batch.relevance, rounds=512, seed=step)
"""

from searchrl.coaug.batch import BatchItem, CoAugBatch, CoAugBatchBuilder
from searchrl.coaug.bm25 import CorpusStatistics, InBatchBM25
from searchrl.coaug.reward import (
    AdvantageScales,
    CoAugReward,
    SampledRewards,
    as_reward_list,
    cosine_score_matrix,
    draw_picks,
    sampled_ndcg_rewards,
)

__all__ = [
    "AdvantageScales",
    "BatchItem",
    "CoAugBatch",
    "CoAugBatchBuilder",
    "CoAugReward",
    "CorpusStatistics",
    "InBatchBM25",
    "SampledRewards",
    "as_reward_list",
    "cosine_score_matrix",
    "draw_picks",
    "sampled_ndcg_rewards",
]
