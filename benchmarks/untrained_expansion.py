"""What *untrained* SmolLM2-135M-Instruct expansion does to BM25 on SciFact dev (nDCG@10).

The starting point RL has to beat: plain BM25, query-only, document-only and both, with the
expansions parsed strictly (the training rule: exactly one <answer> block, else nothing) and
leniently (salvage untagged text). Greedy decoding, think off, sparse prompts, answer prefill on
(the prompt opens the assistant turn with ``<answer>``; ``--no-prefill`` for the old behaviour).

Run (from the project root):

    python3 benchmarks/untrained_expansion.py                    # documents: the dev candidate pool
    python3 benchmarks/untrained_expansion.py --doc-scope corpus # all 5,183 documents (hours on 2 CPU cores)

Expanding the whole corpus with a 135M model on two shared cores takes far longer than this
benchmark may run (see benchmarks/results/generation.json), so by default only the dev
queries' *candidate pool* is expanded: the union of plain-BM25 top-``--pool-depth`` for the dev
queries plus every document judged relevant for them. Other documents are indexed
unexpanded. The JSON says which scope was used.

Generation goes through :class:`searchrl.augment.CorpusAugmentationJob`, so an interrupted run
resumes; expansions are kept under ``$SEARCHRL_CACHE/bench/untrained_expansion``.
Writes benchmarks/results/untrained_expansion.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation import MODEL, load_engine  # noqa: E402

from searchrl.augment import CorpusAugmentationJob, ExpansionPolicy, default_expansion_sampling  # noqa: E402
from searchrl.data.beir import load_beir  # noqa: E402
from searchrl.data.types import document_text, query_text  # noqa: E402
from searchrl.metrics import evaluate_run  # noqa: E402
from searchrl.paths import cache_dir, shared_data_dir  # noqa: E402
from searchrl.retrieval.bm25 import BM25Retriever  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MEASURES = ("ndcg@10", "recall@100")


def _read_completions(path: Path) -> dict[str, str]:
    return {r["id"]: r.get("completion", "") for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def _expansions(completions: dict[str, str], policy: ExpansionPolicy, *, lenient: bool) -> dict[str, str]:
    parser = policy.model_copy(update={"lenient": lenient})
    return {i: parser.parse(c).text for i, c in completions.items()}


def _format_stats(completions: dict[str, str], policy: ExpansionPolicy) -> dict:
    strict = [policy.model_copy(update={"lenient": False}).parse(c) for c in completions.values()]
    lenient = [policy.model_copy(update={"lenient": True}).parse(c) for c in completions.values()]
    reasons: dict[str, int] = {}
    for p in strict:
        reasons[p.reason] = reasons.get(p.reason, 0) + 1
    return {
        "items": len(strict),
        "well_formed": sum(p.ok for p in strict),
        "closed_with_answer_tag": sum("</answer>" in c for c in completions.values()),
        "non_empty_strict": sum(bool(p.text) for p in strict),
        "non_empty_lenient": sum(bool(p.text) for p in lenient),
        "mean_words_strict": round(sum(len(p.text.split()) for p in strict) / max(len(strict), 1), 1),
        "mean_words_lenient": round(sum(len(p.text.split()) for p in lenient) / max(len(lenient), 1), 1),
        "reasons": dict(sorted(reasons.items())),
    }


def _prompt_tokens(engine, policy: ExpansionPolicy, role: str, texts: list[str]) -> dict:
    """Prompt length in the model's tokens: the fixed part (template) and the mean over ``texts``."""
    encode = getattr(engine, "encode_chat", None)
    if encode is None:
        return {}
    template = [dict(m, content=m["content"].replace("{text}", "")) for m in policy.prompt_template(role)]
    lengths = [len(encode(policy.prompt(role, text))) for text in texts]
    return {"fixed": len(encode(template)), "mean": round(sum(lengths) / max(len(lengths), 1), 1), "max": max(lengths, default=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc-scope", choices=["pool", "corpus"], default="pool")
    parser.add_argument("--pool-depth", type=int, default=100)
    parser.add_argument("--queries", type=int, default=None, help="only the first N dev queries (default: all 100)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-words", type=int, default=64)
    parser.add_argument("--max-input-words", type=int, default=None, help="inputs cut to this many words (default: policy's)")
    parser.add_argument("--prefill", action=argparse.BooleanOptionalAction, default=True, help="open the answer in the prompt")
    parser.add_argument("--out", type=Path, default=cache_dir() / "bench" / "untrained_expansion")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    data = load_beir(shared_data_dir() / "scifact", "dev")
    if args.queries is not None:
        data.queries = dict(list(data.queries.items())[: args.queries])
        data.qrels = {qid: data.qrels[qid] for qid in data.queries}
    documents = list(data.corpus.values())
    bm25 = BM25Retriever().index(documents, show_progress=False)
    baseline_run = bm25.run(data.queries, k=100)

    if args.doc_scope == "corpus":
        doc_ids = list(data.corpus)
    else:
        pool = {doc_id for hits in baseline_run.values() for doc_id, _ in sorted(hits.items(), key=lambda h: -h[1])[: args.pool_depth]}
        pool |= {doc_id for judged in data.qrels.values() for doc_id, rel in judged.items() if rel > 0}
        doc_ids = [doc_id for doc_id in data.corpus if doc_id in pool]

    policy = ExpansionPolicy(
        retriever="sparse",
        think=False,
        prefill=args.prefill,
        max_words=args.max_words,
        **({"max_input_words": args.max_input_words} if args.max_input_words else {}),
        sampling=default_expansion_sampling().model_copy(update={"max_new_tokens": args.max_new_tokens}),
    )
    engine_holder: dict = {}

    def engine():
        if "engine" not in engine_holder:
            engine_holder["engine"], engine_holder["name"] = load_engine(batch_size=args.batch_size)
        return engine_holder["engine"]

    timings = {}
    # One cache folder per prompt/parse setting: a job refuses to mix settings in one folder.
    tag = f"{'prefill' if policy.prefill else 'noprefill'}-in{policy.max_input_words}-new{args.max_new_tokens}"
    jobs = {
        "query": ({qid: data.queries[qid] for qid in data.queries}, args.out / f"queries-{args.queries or 'all'}-{tag}"),
        "document": ({doc_id: document_text(data.corpus[doc_id]) for doc_id in doc_ids}, args.out / f"documents-{args.doc_scope}-{args.pool_depth}-queries-{args.queries or 'all'}-{tag}"),
    }
    manifests = {}
    for role, (items, out) in jobs.items():
        started = time.perf_counter()
        job = CorpusAugmentationJob(
            items, out, role=role, policy=policy, engine=engine, model_name=MODEL, engine_name="transformers",
            source={"data": str(data.directory), "split": "dev", "scope": args.doc_scope if role == "document" else "dev queries"},
            batch_size=args.batch_size,
        )
        manifests[role] = job.run()
        timings[role] = round(time.perf_counter() - started, 1)

    query_completions = _read_completions(jobs["query"][1] / "expansions.jsonl")
    doc_completions = _read_completions(jobs["document"][1] / "expansions.jsonl")

    results = {}
    for mode in ("strict", "lenient"):
        lenient = mode == "lenient"
        query_exp = _expansions(query_completions, policy, lenient=lenient)
        doc_exp = _expansions(doc_completions, policy, lenient=lenient)
        expanded_queries = {qid: query_text(text, query_exp.get(qid)) for qid, text in data.queries.items()}
        expanded_index = BM25Retriever().index(documents, doc_exp, show_progress=False)
        conditions = {
            "query_only": bm25.run(expanded_queries, k=100),
            "document_only": expanded_index.run(data.queries, k=100),
            "both": expanded_index.run(expanded_queries, k=100),
        }
        results[mode] = {name: evaluate_run(data.qrels, run, MEASURES)[0] for name, run in conditions.items()}

    baseline = evaluate_run(data.qrels, baseline_run, MEASURES)[0]
    result = {
        "benchmark": "untrained_expansion",
        "command": "python3 " + " ".join(["benchmarks/untrained_expansion.py", *sys.argv[1:]]),
        "model": MODEL,
        "engine": engine_holder.get("name", "(expansions loaded from a finished earlier run)"),
        "data": f"BEIR SciFact, dev split ({len(data.queries)} queries"
        + (f": the first {args.queries} of the 100" if args.queries is not None else "")
        + f"), full corpus indexed ({len(documents):,} documents)",
        "retriever": "BM25 (k1 1.2, b 0.75, English stemming and stop words)",
        "policy": policy.model_dump(mode="json"),
        "load_average_at_end": [round(x, 2) for x in __import__("os").getloadavg()],
        "document_scope": (
            "whole corpus expanded"
            if args.doc_scope == "corpus"
            else f"only the dev candidate pool expanded: union of plain-BM25 top-{args.pool_depth} for the dev queries "
            f"plus all dev-relevant documents ({len(doc_ids)} of {len(documents)} documents); the rest indexed unexpanded"
        ),
        "documents_expanded": len(doc_ids),
        "generation_seconds_this_run": timings,
        "generation_items_per_s": {role: m["last_run"]["items_per_s"] for role, m in manifests.items()},
        "format": {"query": _format_stats(query_completions, policy), "document": _format_stats(doc_completions, policy)},
        "prompt_tokens": {
            "query": _prompt_tokens(engine_holder.get("engine"), policy, "query", list(jobs["query"][0].values())),
            "document": _prompt_tokens(engine_holder.get("engine"), policy, "document", list(jobs["document"][0].values())),
        },
        "ndcg@10": {
            "bm25": round(baseline["ndcg@10"], 4),
            **{f"{cond}_{mode}": round(results[mode][cond]["ndcg@10"], 4) for mode in results for cond in results[mode]},
        },
        "recall@100": {
            "bm25": round(baseline["recall@100"], 4),
            **{f"{cond}_{mode}": round(results[mode][cond]["recall@100"], 4) for mode in results for cond in results[mode]},
        },
        "example": {
            "query": next(iter(data.queries.values())),
            "query_completion": next(iter(query_completions.values())),
            "document_completion": next(iter(doc_completions.values())),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "untrained_expansion.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
