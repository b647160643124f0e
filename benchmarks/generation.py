"""Expansion throughput on CPU with the real SmolLM2-135M-Instruct: one prompt at a time vs batched.

Run (from the project root):

    python3 benchmarks/generation.py                      # 32 SciFact documents, batch 1 vs 16
    python3 benchmarks/generation.py --items 16 --batch-sizes 1 8 16

Writes benchmarks/results/generation.json and prints it. Tokens are counted with the model's
tokenizer on the completions (stop string included); prompts are the document-expansion prompts
of :class:`searchrl.augment.ExpansionPolicy` (sparse, think off, answer prefill, greedy), with
documents cut to ``--max-input-words``. Each batch size is timed twice — with one new token
(prompt prefill alone) and with ``--max-new-tokens`` — which splits the cost into prefill
(prompt tokens per second) and decoding (seconds per decoding step of a batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from searchrl.augment import ExpansionPolicy, default_expansion_sampling
from searchrl.data.beir import iter_corpus
from searchrl.data.types import document_text
from searchrl.llm.engine import GenerationEngine
from searchrl.paths import shared_data_dir

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
RESULTS = Path(__file__).resolve().parent / "results"


def load_engine(batch_size: int = 16) -> tuple[GenerationEngine, str]:
    """The package's transformers engine for SmolLM2-135M-Instruct (CPU), and which engine it is."""
    from searchrl.resolver import resolve_model

    from searchrl.llm import build_engine

    folder = resolve_model(MODEL)
    return build_engine("transformers", model=str(folder), batch_size=batch_size, device="cpu"), "searchrl.llm transformers"


def _token_count(engine: GenerationEngine, texts: list[str]) -> int:
    tokenizer = getattr(engine, "tokenizer")
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-input-words", type=int, default=48)
    parser.add_argument("--prefill", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = iter_corpus(shared_data_dir() / "scifact" / "corpus.jsonl")
    texts = [document_text(doc) for _, doc in zip(range(args.items), corpus)]
    policy = ExpansionPolicy(
        prefill=args.prefill,
        max_input_words=args.max_input_words,
        sampling=default_expansion_sampling().model_copy(update={"max_new_tokens": args.max_new_tokens}),
    )
    prefill_only = policy.model_copy(update={"sampling": policy.sampling.model_copy(update={"max_new_tokens": 1})})
    engine, engine_name = load_engine(batch_size=max(args.batch_sizes))
    prompt_tokens = [len(engine.encode_chat(policy.prompt("document", t))) for t in texts]  # type: ignore[attr-defined]
    policy.expand(engine, "document", texts[:2])  # warm-up

    runs = []
    for batch_size in args.batch_sizes:
        if hasattr(engine, "batch_size"):
            engine.batch_size = batch_size  # type: ignore[attr-defined]
        started = time.perf_counter()
        for start in range(0, len(texts), batch_size):
            prefill_only.complete(engine, "document", texts[start : start + batch_size])
        prefill_seconds = time.perf_counter() - started
        completions: list[str] = []
        started = time.perf_counter()
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            completions += [group[0] for group in policy.complete(engine, "document", chunk)]
        seconds = time.perf_counter() - started
        generated = _token_count(engine, completions)
        parsed = [policy.parse(c) for c in completions]
        batches = -(-len(texts) // batch_size)
        runs.append(
            {
                "batch_size": batch_size,
                "items": len(texts),
                "seconds": round(seconds, 2),
                "prefill_seconds": round(prefill_seconds, 2),
                "prompt_tokens_per_s_prefill": round(sum(prompt_tokens) / prefill_seconds, 1),
                "seconds_per_decoding_step": round(
                    max(seconds - prefill_seconds, 0.0) / (batches * max(args.max_new_tokens - 1, 1)), 3
                ),
                "items_per_s": round(len(texts) / seconds, 3),
                "generated_tokens": generated,
                "generated_tokens_per_s": round(generated / seconds, 1),
                "mean_generated_tokens": round(generated / len(texts), 1),
                "well_formed": sum(p.ok for p in parsed),
                "example_completion": completions[0],
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr)

    corpus_size = 5183
    best = max(runs, key=lambda r: r["items_per_s"])
    result = {
        "benchmark": "generation",
        "command": "python3 " + " ".join(["benchmarks/generation.py", *sys.argv[1:]]),
        "model": MODEL,
        "engine": engine_name,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "2 CPU cores shared with other processes while measuring; absolute figures are pessimistic",
        "machine": platform.processor() or platform.machine(),
        "task": "SciFact document expansion prompts (sparse, think off), greedy decoding, stop at </answer>",
        "policy": policy.model_dump(mode="json"),
        "max_new_tokens": args.max_new_tokens,
        "note_decoding": "a batch decodes until every row has stopped, so each batch costs about max_new_tokens "
        "decoding steps when one row runs to the limit",
        "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "runs": runs,
        "speedup_batched_vs_single": round(runs[-1]["items_per_s"] / runs[0]["items_per_s"], 2) if len(runs) > 1 else None,
        "estimated_minutes_for_scifact_corpus": round(corpus_size / best["items_per_s"] / 60, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
