"""Speed of the sampled co-augmentation reward at CoAug's batch size, against a per-pair loop.

One step as CoAug runs it: 32 queries x 16 prompts (the query, 5 relevant documents drawn with
replacement, 10 random negatives), 5 samples per prompt -> 160 query samples and 2,400
document samples; 512 sampling rounds; nDCG@10; weight 1 + 10 * relevance.

Texts are BEIR SciFact (train split) with synthetic expansions: each query sample appends 5
words drawn from its relevant documents and 25 from the corpus, each document sample 20 words
drawn from itself and 20 from the corpus (keyword/summary-like expansions of mixed quality).
All scoring uses the corpus's BM25 statistics and ``BM25Analyzer`` tokens.

Timed, on identical token lists:
- ours: ``InBatchBM25.score_expanded_tokens`` (one sparse product) + ``sampled_ndcg_rewards``;
  text analysis is timed apart (it is the analyzer's cost, the same for any scorer);
- reference: the structure of CoAug's original reward code — BM25 by a Python loop over every
  (query sample, document sample) pair with ``Counter`` term counts, then per round a Python
  loop over document prompts to pick samples and over query samples to sort the pool, compute
  nDCG and accumulate weighted rewards. It runs all rounds unless ``--reference-rounds`` is
  smaller, in which case its round loop time is extrapolated linearly and the JSON says so.

The reference's picks are recorded and fed to ``sampled_ndcg_rewards(ties="index")`` (the
reference sorts with a stable argsort, i.e. ties by index) to check both give the same rewards.

Writes ``benchmarks/results/coaug_reward.json`` and prints it.

    python3 benchmarks/coaug_reward.py [--data DIR] [--repeats 7] [--reference-rounds 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import scipy

from searchrl.coaug import CoAugBatchBuilder, CorpusStatistics, InBatchBM25, sampled_ndcg_rewards
from searchrl.data.beir import load_beir
from searchrl.data.types import document_text
from searchrl.paths import shared_data_dir
from searchrl.retrieval.bm25 import BM25Analyzer

RESULTS = Path(__file__).resolve().parent / "results" / "coaug_reward.json"
QUERIES_PER_STEP = 32
GROUP_SIZE = 16
RELEVANT_PER_QUERY = 5
SAMPLES = 5
ROUNDS = 512
K = 10
RELEVANT_WEIGHT = 10.0
QUERY_EXPANSION_WORDS = (5, 25)  # words from the query's relevant documents, from anywhere
DOC_EXPANSION_WORDS = (20, 20)  # words from the document itself, from anywhere


# --- the batch and its synthetic expansions ---------------------------------------------------


def build_step(data_dir: Path, seed: int):
    """Batch, per-sample texts (base + expansion) and the sample -> prompt layout."""
    dataset = load_beir(data_dir, "train")
    builder = CoAugBatchBuilder(
        dataset.corpus,
        dataset.queries,
        dataset.qrels,
        queries_per_step=QUERIES_PER_STEP,
        group_size=GROUP_SIZE,
        relevant_per_query=RELEVANT_PER_QUERY,
        seed=seed,
    )
    batch = builder.build(0)
    rng = np.random.default_rng(seed)
    corpus_words = " ".join(document_text(d) for d in list(dataset.corpus.values())[:500]).split()
    relevant_text = defaultdict(str)
    for item in batch.items:
        if item.kind == "relevant":
            relevant_text[item.group] += " " + item.text

    def words(source: list[str], n: int) -> str:
        return " ".join(rng.choice(source, n)) if source else ""

    query_prompt_of_sample, doc_prompt_of_sample = batch.sample_layout(SAMPLES)
    query_texts, query_expansions = [], []
    for prompt in query_prompt_of_sample:
        item = batch.queries[prompt]
        own = relevant_text[item.group].split()
        query_texts.append(item.text)
        from_relevant, from_corpus = QUERY_EXPANSION_WORDS
        query_expansions.append(words(own, from_relevant) + " " + words(corpus_words, from_corpus))
    from_itself, from_corpus = DOC_EXPANSION_WORDS
    doc_expansions = [
        words(batch.documents[p].text.split(), from_itself) + " " + words(corpus_words, from_corpus)
        for p in doc_prompt_of_sample
    ]
    return dataset, batch, query_texts, query_expansions, doc_expansions, query_prompt_of_sample, doc_prompt_of_sample


# --- the reference: loops in the style of the original reward code ----------------------------


def reference_bm25_matrix(query_tokens, doc_tokens, stats: CorpusStatistics, k1=1.2, b=0.75):
    """One Python BM25 per (query, document) pair, term counts by ``Counter``."""
    idf_of = {}
    for tokens in query_tokens:
        for term in tokens:
            if term not in idf_of:
                idf_of[term] = float(stats.idf([term])[0])
    matrix = []
    for q in query_tokens:
        row = []
        for d in doc_tokens:
            q_tf, d_tf = Counter(q), Counter(d)
            norm = k1 * (1 - b + b * len(d) / stats.average_length)
            score = 0.0
            for term, qf in q_tf.items():
                if term in d_tf:
                    f = d_tf[term]
                    score += idf_of[term] * f / (f + norm) * qf
            row.append(score)
        matrix.append(row)
    return np.array(matrix)


def reference_ndcg(pool_scores, pool_gains, n):
    order = np.argsort(-pool_scores, kind="stable")
    ranked = pool_gains[order][:n]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(ranked))
    ideal = np.sort(pool_gains, kind="stable")[::-1][:n]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg != 0 else 0.0


def reference_sampled_rewards(scores, query_prompt, doc_prompt, relevance, rounds, seed):
    """Rounds x (pick per prompt, then per query sample: sort pool, nDCG, weighted accumulation)."""
    random = np.random.RandomState(seed)
    num_queries, num_docs = scores.shape
    columns_of_prompt = defaultdict(list)
    for column in range(num_docs):
        columns_of_prompt[int(doc_prompt[column])].append(column)
    gains_matrix = relevance[query_prompt][:, doc_prompt].astype(np.float64)
    reward_mat = np.zeros((num_queries, num_docs))
    count_mat = np.zeros((num_queries, num_docs))
    picks = []
    for _ in range(rounds):
        selected = [random.choice(columns_of_prompt[p]) for p in sorted(columns_of_prompt)]
        picks.append(selected)
        for row in range(num_queries):
            pool_gains = gains_matrix[row, selected]
            ndcg = reference_ndcg(scores[row, selected], pool_gains, K)
            reward_mat[row, selected] += ndcg
            count_mat[row, selected] += 1
            reward_mat[row, selected] += ndcg * pool_gains * RELEVANT_WEIGHT
            count_mat[row, selected] += pool_gains * RELEVANT_WEIGHT
    query_rewards = np.array([reward_mat[q].sum() / count_mat[q].sum() for q in range(num_queries)])
    doc_rewards = np.array(
        [reward_mat[:, j].sum() / count_mat[:, j].sum() if count_mat[:, j].sum() else np.nan for j in range(num_docs)]
    )
    return query_rewards, doc_rewards, np.array(picks)


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "scifact")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions of our reward (median reported)")
    parser.add_argument(
        "--reference-rounds", type=int, default=ROUNDS, help="rounds the reference runs (extrapolated if < 512)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_before = os.getloadavg()

    step = build_step(args.data, args.seed)
    dataset, batch, query_texts, query_expansions, doc_expansions, query_prompt, doc_prompt = step
    analyzer = BM25Analyzer()
    started = time.perf_counter()
    stats = CorpusStatistics.from_documents(dataset.corpus.values(), analyzer=analyzer)
    statistics_s = time.perf_counter() - started

    # Analysis: base texts once per prompt, expansions once per sample.
    started = time.perf_counter()
    query_tokens = analyzer.tokenize([f"{t} {e}" for t, e in zip(query_texts, query_expansions)])
    base_doc_tokens = analyzer.tokenize([item.text for item in batch.documents])
    expansion_tokens = analyzer.tokenize(doc_expansions)
    analysis_s = time.perf_counter() - started
    doc_tokens = [base_doc_tokens[p] + e for p, e in zip(doc_prompt, expansion_tokens)]

    bm25 = InBatchBM25(stats)
    scoring_times, reward_times, cpu_times = [], [], []
    for repeat in range(args.repeats):
        cpu_started = time.process_time()
        started = time.perf_counter()
        scores = bm25.score_expanded_tokens(query_tokens, base_doc_tokens, expansion_tokens, doc_prompt)
        scored = time.perf_counter()
        rewards = sampled_ndcg_rewards(
            scores, query_prompt, doc_prompt, batch.relevance,
            rounds=ROUNDS, k=K, relevant_weight=RELEVANT_WEIGHT, seed=repeat,
        )
        finished = time.perf_counter()
        cpu_times.append(time.process_time() - cpu_started)
        scoring_times.append(scored - started)
        reward_times.append(finished - scored)
    totals = [s + r for s, r in zip(scoring_times, reward_times)]

    print(f"reference: {args.reference_rounds} of {ROUNDS} rounds, per-pair BM25 ...", file=sys.stderr)
    started = time.perf_counter()
    reference_scores = reference_bm25_matrix(query_tokens, doc_tokens, stats)
    reference_scoring_s = time.perf_counter() - started
    started = time.perf_counter()
    ref_query, ref_doc, ref_picks = reference_sampled_rewards(
        reference_scores, query_prompt, doc_prompt, batch.relevance, args.reference_rounds, args.seed
    )
    reference_rounds_s = time.perf_counter() - started
    extrapolated = args.reference_rounds < ROUNDS
    reference_rounds_full_s = reference_rounds_s * ROUNDS / args.reference_rounds
    reference_total_s = reference_scoring_s + reference_rounds_full_s

    same_picks = sampled_ndcg_rewards(
        reference_scores, query_prompt, doc_prompt, batch.relevance, picks=ref_picks, k=K,
        relevant_weight=RELEVANT_WEIGHT, ties="index",
    )
    ours_median = float(np.median(totals))
    result = {
        "benchmark": "coaug_reward",
        "setup": {
            "data": f"BEIR SciFact train ({args.data}), synthetic expansions",
            "queries_per_step": QUERIES_PER_STEP,
            "prompts_per_query": GROUP_SIZE,
            "samples_per_prompt": SAMPLES,
            "query_samples": int(len(query_prompt)),
            "document_samples": int(len(doc_prompt)),
            "document_prompts": int(batch.relevance.shape[1]),
            "rounds": ROUNDS,
            "k": K,
            "relevant_weight": RELEVANT_WEIGHT,
            "mean_query_tokens": round(float(np.mean([len(t) for t in query_tokens])), 1),
            "mean_document_tokens": round(float(np.mean([len(t) for t in doc_tokens])), 1),
            "score_matrix_nonzero_fraction": round(float((scores > 0).mean()), 3),
        },
        "ours": {
            "scoring_plus_reward_s_median": round(ours_median, 4),
            "scoring_plus_reward_s_min": round(float(np.min(totals)), 4),
            "scoring_s_median": round(float(np.median(scoring_times)), 4),
            "reward_s_median": round(float(np.median(reward_times)), 4),
            "repeats": args.repeats,
            "scoring_plus_reward_cpu_s_median": round(float(np.median(cpu_times)), 4),
            "cpu_note": "process CPU time, all threads; less sensitive than wall time to other jobs on the machine",
            "text_analysis_s": round(analysis_s, 4),
            "text_analysis_note": (
                "BM25Analyzer on 160 query texts, 480 base documents and 2,400 expansions; not in the figures above"
            ),
            "corpus_statistics_once_s": round(statistics_s, 3),
            "under_half_a_second": ours_median < 0.5,
        },
        "reference": {
            "scoring_s": round(reference_scoring_s, 2),
            "rounds_run": args.reference_rounds,
            "rounds_s": round(reference_rounds_s, 2),
            "rounds_extrapolated_to_512": extrapolated,
            "total_s": round(reference_total_s, 2),
        },
        "speedup": round(reference_total_s / ours_median, 1),
        "agreement": {
            "max_abs_score_difference": float(np.abs(reference_scores - scores).max()),
            "max_abs_query_reward_difference": float(np.abs(same_picks.query_rewards - ref_query).max()),
            "max_abs_document_reward_difference": float(np.nanmax(np.abs(same_picks.document_rewards - ref_doc))),
            "note": "reference picks replayed through sampled_ndcg_rewards(ties='index')",
        },
        "sanity": {
            "mean_query_reward": round(float(rewards.query_rewards.mean()), 4),
            "mean_document_reward": round(float(np.nanmean(rewards.document_rewards)), 4),
            "document_samples_never_picked": int((rewards.times_picked == 0).sum()),
        },
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
