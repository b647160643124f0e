"""Several *sampled* query expansions joined, against one greedy expansion, on SciFact training queries.

CoAug trains on sampled expansions (temperature 1.0 in ``coaug-cpu``) and deploys one greedy one, a
train/eval mismatch its reviewers noted; query2doc and HyDE join or average several samples. This
measures whether that route would give the co-augmentation recipes anything to gain before any
training: the policy (by default the untrained ``coaug-cpu`` model) expands a seeded sample of
*training* queries (never dev or test, so nothing reported elsewhere is tuned here) greedily and
with ``--samples`` draws at each ``--temperatures``, and BM25 (the recipe's settings: the query held
``bm25.query_repeat`` times before its expansion) ranks the whole corpus with the query alone, with
the greedy expansion, with each single sample, and with the first n samples joined (n = 1, 2, 4, ...).
Each joined figure comes with a 95% bootstrap interval of its difference from greedy, question by
question.

    python3 benchmarks/coaug_sampled_expansions.py --data ../shared/data/scifact
    python3 benchmarks/coaug_sampled_expansions.py --data ../shared/data/scifact --model RUN/best --temperatures 1.0

Writes ``benchmarks/results/coaug_sampled_expansions.json`` (``--out``; with the machine) and prints
the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def joined_counts(samples: int) -> list[int]:
    """1, 2, 4, ... up to ``samples`` (``samples`` itself always included)."""
    counts, n = [], 1
    while n < samples:
        counts.append(n)
        n *= 2
    return [*counts, samples]


def training_sample(data: str, config_name: str, size: int, seed: int):
    """``(config, dataset, ids, retriever, rng)``: a seeded sample of ``size`` judged queries of the
    recipe's training split, a BM25 index of the whole corpus with the recipe's settings, and the
    random generator after the draw (this script's bootstrap continues its stream).

    The other co-augmentation benchmarks call this too, so that the same seed means the same queries.
    """
    import numpy as np

    from searchrl.coaug.config import CoAugConfig
    from searchrl.coaug.dataset import judged_queries
    from searchrl.config import load_config
    from searchrl.data.beir import load_beir
    from searchrl.retrieval.bm25 import BM25Retriever

    config = load_config(CoAugConfig, config_name, [f"data={data}"])
    dataset = load_beir(config.data, config.train_split)
    judged = judged_queries(dataset.queries, dataset.qrels)
    rng = np.random.default_rng(seed)
    ids = [judged[i] for i in sorted(rng.choice(len(judged), size=min(size, len(judged)), replace=False))]
    retriever = BM25Retriever(k1=config.bm25.k1, b=config.bm25.b).index(dataset.corpus.values(), show_progress=False)
    return config, dataset, ids, retriever, rng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="coaug-cpu", help="recipe whose model, expansion policy and BM25 settings are used")
    parser.add_argument("--model", default=None, help="model or checkpoint to expand with (default: the config's model)")
    parser.add_argument("--queries", type=int, default=300, help="seeded sample of judged training queries")
    parser.add_argument("--samples", type=int, default=8, help="sampled expansions per query")
    parser.add_argument("--temperatures", default="1.0,0.7", help="comma-separated sampling temperatures")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "coaug_sampled_expansions.json")
    args = parser.parse_args()
    if args.samples < 1 or args.queries < 1:
        parser.error("--samples and --queries must be at least 1")
    temperatures = [float(t) for t in args.temperatures.split(",") if t]

    import numpy as np

    from searchrl.data.types import query_text
    from searchrl.llm import build_engine
    from searchrl.metrics import evaluate_run
    from searchrl.runs import library_versions, machine_info

    config, dataset, ids, retriever, rng = training_sample(args.data, args.config, args.queries, args.seed)
    queries = {q: dataset.queries[q] for q in ids}
    qrels = {q: dataset.qrels[q] for q in ids}

    def score(expansions: dict[str, str]) -> np.ndarray:
        texts = {q: query_text(t, expansions.get(q), repeat=config.bm25.query_repeat) for q, t in queries.items()}
        _, per_query = evaluate_run(qrels, retriever.run(texts, k=100), ("ndcg@10",))
        return np.array([per_query[q]["ndcg@10"] for q in ids])

    def against(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        difference = values - reference
        means = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(2000)]
        return {"ndcg@10": round(float(values.mean()), 4), "minus_greedy": round(float(difference.mean()), 4),
                "low": round(float(np.percentile(means, 2.5)), 4), "high": round(float(np.percentile(means, 97.5)), 4)}

    policy = config.expansion_policy()
    model = args.model or config.model
    engine = build_engine("transformers", model=model, batch_size=config.eval.batch_size, dtype=config.precision)
    texts = list(queries.values())
    bm25 = score({})
    started = time.perf_counter()
    greedy = score(dict(zip(ids, (p.text for p in policy.expand(engine, "query", texts)))))
    results: dict = {
        "config": args.config, "model": model, "split": config.train_split, "queries": len(ids), "seed": args.seed,
        "query_repeat": config.bm25.query_repeat, "bm25": round(float(bm25.mean()), 4),
        "greedy": {**against(greedy, greedy), "seconds": round(time.perf_counter() - started, 1)}, "sampled": {},
        "machine": machine_info(), "versions": library_versions(),
    }
    print(f"{len(ids)} {config.train_split} queries: BM25 {results['bm25']:.4f}, greedy {results['greedy']['ndcg@10']:.4f}")
    for temperature in temperatures:
        sampling = policy.sampling.model_copy(update={"temperature": temperature, "max_new_tokens": config.generation.max_new_tokens})
        started = time.perf_counter()
        drawn = policy.model_copy(update={"sampling": sampling}).sample(engine, "query", texts, n=args.samples)
        seconds = time.perf_counter() - started
        single = [score({q: group[j].text for q, group in zip(ids, drawn)}) for j in range(args.samples)]
        row = {"seconds": round(seconds, 1), "single_sample_mean": round(float(np.mean([s.mean() for s in single])), 4),
               "joined": {}}
        for n in joined_counts(args.samples):
            joined = score({q: " ".join(p.text for p in group[:n] if p.text) for q, group in zip(ids, drawn)})
            row["joined"][str(n)] = against(joined, greedy)
            r = row["joined"][str(n)]
            print(f"  T={temperature} {n} joined: {r['ndcg@10']:.4f} ({r['minus_greedy']:+.4f} vs greedy, "
                  f"95% {r['low']:+.4f}..{r['high']:+.4f})")
        print(f"  T={temperature} one sample (mean of {args.samples}): {row['single_sample_mean']:.4f}")
        results["sampled"][str(temperature)] = row
    engine.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from searchrl.errors import SearchRLError

    try:
        main()
    except SearchRLError as error:  # a bad --data or --config: the message names the file and the fix
        raise SystemExit(f"error: {error}") from None
