"""Does the agent's choice after its first search depend on the results? A probe of saved episodes.

For each greedy episode in EPISODES (a ``recipe agent`` run's ``eval/*.jsonl``) that searched at
least once, the conversation through the first search's results is rendered with the run's chat
format and ``<think>`` appended; the probe reads the adapter's probability that the thought opens
with "No" (the ``sft.read_results`` retry form, "No passage mentions …"). The episodes are split by
whether the tool's noise replaced the first search's results (``before_noise`` in the search record):
a policy that reads the passages should give "No" more probability after random chunks.

    python benchmarks/retry_decision.py RUN RUN/sft/adapter RUN/eval/warm_start.jsonl

Writes benchmarks/results/retry_decision.json (one entry per adapter, updated in place) and prints it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the recipe's run directory (its config.yaml is read)")
    parser.add_argument("adapter", type=Path, help="the LoRA adapter to probe (RUN/sft/adapter, RUN/best, ...)")
    parser.add_argument("episodes", type=Path, help="greedy episodes whose contexts are probed (RUN/eval/*.jsonl)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "retry_decision.json")
    args = parser.parse_args()

    import torch

    from searchrl.agent.config import load_agent_config
    from searchrl.agent.episode import ChatFormat
    from searchrl.agent.train import load_policy_model

    config = load_agent_config(args.run / "config.yaml")
    model, tokenizer = load_policy_model(config, args.adapter, "cpu")
    model.eval()
    chat = ChatFormat(tokenizer)
    no_id = tokenizer.encode("No", add_special_tokens=False)[0]
    groups: dict[str, list[float]] = {"noise_replaced": [], "other": []}
    for line in args.episodes.read_text(encoding="utf-8").splitlines():
        episode = json.loads(line)
        messages = episode["messages"]
        if len(messages) < 4 or messages[3]["role"] != "user":  # no search results to read
            continue
        ids = torch.tensor([chat.encode(chat.render(messages[:4], add_generation_prompt=True) + "<think>")])
        with torch.no_grad():
            probability = torch.softmax(model(ids).logits[0, -1].float(), -1)[no_id].item()
        replaced = bool(episode["searches"] and episode["searches"][0].get("before_noise"))
        groups["noise_replaced" if replaced else "other"].append(probability)
    entry = {
        "adapter": str(args.adapter), "episodes": str(args.episodes),
        **{name: {"episodes": len(p), "mean_p_no": round(sum(p) / len(p), 4) if p else None,
                  "max_p_no": round(max(p), 4) if p else None} for name, p in groups.items()},
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[str(args.adapter)] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(entry))


if __name__ == "__main__":
    main()
