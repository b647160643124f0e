"""Best-of-N distillation of query expansions: does imitating a policy's own best samples transfer?

Expert iteration (rejection-sampling fine-tuning) as the alternative to GRPO when the group
advantages are too weak: each round samples N expansions of every training query from the
current policy, scores each by the nDCG@10 (ties broken by nDCG@1000) of its expanded query over
the whole corpus — BM25 with the recipe's ``query_repeat``, as the recipe evaluates —, keeps the
best sample where it beats the policy's own greedy expansion of that query, and fine-tunes the
LoRA adapter on exactly those sampled tokens (the warm-start's masked next-token loss,
:func:`searchrl.agent.sft.train_on_episodes`). Greedy expansions are then scored on the recipe's
200 held-out training queries (its selection set for ``seed``) and on every judged dev query,
which chose nothing.

    python3 benchmarks/coaug_best_of_n.py --data ../shared/data/scifact --out RUN            # 1 round, N=8
    python3 benchmarks/coaug_best_of_n.py --data ../shared/data/scifact --out RUN --rounds 2 --temperature 0.7
    python3 benchmarks/coaug_best_of_n.py --data ../shared/data/scifact --out RUN --context 3   # corpus-steered

With ``--context K`` the policy is shown, after the query, the first ``--context-words`` words of
the K documents BM25 ranks first for the query alone (pseudo-relevance feedback, as in
corpus-steered query expansion): it can then take its terms from the corpus instead of inventing
them. The expanded query that is scored is still the query (held ``query_repeat`` times) and the
expansion; the passages only steer what the policy writes.

A finished round is kept (``RUN/round-R/`` adapter, ``RUN/results.json``); rerunning the command
continues after it. Writes ``RUN/results.json`` (with each query's nDCG@10) and
``benchmarks/results/coaug_best_of_n.json`` (the summary), and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Example:
    """One kept sample as the supervised loop reads it: prompt + sampled tokens, loss on the latter."""

    token_ids: list[int]
    mask: list[int]


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="coaug-cpu", help="recipe whose model, expansion policy and BM25 settings are used")
    parser.add_argument("--samples", type=int, default=8, help="expansions sampled per training query")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", type=int, default=0, help="show the policy the top K BM25 documents of the query")
    parser.add_argument("--context-words", type=int, default=30, help="words of each shown document (title first)")
    args = parser.parse_args()
    for name, least in (("samples", 1), ("rounds", 1), ("context", 0), ("context_words", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")

    import torch
    from peft import PeftModel, get_peft_model

    from searchrl.agent.sft import SFTConfig, train_on_episodes
    from searchrl.augment import augment_items
    from searchrl.augment.prompts import truncate_words
    from searchrl.coaug.config import CoAugConfig
    from searchrl.coaug.dataset import DevSelection, load_coaug_data
    from searchrl.config import load_config
    from searchrl.data.types import query_text
    from searchrl.llm.transformers_engine import TransformersEngine
    from searchrl.metrics import evaluate_run, paired_difference
    from searchrl.recipes import find_config
    from searchrl.retrieval.bm25 import BM25Retriever
    from searchrl.training import build_lora_config, load_policy
    from searchrl.training.trainer import merged_lora

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    config = load_config(CoAugConfig, find_config(args.config), [f"data={args.data}", f"seed={args.seed}"])
    if config.mode != "query" or config.retriever != "bm25":
        raise SystemExit("this experiment expands queries for BM25 (mode: query, retriever: bm25)")
    data = load_coaug_data(config)
    selection = DevSelection.held_out_training(
        data.train_queries, data.train_qrels, config.eval.max_queries or 200, data.dev_queries, data.dev_qrels,
        seed=config.seed,
    )
    held_out = set(selection.select)
    sets = {
        "selection": ({q: data.train_queries[q] for q in selection.select}, data.train_qrels),
        "dev": ({q: data.dev_queries[q] for q in selection.report}, data.dev_qrels),
    }
    train = {q: t for q, t in data.train_queries.items() if q not in held_out and q in data.train_qrels}
    retriever = BM25Retriever(k1=config.bm25.k1, b=config.bm25.b).index(data.corpus.values(), {}, show_progress=False)

    def scores(queries: dict[str, str], qrels, expansions: dict[str, str]) -> dict[str, tuple[float, float]]:
        """(nDCG@10, nDCG@1000) of each query with its expansion, over the whole corpus."""
        texts = {q: query_text(t, expansions.get(q), repeat=config.bm25.query_repeat) for q, t in queries.items()}
        _, per_query = evaluate_run(qrels, retriever.run(texts, k=1000), ["ndcg@10", "ndcg@1000"])
        return {q: (per_query.get(q, {}).get("ndcg@10", 0.0), per_query.get(q, {}).get("ndcg@1000", 0.0)) for q in queries}

    def key(score: tuple[float, float]) -> float:
        return score[0] + 0.1 * score[1]

    def means(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
        """Each set's mean nDCG@10."""
        return {name: float(np.mean(list(values.values()))) for name, values in per_query.items()}

    policy = plain_policy = config.expansion_policy()
    prompt_texts: dict[str, str] = {}
    if args.context:
        # The query's own text stays in front; the whole text is shown (no max_input_words cut).
        policy = policy.model_copy(update={"max_input_words": None})
        every = {**data.train_queries, **data.dev_queries}
        top = retriever.run(every, k=args.context)
        for q, text in every.items():
            ranked = sorted(top.get(q, {}), key=lambda d: -top[q][d])
            passages = [f"[{rank}] {truncate_words(f'{data.corpus[d].title}. {data.corpus[d].text}', args.context_words)}"
                        for rank, d in enumerate(ranked, start=1)]
            prompt_texts[q] = f"{text} Search results: {' '.join(passages)}"

    def shown(q: str, text: str) -> str:
        """What the policy is shown for query ``q``: the query, with its search results under --context."""
        return prompt_texts.get(q, text)

    model, tokenizer = load_policy(config.model, device="cpu", precision=config.precision)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    settings = {"config": args.config, "samples": args.samples, "temperature": args.temperature,
                "learning_rate": args.learning_rate, "epochs": args.epochs, "seed": args.seed}
    if args.context:
        settings.update(context=args.context, context_words=args.context_words)
    if results and results.get("settings", settings) != settings:
        raise SystemExit(f"{results_path} was written with {results['settings']}: use another --out for {settings}")
    results.setdefault("settings", settings)
    done = sum(1 for name in results if name.startswith("round-"))
    if done:
        model = PeftModel.from_pretrained(model, str(out / f"round-{done}"), is_trainable=True)
        log(f"resuming after round {done}")
    else:
        model = get_peft_model(model, build_lora_config(config.lora))
    engine = TransformersEngine.from_model(model, tokenizer, batch_size=32)

    def greedy(queries: dict[str, str], context: bool = True) -> dict[str, str]:
        texts = {q: shown(q, t) for q, t in queries.items()} if context else queries
        with merged_lora(model):
            model.eval()
            parsed = augment_items(engine, policy if context else plain_policy, "query", texts,
                                   batch_size=32, show_progress=False)
        return {q: p.text for q, p in parsed.items()}

    def evaluate(context: bool = True) -> dict[str, dict[str, float]]:
        return {name: {q: s[0] for q, s in scores(queries, qrels, greedy(queries, context)).items()}
                for name, (queries, qrels) in sets.items()}

    if "bm25" not in results:
        results["bm25"] = {name: float(np.mean([s[0] for s in scores(q, r, {}).values()])) for name, (q, r) in sets.items()}
        results["per_query"] = {"untrained": evaluate()}
        results["untrained"] = means(results["per_query"]["untrained"])
        if args.context:
            # The same untrained policy shown the query alone, for comparison within this run.
            results["per_query"]["untrained_without_context"] = evaluate(context=False)
            results["untrained_without_context"] = means(results["per_query"]["untrained_without_context"])
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"BM25 {results['bm25']}, untrained {results['untrained']}, "
            f"untrained without context {results.get('untrained_without_context')}")

    sampling = policy.sampling.model_copy(update={"n": args.samples, "temperature": args.temperature, "top_p": 1.0})
    for round_ in range(done + 1, args.rounds + 1):
        started = time.time()
        ids = list(train)
        own = scores(train, data.train_qrels, greedy(train))
        kept: list[Example] = []
        gains: list[float] = []
        for start in range(0, len(ids), 16):
            batch = ids[start : start + 16]
            prompts = [engine.encode_chat(policy.prompt("query", shown(q, train[q]))) for q in batch]
            with merged_lora(model):
                model.eval()
                groups = engine.generate_tokens(
                    prompts, sampling.model_copy(update={"seed": args.seed * 1_000_003 + round_ * 100_000 + start}),
                    logprobs=False,
                )
            parsed = {f"{q}#{j}": policy.parse(c.text) for q, group in zip(batch, groups) for j, c in enumerate(group)}
            query_of = {k: k.rsplit("#", 1)[0] for k in parsed}
            sampled = scores({k: train[q] for k, q in query_of.items()}, {k: data.train_qrels[q] for k, q in query_of.items()},
                             {k: p.text for k, p in parsed.items()})
            for q, group in zip(batch, groups):
                best = max(range(len(group)), key=lambda j: (key(sampled[f"{q}#{j}"]), -j))
                gain = key(sampled[f"{q}#{best}"]) - key(own[q])
                if gain > 1e-9 and parsed[f"{q}#{best}"].ok:
                    completion = group[best]
                    ids_ = list(completion.prompt_ids) + list(completion.token_ids)
                    kept.append(Example(ids_, [0] * len(completion.prompt_ids) + [1] * len(completion.token_ids)))
                    gains.append(gain)
            log(f"round {round_}: {start + len(batch)}/{len(ids)} queries sampled, {len(kept)} kept")
        sampled_at = time.time()
        if not kept:
            raise SystemExit(f"round {round_}: no sample beat the greedy expansion of its query; nothing to fine-tune on "
                             "(try more --samples or a higher --temperature)")
        sft = SFTConfig(epochs=args.epochs, batch_size=8, learning_rate=args.learning_rate, seed=args.seed + round_)
        losses = train_on_episodes(model, kept, sft, pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(str(out / f"round-{round_}"))
        trained_at = time.time()
        per_query = evaluate()
        before = results["per_query"]["untrained"]
        results["per_query"][f"round-{round_}"] = per_query
        results[f"round-{round_}"] = {
            "kept": len(kept), "of": len(ids), "mean_gain_of_kept": float(np.mean(gains)) if gains else 0.0,
            "sft_steps": len(losses), "loss_first": losses[0], "loss_last10": float(np.mean(losses[-10:])),
            **means(per_query),
            "vs_untrained": {name: paired_difference(before[name], per_query[name]) for name in per_query},
            "seconds": {"sampling": round(sampled_at - started, 1), "training": round(trained_at - sampled_at, 1),
                        "evaluation": round(time.time() - trained_at, 1)},
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"round {round_}: {json.dumps(results[f'round-{round_}'])}")
    summary = {k: v for k, v in results.items() if k != "per_query"}
    (Path(__file__).resolve().parent / "results" / f"coaug_best_of_n{'_context' if args.context else ''}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    from searchrl.errors import SearchRLError

    try:
        main()
    except SearchRLError as error:  # a bad --data or --config: the message names the file and the fix
        raise SystemExit(f"error: {error}") from None
