"""Retrieval quality and speed on BEIR SciFact: BM25, dense (all-MiniLM-L6-v2) and hybrid.

Measures, on one split (default ``dev``):
- nDCG@10 and Recall@100 of BM25, dense and hybrid (RRF) retrieval;
- BM25 index build time and queries/s next to ``rank_bm25.BM25Okapi`` fed the same tokens
  (a naive per-query reference), on the train+dev queries;
- dense encoding throughput (documents/s) with an empty embedding cache, then the time to
  re-index from the cache.

Writes ``benchmarks/results/retrieval.json`` and prints it.

    python3 benchmarks/retrieval.py [--split dev] [--model DIR] [--data DIR]

The encoder defaults to ``$ALL_MINILM_L6_V2_DIR`` or the folder printed by
``shared/bin/offline-models``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from searchrl.data.beir import load_beir, load_queries
from searchrl.metrics import evaluate_run
from searchrl.paths import shared_data_dir
from searchrl.retrieval import BM25Retriever, DenseRetriever, HybridRetriever
from searchrl.retrieval.base import documents_to_texts

MEASURES = ("ndcg@10", "recall@100")
RESULTS = Path(__file__).resolve().parent / "results" / "retrieval.json"


def default_model_dir() -> str:
    """``$ALL_MINILM_L6_V2_DIR``, else what ``offline-models`` prints (it fetches the model once)."""
    if os.environ.get("ALL_MINILM_L6_V2_DIR"):
        return os.environ["ALL_MINILM_L6_V2_DIR"]
    script = shared_data_dir().parent / "bin" / "offline-models"
    output = subprocess.run([str(script)], check=True, capture_output=True, text=True).stdout
    for line in output.splitlines():
        if line.startswith("ALL_MINILM_L6_V2_DIR="):
            return line.split("=", 1)[1].strip()
    sys.exit(f"{script} did not print ALL_MINILM_L6_V2_DIR; pass --model")


def evaluate(qrels, retriever, queries) -> dict[str, float]:
    aggregate, _ = evaluate_run(qrels, retriever.run(queries, k=100), MEASURES)
    return {key: round(value, 4) for key, value in aggregate.items()}


def bm25_speed(bm25: BM25Retriever, texts: list[str], queries: list[str]) -> dict:
    """Build and query times of our BM25 and of rank_bm25 on identical tokens."""
    from rank_bm25 import BM25Okapi

    start = time.perf_counter()
    corpus_tokens = bm25.analyzer.tokenize(texts)
    query_tokens = bm25.analyzer.tokenize(queries)
    tokenise_s = time.perf_counter() - start

    import bm25s

    start = time.perf_counter()
    index = bm25s.BM25(k1=bm25.k1, b=bm25.b, method="lucene")
    index.index(corpus_tokens, create_empty_token=False, show_progress=False)
    ours_build_s = time.perf_counter() - start
    start = time.perf_counter()
    bm25.search_tokens(query_tokens, k=100)
    ours_search_s = time.perf_counter() - start

    start = time.perf_counter()
    okapi = BM25Okapi(corpus_tokens, k1=bm25.k1, b=bm25.b)
    okapi_build_s = time.perf_counter() - start
    start = time.perf_counter()
    for tokens in query_tokens:  # rank_bm25 scores one query at a time
        scores = okapi.get_scores(tokens)
        top = np.argpartition(-scores, 100)[:100]
        top[np.argsort(-scores[top])]
    okapi_search_s = time.perf_counter() - start

    return {
        "documents": len(texts),
        "queries": len(queries),
        "tokenise_s": round(tokenise_s, 3),
        "searchrl_bm25s": {
            "build_s": round(ours_build_s, 3),
            "search_s": round(ours_search_s, 3),
            "queries_per_s": round(len(queries) / ours_search_s, 1),
        },
        "rank_bm25_okapi": {
            "build_s": round(okapi_build_s, 3),
            "search_s": round(okapi_search_s, 3),
            "queries_per_s": round(len(queries) / okapi_search_s, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(shared_data_dir() / "scifact"), help="BEIR folder")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--model", default=None, help="sentence-transformers folder (default all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    dataset = load_beir(args.data, args.split)
    documents = list(dataset.corpus.values())
    _, texts = documents_to_texts(documents)
    results: dict = {
        "dataset": f"{Path(args.data).name}/{args.split}",
        "documents": len(documents),
        "queries": len(dataset.queries),
    }

    # BM25 quality with the defaults the package ships (k1=1.2, b=0.75, English stemming + stop words).
    start = time.perf_counter()
    bm25 = BM25Retriever().index(documents, show_progress=False)
    bm25_index_s = time.perf_counter() - start
    results["bm25"] = {**evaluate(dataset.qrels, bm25, dataset.queries), "index_s": round(bm25_index_s, 3)}
    print(f"bm25 {results['bm25']}", file=sys.stderr)

    # Speed against rank_bm25 on every train/dev query (timing only; no test queries).
    all_queries = load_queries(Path(args.data) / "queries.jsonl")
    timing_ids = set()
    for split in ("train", "dev"):
        if (Path(args.data) / "qrels" / f"{split}.tsv").exists():
            timing_ids |= set(load_beir(args.data, split).queries)
    timing_queries = [all_queries[q] for q in sorted(timing_ids)] or list(dataset.queries.values())
    results["bm25_speed"] = bm25_speed(bm25, texts, timing_queries)
    print(f"bm25 speed {results['bm25_speed']}", file=sys.stderr)

    # Dense: encode with an empty cache (throughput), then re-index from the cache.
    import torch

    model = args.model or default_model_dir()
    with tempfile.TemporaryDirectory() as cache:
        dense = DenseRetriever(model=model, batch_size=args.batch_size, cache_dir=cache)
        dense.encoder  # load outside the timed region  # noqa: B018
        start = time.perf_counter()
        dense.index(documents, show_progress=True)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        DenseRetriever(model=model, batch_size=args.batch_size, cache_dir=cache).index(documents, show_progress=False)
        cached_s = time.perf_counter() - start
        start = time.perf_counter()
        quality = evaluate(dataset.qrels, dense, dataset.queries)
        search_s = time.perf_counter() - start
    results["dense"] = {
        **quality,
        "model": "all-MiniLM-L6-v2" if args.model is None else str(model),
        "max_seq_length": dense.encoder.max_seq_length,
        "encode_s": round(encode_s, 2),
        "docs_per_s": round(len(documents) / encode_s, 1),
        "reindex_from_cache_s": round(cached_s, 2),
        "search_s_incl_query_encoding": round(search_s, 2),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"dense {results['dense']}", file=sys.stderr)

    hybrid = HybridRetriever([bm25, dense], rrf_k=60)
    results["hybrid_rrf"] = evaluate(dataset.qrels, hybrid, dataset.queries)
    print(f"hybrid {results['hybrid_rrf']}", file=sys.stderr)

    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
