"""Where the time of one RL step goes on CPU, fp32 vs bf16, with the real SmolLM2-135M-Instruct.

Run (from the project root):

    python3 benchmarks/rl_step.py                       # both trainers' CPU step shapes, 3 repetitions
    python3 benchmarks/rl_step.py --repeats 2 --threads 2 --trainers coaug

Both trainers are measured: ``coaug`` is a step of ``coaug-cpu`` (its query prompts, G samples of
at most 24 tokens); ``agent`` is the longest turn of an ``agent-cpu`` episode (the system prompt,
the question, one search and its two passages, then up to 64 answer tokens) for 2 questions x 8
episodes, the recipe's GRPO shape.

One co-augmentation step of ``configs/coaug-cpu`` is: sampling ``samples`` expansions for each of
``prompts`` prompts (real SciFact queries and documents, the recipe's prompts), then the policy
forward + backward over every prompt + completion with LoRA (TRL computes no extra log-prob pass
when ``num_iterations=1`` and ``beta=0``, as in the recipes), then the optimiser update. This
script times the three parts separately for the policy in float32 and in bfloat16, interleaved
(fp32, bf16, fp32, bf16, ...) so that a busy machine slows both alike, and reports:

* seconds and tokens/s per part, and completions trained per CPU-hour (median over repeats);
* the ratio bf16 / fp32 of completions per hour, measured side by side;
* how far the bf16 sampler's log-probabilities are from an fp32 forward over the same tokens
  (mean and max absolute difference per token) — what the importance ratio sees;
* the machine's matrix-product throughput (GFLOP/s, 2048² fp32 and bf16) and the model FLOPs of
  one step (2 × parameters × tokens forward, ×3 with backward), i.e. how far a step is from the
  FLOP limit.

Writes benchmarks/results/rl_step.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size**3 / seconds / 1e9


def step_prompts(prompts: int, samples: int) -> tuple[list, list[str]]:
    """The chats of one coaug-cpu step: each query prompt (and, in mode coaug, its group's document prompts)."""
    from searchrl.coaug.config import CoAugConfig
    from searchrl.config import load_config
    from searchrl.data.beir import load_beir
    from searchrl.data.types import document_text
    from searchrl.paths import shared_data_dir

    config = load_config(CoAugConfig, "coaug-cpu", [f"data={shared_data_dir() / 'scifact'}"])
    policy = config.expansion_policy()
    data = load_beir(config.data, "train")
    query_ids = list(data.queries)[:prompts]
    chats, roles = [], []
    docs = iter(data.corpus.values())
    group = config.batch.group_size
    for query_id in query_ids:
        if len(chats) >= prompts:
            break
        chats.append(policy.prompt("query", data.queries[query_id]))
        roles.append("query")
        if config.mode == "query":
            continue  # coaug-cpu expands queries only: documents enter the pool as they are
        for _ in range(group - 1):
            if len(chats) >= prompts:
                break
            chats.append(policy.prompt("document", document_text(next(docs))))
            roles.append("document")
    return chats, roles, config


def agent_prompts(prompts: int) -> list:
    """The chats of the answer turn of ``prompts`` agent-cpu episodes: question, a search, its passages."""
    from searchrl.agent.config import load_agent_config
    from searchrl.agent.protocol import SYSTEM_PROMPT, format_information, user_prompt
    from searchrl.agent.tool import build_search_tool
    from searchrl.data.beir import load_corpus
    from searchrl.data.qa import load_qa
    from searchrl.paths import shared_data_dir

    config = load_agent_config("agent-cpu")
    data = shared_data_dir() / "apollo13"
    corpus = load_corpus(data / "corpus.jsonl")
    tool = build_search_tool(corpus, config.tool)
    chats = []
    for example in load_qa(data / "questions.jsonl")[:prompts]:
        query = " ".join(example.question.split()[:6])
        information = format_information(tool.search(query).text)
        chats.append([
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(example.question)},
            {"role": "assistant", "content": f"<search>{query}</search>"},
            {"role": "user", "content": information},
        ])
    return chats


def completion_logprobs(model, ids, mask, width: int):
    """Log-probabilities of the completion tokens, without materialising a full-vocabulary log-softmax copy."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, width - 1 : -1]
    picked = logits.gather(-1, ids[:, width:, None]).squeeze(-1).float()
    return picked - torch.logsumexp(logits.float(), dim=-1)


def prompt_tokens(tokenizer, chats) -> list[int]:
    """Tokens of each chat as the trainer renders it."""
    from searchrl.llm.engine import render_chat

    return [len(tokenizer(render_chat(tokenizer, chat), add_special_tokens=False)["input_ids"]) for chat in chats]


def one_step(model, tokenizer, chats, samples: int, max_new_tokens: int, optimizer, micro_batch: int = 8) -> dict[str, float]:
    from searchrl.coaug.dataset import render_training_prompt

    texts = [render_training_prompt(tokenizer, chat) for chat in chats]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    # generation: every prompt `samples` times, one generate call (as TRL's transformers path)
    start = time.perf_counter()
    with torch.no_grad():
        generated = model.generate(
            input_ids=batch["input_ids"].repeat_interleave(samples, 0),
            attention_mask=batch["attention_mask"].repeat_interleave(samples, 0),
            do_sample=True, temperature=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )
    generation = time.perf_counter() - start
    attention = (generated != tokenizer.pad_token_id).long()
    attention[:, : batch["input_ids"].shape[1]] = batch["attention_mask"].repeat_interleave(samples, 0)
    completion_tokens = int(attention[:, batch["input_ids"].shape[1]:].sum())
    # policy forward + backward (token-mean surrogate on completion tokens), in micro-batches
    start = time.perf_counter()
    width = batch["input_ids"].shape[1]
    for chunk in range(0, generated.shape[0], micro_batch):
        ids, mask = generated[chunk : chunk + micro_batch], attention[chunk : chunk + micro_batch]
        logps = completion_logprobs(model, ids, mask, width)
        loss = -(logps * mask[:, width:]).sum() / mask[:, width:].sum()
        loss.backward()
    backward = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad()
    update = time.perf_counter() - start
    tokens = int(attention.sum())
    return {
        "generation_s": generation, "forward_backward_s": backward, "update_s": update,
        "completions": generated.shape[0], "completion_tokens": completion_tokens, "sequence_tokens": tokens,
    }


def logprob_gap(model_bf16, model_fp32, tokenizer, chats) -> dict[str, float]:
    """Per-token |log p_bf16 - log p_fp32| over greedy completions of the bf16 model."""
    from searchrl.coaug.dataset import render_training_prompt

    texts = [render_training_prompt(tokenizer, chat) for chat in chats[:8]]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        ids = model_bf16.generate(**batch, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id)
        mask = (ids != tokenizer.pad_token_id).long()
        mask[:, :width] = batch["attention_mask"]
        gaps = []
        for model in (model_bf16, model_fp32):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, width - 1 : -1].float()
            gaps.append(torch.log_softmax(logits, -1).gather(-1, ids[:, width:, None]).squeeze(-1))
    diff = (gaps[0] - gaps[1]).abs()[mask[:, width:].bool()]
    return {"mean_abs": float(diff.mean()), "max_abs": float(diff.max()), "tokens": int(diff.numel())}


def measure(models, optimizers, tokenizer, chats, samples: int, max_new_tokens: int, repeats: int,
            micro_batch: int = 8) -> dict:
    """Median seconds of each part of a step, fp32 and bf16 interleaved, and what they buy."""
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for name in ("fp32", "bf16"):
            runs[name].append(
                one_step(models[name], tokenizer, chats, samples, max_new_tokens, optimizers[name], micro_batch)
            )
    parameters = sum(p.numel() for p in models["fp32"].parameters())
    result: dict = {"step": {"prompts": len(chats), "samples_per_prompt": samples, "max_new_tokens": max_new_tokens}}
    for name, steps in runs.items():
        median = {key: statistics.median(step[key] for step in steps) for key in steps[0]}
        total = median["generation_s"] + median["forward_backward_s"] + median["update_s"]
        flops = 2 * parameters * median["sequence_tokens"] * 3  # forward + backward, a rough bound
        result[name] = {
            **{key: round(value, 3) for key, value in median.items()},
            "step_s": round(total, 3),
            "generated_tokens_per_s": round(median["completion_tokens"] / median["generation_s"], 1),
            "trained_tokens_per_s": round(median["sequence_tokens"] / median["forward_backward_s"], 1),
            "completions_per_cpu_hour": round(3600 * median["completions"] / total, 1),
            "forward_backward_gflops_achieved": round(flops / median["forward_backward_s"] / 1e9, 1),
        }
    result["bf16_over_fp32_completions_per_hour"] = round(
        result["bf16"]["completions_per_cpu_hour"] / result["fp32"]["completions_per_cpu_hour"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", default="coaug,agent", help="comma-separated: coaug, agent")
    parser.add_argument("--prompts", type=int, default=4, help="coaug: expanded query prompts per step (coaug-cpu: 4)")
    parser.add_argument("--samples", type=int, default=6, help="coaug: samples per prompt (coaug-cpu: 6)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchrl.resolver import resolve_model

    folder = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    chats, roles, config = step_prompts(args.prompts, args.samples)
    models, optimizers = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, target_modules="all-linear", task_type="CAUSAL_LM")
        models[name] = get_peft_model(base, lora)
        optimizers[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-5)

    gap = logprob_gap(models["bf16"], models["fp32"], tokenizer, chats)  # before training: same weights
    result: dict = {
        "model": MODEL,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "matmul_gflops": {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)},
        "parameters": sum(p.numel() for p in models["fp32"].parameters()),
        "logprob_gap_bf16_vs_fp32": gap,
    }
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    if "coaug" in trainers:
        result["coaug"] = measure(models, optimizers, tokenizer, chats, args.samples, args.max_new_tokens, args.repeats)
        result["coaug"]["step"]["roles"] = {r: roles.count(r) for r in set(roles)}
    if "agent" in trainers:
        agent_chats = agent_prompts(2)
        # agent-cpu trains 4 sequences per forward/backward (grpo.micro_batch_size)
        result["agent"] = measure(models, optimizers, tokenizer, agent_chats, 8, 64, args.repeats, micro_batch=4)
        result["agent"]["step"]["prompt_tokens"] = prompt_tokens(tokenizer, agent_chats)
    result["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rl_step.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
