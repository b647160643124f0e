"""``searchrl recipe coaug``: train, expand the whole corpus and the evaluation queries, compare.

One resumable command from a config to the three numbers a reader wants, on a split that did
not choose the checkpoint:

1. train (or resume) the run; the best checkpoint is chosen on the *selection* part of dev;
2. expand the whole corpus and the evaluation split's queries with the untrained policy and
   with the best checkpoint (greedy, the training run's expansion policy; each a resumable
   :class:`~searchrl.augment.CorpusAugmentationJob` under ``RUN/expansions/``);
3. index the corpus with BM25 three times (plain, untrained expansions, trained expansions) and
   score the evaluation queries: nDCG@10 of ``bm25``, ``untrained`` and ``trained``, and their
   query-by-query ``differences`` with a bootstrap interval of each mean difference.

When the evaluation split is the dev split, only its *report* queries are scored (the ones
that took no part in choosing the checkpoint) and the output says so. Rerunning the command
skips every finished part. The result is also written to ``RUN/recipe.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from searchrl.coaug.config import BM25Settings, CoAugConfig
from searchrl.coaug.dataset import DevSelection
from searchrl.data.types import judged_queries
from searchrl.errors import ConfigError
from searchrl.metrics import paired_difference
from searchrl.pool import COMPARISONS, write_per_question
from searchrl.runs import finished_run_of

MEASURES = ("ndcg@10", "recall@100", "mrr@10")


def run_coaug_recipe(config: CoAugConfig, *, eval_split: str, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Train ``config`` into ``out``, then compare BM25, untrained and trained expansions on ``eval_split``."""
    from searchrl.coaug.train import train_coaug

    started = time.time()
    if config.retriever != "bm25":
        raise ConfigError("the co-augmentation recipe evaluates with BM25", hint="set retriever: bm25")
    out = Path(out)
    config = config.model_copy(update={"output_dir": str(out)})
    if eval_split == config.train_split:
        raise ConfigError(f"--eval-split {eval_split} is the training split", hint="evaluate on dev or a held-out split")
    if not finished_run_of(out, config):  # a finished run of another configuration goes back to training
        train_coaug(config, force=force)
    trained_at = time.time()
    best = json.loads((out / "best.json").read_text(encoding="utf-8")) if (out / "best.json").exists() else None

    selection = DevSelection.load(out / "selection.json")
    queries, qrels, note = _evaluation_queries(config, selection, eval_split)
    results: dict[str, Any] = {}
    expansions: dict[str, tuple[dict[str, str], dict[str, str]]] = {"bm25": ({}, {})}
    untouched = best is not None and best.get("step") == 0  # no checkpoint beat the policy before training
    for name, model in (("untrained", config.model), ("trained", str(out / "best"))):
        if name == "trained" and untouched:
            expansions[name] = expansions["untrained"]  # best/ *is* the untrained policy: the same expansions
            continue
        expansions[name] = _expand(config, model, out / "expansions" / name, queries, eval_split)
    scored_at = time.time()
    corpus = _corpus(config)
    per_query: dict[str, dict[str, float]] = {}
    for name, (doc_expansions, query_expansions) in expansions.items():
        results[name], per_query[name] = _score(corpus, queries, qrels, doc_expansions, query_expansions, config.bm25)

    summary = {
        "bm25": results["bm25"]["ndcg@10"],
        "untrained": results["untrained"]["ndcg@10"],
        "trained": results["trained"]["ndcg@10"],
        "eval_split": eval_split,
        "num_queries": len(queries),
        "queries": note,
        "selection": _selection_note(config, selection, out),
        "checkpoint": {"path": str(out / "best"), "step": None if best is None else best.get("step"),
                       "selection_value": None if best is None else best.get("value"),
                       **({"note": "no trained checkpoint beat the untrained policy on the selection queries by more "
                                   f"than eval.min_delta ({config.eval.min_delta}): trained = untrained"}
                          if untouched else {})},
        "mode": config.mode,
        "measures": results,
        # query by query on nDCG@10: mean difference, bootstrap interval, queries better / worse / tied
        "differences": {
            f"{name}_vs_{baseline}": {"metric": "ndcg@10", **paired_difference(per_query[baseline], per_query[name])}
            for name, baseline in COMPARISONS["coaug"]
        },
        "seconds": {"training": round(trained_at - started, 1), "expansion": round(scored_at - trained_at, 1),
                    "total": round(time.time() - started, 1)},
    }
    write_per_question(out, "coaug", {"ndcg@10": per_query}, questions={q: _text_key(t) for q, t in queries.items()},
                       source=f"{config.data} {eval_split}: {note}")
    (out / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _text_key(text: str) -> str:
    """A short key of a query's text: pooled runs must have scored the same queries, not only the same ids."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _evaluation_queries(config: CoAugConfig, selection: DevSelection, split: str) -> tuple[dict[str, str], dict, str]:
    """The judged queries of ``split``; only the report part when ``split`` chose the checkpoint."""
    from searchrl.data.beir import load_beir

    dataset = load_beir(config.data, split)
    judged = judged_queries(dataset.queries, dataset.qrels)
    note = f"all {len(judged)} judged queries of {split}"
    if split == config.dev_split and selection.select_split == "train":
        note = f"all {len(judged)} judged queries of {split} (checkpoints were chosen on held-out training queries)"
    elif split == config.dev_split:
        if not selection.report:
            raise ConfigError(
                f"every {split} query took part in choosing the checkpoint (eval.report_fraction is 0)",
                hint="evaluate on another split, or train with eval.report_fraction > 0",
            )
        judged = [q for q in judged if q in set(selection.report)]
        note = f"the {len(judged)} {split} queries held out from checkpoint selection (report part)"
    return {q: dataset.queries[q] for q in judged}, {q: dataset.qrels[q] for q in judged}, note


def _selection_note(config: CoAugConfig, selection: DevSelection, out: Path) -> str:
    """Which queries chose the checkpoint (for the result's ``selection``)."""
    if selection.select_split == "train":
        return (f"{len(selection.select)} {config.train_split} queries held out of RL training "
                f"(see {out / 'selection.json'})")
    return f"{config.dev_split} split, {len(selection.select)} selection queries (see {out / 'selection.json'})"


def _corpus(config: CoAugConfig):
    from searchrl.data.beir import load_corpus
    from searchrl.data.hub import resolve_data_path
    from searchrl.data.io import resolve_data_file

    return load_corpus(resolve_data_file(resolve_data_path(config.data), "corpus.jsonl"))


def _expand(
    config: CoAugConfig, model: str, out: Path, queries: dict[str, str], split: str
) -> tuple[dict[str, str], dict[str, str]]:
    """``(document expansions, query expansions)`` of ``model`` under the run's expansion policy (resumable)."""
    from searchrl.augment import CorpusAugmentationJob
    from searchrl.data.expansions import load_expansions
    from searchrl.data.types import document_text
    from searchrl.llm import build_engine

    policy = config.expansion_policy()
    engine_cache: dict[str, Any] = {}

    def engine():
        if "engine" not in engine_cache:
            engine_cache["engine"] = build_engine(
                "transformers", model=model, batch_size=config.eval.batch_size, dtype=config.precision
            )
        return engine_cache["engine"]

    jobs = []
    if config.mode in ("document", "coaug"):
        corpus = _corpus(config)
        items = {doc_id: document_text(doc) for doc_id, doc in corpus.items()}
        jobs.append(("documents", items, "document", out / "corpus"))
    if config.mode in ("query", "coaug"):
        jobs.append(("queries", queries, "query", out / f"queries-{split}"))
    found: dict[str, dict[str, str]] = {"documents": {}, "queries": {}}
    for kind, items, role, folder in jobs:
        job = CorpusAugmentationJob(
            items, folder, role=role, policy=policy, engine=engine, model_name=model, engine_name="transformers",
            source={"data": str(config.data), "items": kind, "split": split if role == "query" else None},
            batch_size=32,
        )
        job.run()
        found[kind] = load_expansions(job.expansions_path)
    if "engine" in engine_cache:
        engine_cache["engine"].close()
    return found["documents"], found["queries"]


def _score(
    corpus, queries, qrels, doc_expansions, query_expansions, bm25: BM25Settings
) -> tuple[dict[str, float], dict[str, float]]:
    """nDCG@10 and friends of BM25 (the run's ``bm25`` settings) over the corpus with these expansions,
    and each query's nDCG@10."""
    from searchrl.data.types import query_text
    from searchrl.metrics import evaluate_run
    from searchrl.retrieval.bm25 import BM25Retriever

    retriever = BM25Retriever(k1=bm25.k1, b=bm25.b).index(corpus.values(), doc_expansions, show_progress=False)
    texts = {q: query_text(text, query_expansions.get(q), repeat=bm25.query_repeat) for q, text in queries.items()}
    aggregate, per_query = evaluate_run(qrels, retriever.run(texts, k=100), MEASURES)
    return aggregate, {q: scores["ndcg@10"] for q, scores in per_query.items()}


__all__ = ["run_coaug_recipe"]
