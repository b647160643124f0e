"""What a query rewrite can gain under the co-augmentation recipe's BM25 scoring, with and without knowing the answer.

A trained query expansion can only change BM25's ranking in two ways: by weighting the query's own
words differently (a word the expansion repeats counts again) or by adding words the query lacks.
This measures the ceiling of each on SciFact *training* queries (never dev or test, so nothing
reported elsewhere is tuned here), scored as ``coaug-cpu`` scores an expansion (the query held
``bm25.query_repeat`` times, then the expansion; Lucene BM25 over the whole corpus, nDCG@10):

- ``reweight_top_idf_k``: the query's k rarest words (corpus IDF) repeated — re-weighting that needs
  nothing but the query, i.e. the most a policy that knows nothing of the corpus could learn
  to emphasise;
- ``oracle_reweight``: the query's words that occur in one of its relevant documents repeated —
  the ceiling of re-weighting when the relevant document is known;
- ``oracle_new_words_n``: the n words of the query's first relevant document that the query lacks
  and that weigh most there (term count × IDF) — the ceiling of adding words, which takes knowing
  what the relevant document says.

Each comes with its difference from BM25 (the query alone) and a 95% bootstrap interval over queries.

    python3 benchmarks/coaug_ceilings.py --data ../shared/data/scifact

Writes ``benchmarks/results/coaug_ceilings.json`` (``--out``) and prints the figures. Needs no model:
BM25 only, about a minute.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time
from collections import Counter
from pathlib import Path

WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="coaug-cpu", help="recipe whose BM25 settings and training split are used")
    parser.add_argument("--queries", type=int, default=300, help="seeded sample of judged training queries")
    parser.add_argument("--seed", type=int, default=123, help="the sample of coaug_sampled_expansions.py by default")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "coaug_ceilings.json")
    args = parser.parse_args()
    if args.queries < 1:
        parser.error("--queries must be at least 1")

    from coaug_sampled_expansions import training_sample  # this folder; the same seed draws the same queries

    from searchrl.data.types import query_text
    from searchrl.metrics import evaluate_run, paired_difference
    from searchrl.runs import library_versions, machine_info

    started = time.perf_counter()
    config, dataset, ids, retriever, _ = training_sample(args.data, args.config, args.queries, args.seed)
    queries = {q: dataset.queries[q] for q in ids}
    qrels = {q: dataset.qrels[q] for q in ids}

    @functools.cache
    def idf(word: str) -> float:
        tokens = retriever.analyzer.tokenize([word])[0]
        return float(retriever.idf(tokens).max()) if tokens else 0.0

    def score(expansions: dict[str, str]) -> dict[str, float]:
        texts = {q: query_text(t, expansions.get(q), repeat=config.bm25.query_repeat) for q, t in queries.items()}
        _, per_query = evaluate_run(qrels, retriever.run(texts, k=100), ("ndcg@10",))
        return {q: per_query[q]["ndcg@10"] for q in ids}

    bm25 = score({})

    def against_bm25(values: dict[str, float]) -> dict[str, float]:
        difference = paired_difference(bm25, values)
        return {"ndcg@10": round(sum(values.values()) / len(values), 4), "minus_bm25": round(difference["mean"], 4),
                "low": round(difference["low"], 4), "high": round(difference["high"], 4),
                "better": difference["better"], "worse": difference["worse"]}

    def words(text: str) -> list[str]:
        return list(dict.fromkeys(WORD.findall(text)))

    def document_text(doc_id: str) -> str:
        document = dataset.corpus[doc_id]
        return f"{document.title} {document.text}"

    rows: dict[str, dict] = {}
    for k in (1, 2, 3):
        rows[f"reweight_top_idf_{k}"] = against_bm25(
            score({q: " ".join(sorted(words(t), key=idf, reverse=True)[:k]) for q, t in queries.items()}))
    oracle = {}
    for q, t in queries.items():
        relevant = {w.lower() for d in sorted(qrels[q]) if d in dataset.corpus for w in WORD.findall(document_text(d))}
        oracle[q] = " ".join(w for w in words(t) if w.lower() in relevant)
    rows["oracle_reweight"] = against_bm25(score(oracle))
    ranked_new = {}  # each query's words of its first relevant document that it lacks, heaviest first
    for q, t in queries.items():
        first = next((d for d in sorted(qrels[q]) if d in dataset.corpus), None)
        if first is None:
            continue
        counts = Counter(w.lower() for w in WORD.findall(document_text(first)))
        own = {w.lower() for w in words(t)}
        ranked_new[q] = sorted((w for w in counts if w not in own and len(w) > 3),
                               key=lambda w: counts[w] * idf(w), reverse=True)
    for n in (5, 10):
        rows[f"oracle_new_words_{n}"] = against_bm25(score({q: " ".join(ranked[:n]) for q, ranked in ranked_new.items()}))

    results = {"config": args.config, "split": config.train_split, "queries": len(ids), "seed": args.seed,
               "query_repeat": config.bm25.query_repeat, "bm25": round(sum(bm25.values()) / len(bm25), 4), **rows,
               "seconds": round(time.perf_counter() - started, 1),
               "machine": machine_info(), "versions": library_versions()}
    print(f"{len(ids)} {config.train_split} queries, nDCG@10: BM25 {results['bm25']:.4f}")
    for name, row in rows.items():
        print(f"  {name}: {row['ndcg@10']:.4f} ({row['minus_bm25']:+.4f}, 95% {row['low']:+.4f}..{row['high']:+.4f}; "
              f"{row['better']} better, {row['worse']} worse)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from searchrl.errors import SearchRLError

    try:
        main()
    except SearchRLError as error:  # a bad --data or --config: the message names the file and the fix
        raise SystemExit(f"error: {error}") from None
