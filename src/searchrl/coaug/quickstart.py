"""The quickstart: a short co-augmentation run on SciFact, then BM25 vs untrained vs trained.

The comparison is made on dev queries that did not choose the checkpoint (see
:class:`searchrl.coaug.dataset.DevSelection`), and says how many.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from searchrl.coaug.config import CoAugConfig
from searchrl.coaug.dataset import render_training_prompt
from searchrl.coaug.train import CoAugSetup, prepare_coaug, train_prepared
from searchrl.data.download import derive_dev_split, download_beir_dataset
from searchrl.data.types import document_text
from searchrl.runs import RunDirectory


def quickstart_config(data: str | Path, output_dir: str | Path, *, model: str | None = None) -> dict[str, Any]:
    """The quickstart recipe (mirrored by the packaged recipe ``coaug-quickstart``) as a config dict.

    Co-augmentation (queries and documents) sized for under 15 minutes on 2 CPU cores with
    SmolLM2-135M-Instruct; the sizing is explained in the YAML file's header.
    """
    # Hard negatives (top unexpanded-BM25 non-relevant documents) keep the in-batch ranking from
    # being trivial: with only random negatives every sample ranks its own document first, all
    # rewards in a group tie and there is nothing to learn. Each query's group is the query, its
    # relevant document and its 4 hardest negatives (the top-5 non-relevant results), so a step
    # expands 2 queries and 10 documents. With 2 easier negatives (top-10) per query the
    # untrained model's samples tied in every group (zero gradient); see the YAML header.
    config: dict[str, Any] = {
        "data": str(data),
        "mode": "coaug",
        "retriever": "bm25",
        # The query held twice before its expansion (query2doc's weighting): appended once, the
        # small model's expansions outweigh short queries (see coaug-cpu).
        "bm25": {"query_repeat": 2},
        "batch": {
            "queries_per_step": 2,
            "group_size": 6,
            "relevant_per_query": 1,
            "hard_negatives": 4,
            "hard_negative_depth": 5,
            # Every corpus document competes in every pool: an expansion is charged for the
            # documents it pulls up from anywhere, as evaluation would (see docs/DEVIATIONS.md).
            "background_corpus": True,
            "skip_solved": True,
        },
        "reward": {"rounds": 64},
        "grpo": {"steps": 6, "num_generations": 4, "micro_batch_size": 8, "learning_rate": 5e-4, "temperature": 1.0,
                 "save_steps": 3},
        "generation": {"max_new_tokens": 20},
        # Answer prefill (the default) makes even the untrained model's completions usable under
        # strict parsing; documents are cut to their opening 40 words to keep prompts short.
        "expansion": {"max_words": 20, "max_input_words": 40},
        "lora": {"r": 16, "alpha": 32},
        # Checkpoints are chosen on 25 of the 50 selection queries of dev; the other 50 dev queries
        # only report the result.
        "eval": {"every": 3, "max_queries": 25, "report_fraction": 0.5, "candidate_docs": None, "expand_depth": 4,
                 "batch_size": 16},
        "device": "auto",
        "output_dir": str(output_dir),
    }
    if model:
        config["model"] = model
    return config


@dataclass
class QuickstartSummary:
    """What the quickstart prints: nDCG@10 of BM25, untrained and trained expansions on report queries.

    ``evaluated`` says which queries and documents; the report queries took no part in choosing
    the checkpoint (``selected_on`` says which did).
    """

    run_dir: Path
    bm25: float
    untrained: float
    trained: float
    trained_step: int | None
    seconds: float
    evaluated: str
    selected_on: str
    formats: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bm25": self.bm25, "untrained": self.untrained, "trained": self.trained,
            "trained_step": self.trained_step, "evaluated": self.evaluated, "selected_on": self.selected_on,
            "run_dir": str(self.run_dir), "best": str(self.run_dir / "best"), "seconds": round(self.seconds, 1),
        }

    def table(self) -> str:
        chosen = (
            f"  (checkpoint of step {self.trained_step})" if self.trained_step
            else "  (no step beat the untrained policy on the selection queries: best/ is the untrained policy)"
        )
        return "\n".join(
            [
                f"dev nDCG@10 on {self.evaluated}",
                f"  BM25 (no expansion)      {self.bm25:.4f}",
                f"  + untrained expansions   {self.untrained:.4f}",
                f"  + trained expansions     {self.trained:.4f}" + chosen,
                f"checkpoint chosen on {self.selected_on}",
                *self.formats,
                f"run directory: {self.run_dir}   wall time: {self.seconds / 60:.1f} min",
                f"trained policy: {self.run_dir / 'best'}   curves: {self.run_dir / 'report.html'}",
            ]
        )


def _format_lines(config: CoAugConfig, setup_prompt_tokens: dict[str, float], records: list[dict]) -> list[str]:
    """Prompt sizes and expansion format figures of a run, for the quickstart's printout."""
    lines = [
        "prompts: "
        + ", ".join(f"{role} ~{tokens:.0f} tokens" for role, tokens in setup_prompt_tokens.items())
        + f" (answer prefill {'on' if config.expansion.prefill else 'off'}, "
        + ("lenient" if config.expansion.lenient else "strict")
        + f" parsing; inputs cut to {config.expansion.max_input_words} words)"
    ]
    for record in records:
        if "dev/ndcg@10" not in record:
            continue
        parts = []
        for side, name in (("query", "queries"), ("doc", "documents")):
            if f"dev/{side}_format_ok_rate" in record:
                parts.append(
                    f"{name} {record[f'dev/{side}_format_ok_rate']:.0%} well formed, "
                    f"{record[f'dev/{side}_expansion_words']:.1f} words"
                )
        if parts:
            lines.append(f"  dev expansions at step {record['step']}: " + "; ".join(parts))
    key = "train/coaug/format_ok_rate"
    train = [r for r in records if key in r]
    if train:
        first, last = train[0], train[-1]
        lines.append(
            f"  training samples well formed: {first[key]:.0%} at step {first['step']}, "
            f"{last[key]:.0%} at step {last['step']}"
        )
    return lines


def _mean_prompt_tokens(setup: CoAugSetup) -> dict[str, float]:
    """Mean prompt length in tokens per expanded role, over the dev queries and (up to 200) dev documents."""
    config, evaluator, tokenizer = setup.config, setup.evaluator, setup.trainer.processing_class
    policy = config.expansion_policy()
    samples: dict[str, list[str]] = {}
    if config.mode in ("query", "coaug"):
        samples["query"] = list(evaluator.queries.values())
    if config.mode in ("document", "coaug"):
        ids = evaluator.candidate_ids if evaluator.expanded_ids is None else evaluator.expanded_ids
        samples["document"] = [document_text(setup.data.corpus[d]) for d in ids[:200]]
    return {
        role: float(np.mean([len(tokenizer(render_training_prompt(tokenizer, policy.prompt(role, t)))["input_ids"]) for t in texts]))
        for role, texts in samples.items()
        if texts
    }


def run_quickstart(
    *, data: str | Path | None = None, out: str | Path | None = None, model: str | None = None, steps: int | None = None
) -> QuickstartSummary:
    """Train the quickstart recipe, then compare BM25, untrained and trained expansions on report queries.

    The checkpoint is chosen on one part of dev; the comparison uses the other part, with the
    untrained policy and the chosen checkpoint expanding the same queries and documents.
    """
    from searchrl.llm import build_engine

    started = time.time()
    data_dir = Path(data) if data is not None else download_beir_dataset("scifact")
    out_dir = Path(out) if out is not None else Path("runs") / "quickstart"
    raw = quickstart_config(data_dir, out_dir, model=model)
    derived = derive_dev_split(data_dir, out_dir / "qrels")
    if derived is not None:
        raw["qrels_dir"] = str(derived)
    if steps is not None:
        raw["grpo"]["steps"] = steps
    config = CoAugConfig.model_validate(raw)
    setup = prepare_coaug(config)
    prompt_tokens = _mean_prompt_tokens(setup)
    selected_on = setup.evaluator.describe(expand_depth=config.eval.expand_depth)
    run_dir = train_prepared(setup, started=started)
    best = RunDirectory(run_dir).best()
    trained_step = int(best["step"]) if best is not None and best["step"] > 0 else None

    report = setup.report_evaluator()
    figures = {"bm25": report.baseline()["ndcg@10"]}
    untrained = build_engine("transformers", model=config.model, batch_size=config.eval.batch_size, dtype=config.precision)
    figures["untrained"] = report.evaluate_engine(untrained)["ndcg@10"]
    if trained_step is None:
        figures["trained"] = figures["untrained"]
    else:
        untrained.close()
        trained = build_engine("transformers", model=run_dir / "best", batch_size=config.eval.batch_size,
                               dtype=config.precision)
        figures["trained"] = report.evaluate_engine(trained)["ndcg@10"]
    (run_dir / "quickstart.json").write_text(
        json.dumps({**figures, "trained_step": trained_step, "evaluated": report.describe(
            expand_depth=config.eval.expand_depth), "selected_on": selected_on}, indent=2) + "\n",
        encoding="utf-8",
    )
    return QuickstartSummary(
        run_dir,
        float(figures["bm25"]),
        float(figures["untrained"]),
        float(figures["trained"]),
        trained_step,
        time.time() - started,
        evaluated=report.describe(expand_depth=config.eval.expand_depth).replace("dev queries", "report queries", 1),
        selected_on=selected_on.replace("dev queries", "selection queries", 1),
        formats=_format_lines(config, prompt_tokens, RunDirectory(run_dir).read_metrics()),
    )


__all__ = ["QuickstartSummary", "quickstart_config", "run_quickstart"]
