"""The untrained co-augmentation policy's greedy dev expansions in fp32 and in bf16, side by side.

``precision: auto`` trains and generates in bf16 on a CPU with bf16 instructions (AVX512-BF16 or
AMX) and in fp32 on one without, and greedy decoding can pick other tokens in each: the untrained
policy's figure on dev depends on the machine a recipe ran on. This expands every judged dev
query greedily with the ``coaug-cpu`` expansion policy in each precision, through the recipe's own
expansion job (``recipe coaug``'s ``_expand``: :class:`searchrl.augment.CorpusAugmentationJob` on a
fresh transformers engine) and, with ``--paths recipe,script``, through the path of
``benchmarks/coaug_best_of_n.py`` (the policy loaded for training, a zero LoRA adapter merged),
and scores each with the recipe's BM25 (``_score``; query held ``query_repeat`` times).

    python3 benchmarks/expansion_precision.py --data ../shared/data/scifact
    python3 benchmarks/expansion_precision.py --data ../shared/data/scifact --precisions fp32 --paths recipe

On a CPU without bf16 instructions bf16 is emulated (slower, and other numerics than a CPU that has
them). Writes ``benchmarks/results/expansion_precision.json`` (``--out``; with the machine and
every expansion) and prints the figures. The same command run against the package of an older
revision (``PYTHONPATH=OLD/src``, ``--paths recipe``) tells a change of code from one of numerics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PATHS = ("recipe", "script")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="coaug-cpu", help="recipe whose model, expansion policy and BM25 settings are used")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--paths", default="recipe,script", help=f"comma-separated: {', '.join(PATHS)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "expansion_precision.json")
    args = parser.parse_args()
    precisions = [p for p in args.precisions.split(",") if p]
    paths = [p for p in args.paths.split(",") if p]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        parser.error(f"--precisions takes fp32 and/or bf16, got {args.precisions!r}")
    if "recipe" not in paths or any(p not in PATHS for p in paths):
        parser.error(f"--paths takes recipe, optionally with script, got {args.paths!r}")

    from searchrl.coaug.config import CoAugConfig
    from searchrl.coaug.dataset import load_coaug_data
    from searchrl.coaug.recipe import _expand, _score
    from searchrl.config import load_config
    from searchrl.llm.precision import resolve_precision
    from searchrl.recipes import find_config
    from searchrl.runs import library_versions

    results: dict = {"config": args.config, "auto_means": resolve_precision("auto", "cpu"), "versions": library_versions()}
    try:  # absent from versions before run directories recorded the machine
        from searchrl.runs import machine_info

        results["machine"] = machine_info()
    except ImportError:
        results["machine"] = None
    for precision in precisions:
        config = load_config(CoAugConfig, find_config(args.config), [f"data={args.data}", f"precision={precision}"])
        data = load_coaug_data(config)
        queries = {q: text for q, text in data.dev_queries.items() if q in data.dev_qrels}
        if "bm25" not in results:
            results["queries"] = len(queries)
            results["bm25"] = _score(data.corpus, queries, data.dev_qrels, {}, {}, config.bm25)[0]["ndcg@10"]
        found: dict[str, dict[str, str]] = {}
        started = time.time()
        with tempfile.TemporaryDirectory() as folder:
            found["recipe"] = _expand(config, config.model, Path(folder), queries, "dev")[1]
        seconds = {"recipe": round(time.time() - started, 1)}
        if "script" in paths:
            started = time.time()
            found["script"] = script_path(config, queries)
            seconds["script"] = round(time.time() - started, 1)
        results[precision] = {
            name: {
                "ndcg@10": _score(data.corpus, queries, data.dev_qrels, {}, expansions, config.bm25)[0]["ndcg@10"],
                "differ_from_recipe": sum(expansions.get(q) != found["recipe"].get(q) for q in queries),
                "seconds": seconds[name],
                "expansions": expansions,
            }
            for name, expansions in found.items()
        }
        print(precision, {name: round(v["ndcg@10"], 4) for name, v in results[precision].items()}, flush=True)
    if len(precisions) == 2:
        first, second = (results[p]["recipe"]["expansions"] for p in precisions)
        results["recipe_fp32_vs_bf16_differ"] = sum(first.get(q) != second.get(q) for q in first)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in precisions} | {
        p: {name: {k: v for k, v in r.items() if k != "expansions"} for name, r in results[p].items()} for p in precisions
    }, indent=2))


def script_path(config, queries: dict[str, str]) -> dict[str, str]:
    """Greedy expansions as ``benchmarks/coaug_best_of_n.py`` makes them: training's loader, a zero LoRA merged."""
    from peft import get_peft_model

    from searchrl.augment import augment_items
    from searchrl.llm.transformers_engine import TransformersEngine
    from searchrl.training import build_lora_config, load_policy
    from searchrl.training.trainer import merged_lora

    model, tokenizer = load_policy(config.model, device="cpu", precision=config.precision)
    model = get_peft_model(model, build_lora_config(config.lora))
    engine = TransformersEngine.from_model(model, tokenizer, batch_size=32)
    with merged_lora(model):
        model.eval()
        parsed = augment_items(engine, config.expansion_policy(), "query", queries, batch_size=32, show_progress=False)
    return {q: p.text for q, p in parsed.items()}


if __name__ == "__main__":
    from searchrl.errors import SearchRLError

    try:
        main()
    except SearchRLError as error:  # a bad --data or --config: the message names the file and the fix
        raise SystemExit(f"error: {error}") from None
