"""How much the original query should weigh against an untrained expansion under BM25 (query2doc's repeat).

Run (from the project root):

    OMP_NUM_THREADS=2 python3 benchmarks/query_weighting.py --train-queries 300

Expands a seeded sample of SciFact *training* queries and the dev *selection* half (the queries
``coaug-cpu`` may choose with; never the report half or test) greedily with the untrained
SmolLM2-135M-Instruct under the ``coaug-cpu`` expansion policy, then scores BM25 (the index
``searchrl eval`` builds) with the query held 1, 2, 3 and 5 times before its expansion, against
BM25 without expansion. Writes ``benchmarks/results/query_weighting.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-queries", type=int, default=300)
    parser.add_argument("--repeats", default="1,2,3,5")
    args = parser.parse_args()

    from searchrl.augment import CorpusAugmentationJob
    from searchrl.coaug.config import CoAugConfig
    from searchrl.coaug.dataset import DevSelection
    from searchrl.config import load_config
    from searchrl.data.beir import load_beir, load_corpus
    from searchrl.data.expansions import load_expansions
    from searchrl.data.types import query_text
    from searchrl.llm import build_engine
    from searchrl.metrics import evaluate_run
    from searchrl.paths import shared_data_dir
    from searchrl.retrieval.bm25 import BM25Retriever

    data = shared_data_dir() / "scifact"
    config = load_config(CoAugConfig, "coaug-cpu", [f"data={data}"])
    train, dev = load_beir(data, "train"), load_beir(data, "dev")
    selection = DevSelection.split(dev.queries, dev.qrels, 0.5, seed=0)
    judged = sorted(q for q in train.queries if train.qrels.get(q))
    random.Random(0).shuffle(judged)
    sets = {
        "train": ({q: train.queries[q] for q in judged[: args.train_queries]}, train.qrels),
        "dev_selection": ({q: dev.queries[q] for q in selection.select}, dev.qrels),
    }
    items = {q: t for queries, _ in sets.values() for q, t in queries.items()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        job = CorpusAugmentationJob(
            items, Path(folder), role="query", policy=config.expansion_policy(),
            engine=lambda: build_engine("transformers", model=config.model, batch_size=32, dtype=config.precision),
            model_name=config.model, engine_name="transformers", source={"benchmark": "query_weighting"}, batch_size=32,
        )
        job.run(show_progress=False)
        expansions = load_expansions(job.expansions_path)
    expand_seconds = time.perf_counter() - started
    retriever = BM25Retriever(k1=config.bm25.k1, b=config.bm25.b).index(
        load_corpus(data / "corpus.jsonl").values(), {}, show_progress=False
    )
    result: dict = {
        "benchmark": "query_weighting", "model": config.model, "policy": config.expansion_policy().model_dump(),
        "expanded_queries": len(items), "expand_seconds": round(expand_seconds, 1),
    }
    for name, (queries, qrels) in sets.items():
        judged_qrels = {q: qrels[q] for q in queries}
        row = {"queries": len(queries),
               "bm25": evaluate_run(judged_qrels, retriever.run(dict(queries), k=100), ("ndcg@10",))[0]["ndcg@10"]}
        for repeat in (int(r) for r in args.repeats.split(",")):
            texts = {q: query_text(t, expansions.get(q), repeat=repeat) for q, t in queries.items()}
            row[f"repeat_{repeat}"] = evaluate_run(judged_qrels, retriever.run(texts, k=100), ("ndcg@10",))[0]["ndcg@10"]
        result[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_weighting.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "policy"}, indent=2))


if __name__ == "__main__":
    main()
