"""Where the time of one RL step goes on CPU, and what bf16 and the trainer's savings buy, with the real
SmolLM2-135M-Instruct.

Run (from the project root):

    python3 benchmarks/rl_step.py                       # both trainers' CPU step shapes, 3 repetitions
    python3 benchmarks/rl_step.py --repeats 2 --threads 2 --trainers coaug

A step is timed as TRL 1.16's GRPOTrainer runs it: sampling the group's completions; with a KL
term, the reference pass (adapter off) over the step in order; the policy forward + backward over
the step's micro-batches, shuffled as TRL shuffles them; the optimiser update. Log-probabilities
come from TRL's fused LM head with entropies, as the trainer sets it up (off Triton devices, as
here, it projects every position onto the vocabulary and keeps the completion's). Shapes:

* ``coaug``: a step of ``coaug-cpu`` — 4 SciFact query prompts x 6 samples of at most 24 tokens,
  12 sequences per forward/backward, no KL (no reference pass).
* ``agent``: the answer turn of ``agent-cpu`` episodes — 4 Apollo 13 questions x 4 episodes; the
  prompt is the system prompt and question, the completion the search turn, its two passages
  (masked out of the loss) and up to 64 sampled answer tokens; 4 sequences per forward/backward;
  a reference pass (KL 0.04).

Four variants, interleaved (fp32, bf16, bf16_merge_share, bf16_fast, fp32, ...) so that a busy
machine slows all alike: ``fp32`` (the recipes before bf16), ``bf16`` (bf16 weights),
``bf16_merge_share`` (bf16 plus sampling with LoRA merged and each distinct prompt of a micro-batch
scored once: the recipes until now), ``bf16_fast`` (also micro-batches of whole groups instead of
shuffled rows, only the positions the loss reads projected onto the vocabulary and each
micro-batch cut after its longest row: all the savings of :mod:`searchrl.training.trainer`, what
the recipes run). ``--variants`` picks others (fp32 first), among them ``fp32_fast``: fp32 with every
saving, what the recipes run on a CPU without bf16 instructions. Reported:

* seconds and tokens/s per part, and completions trained per CPU-hour (median over repeats);
* each variant's completions per hour over fp32's, measured side by side;
* how far the bf16 trainer's and the bf16 merged sampler's log-probabilities are from fp32's over the
  same tokens (mean and max absolute difference per token): what the importance ratio sees;
* the machine's matrix-product throughput (GFLOP/s, 2048² fp32 and bf16) and the FLOPs a full
  pass over the step's tokens would take per second of forward/backward (an equivalent rate: the
  shared-prompt pass does fewer FLOPs, so it can exceed what the hardware does).

Writes benchmarks/results/rl_step.json (or ``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
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


def agent_prompts(prompts: int) -> tuple[list, list]:
    """The answer turn of ``prompts`` agent-cpu episodes: ``(chats, prompt_chats)``.

    ``chats`` hold the system prompt, the question, one search and its passages (what the model
    sees when it writes its answer); ``prompt_chats`` the system prompt and question only — TRL's
    *prompt* of an agent episode. The search turn and the passages belong to the completion (the
    passages masked out of the loss), so only the prompt is shared by a question's episodes.
    """
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
    chats, prompt_chats = [], []
    for example in load_qa(data / "questions.jsonl")[:prompts]:
        query = " ".join(example.question.split()[:6])
        information = format_information(tool.search(query).text)
        prompt = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_prompt(example.question)}]
        prompt_chats.append(prompt)
        chats.append([*prompt, {"role": "assistant", "content": f"<search>{query}</search>"},
                      {"role": "user", "content": information}])
    return chats, prompt_chats


def padded(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on ``side`` with TRL's own helper, and their attention mask."""
    from trl.trainer.utils import pad

    tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
    return pad(tensors, pad_id, side), pad([torch.ones_like(t) for t in tensors], 0, side)


def trl_logprobs(model, ids, mask, keep: int, savings: frozenset, scored):
    """Per-token log-probabilities of one micro-batch: TRL 1.16's pass (its fused LM head), or the
    trainer's: each distinct prompt once (``share``), and, with ``score``, only the ``scored``
    positions projected onto the vocabulary and the micro-batch cut after its longest row."""
    from searchrl.training.trainer import completion_logprobs, shared_prompt_logprobs

    if "score" in savings:
        return completion_logprobs(model, ids, mask, keep, scored=scored, share_prompt="share" in savings)[0]
    if "share" in savings:
        shared = shared_prompt_logprobs(model, ids, mask, keep)
        if shared is not None:
            return shared[0]
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -keep:]


def one_step(model, tokenizer, shape: dict, samples: int, max_new_tokens: int, optimizer, *, micro_batch: int,
             savings: frozenset, reference_pass: bool, seed: int) -> dict[str, float]:
    """One RL step as TRL runs it: sample; (with KL) the reference pass over the step in order; then the
    policy forward + backward over TRL's shuffled micro-batches; the update. ``savings``: those of
    ``searchrl.training.trainer`` to use — ``merge`` (sampling with LoRA merged), ``share`` (each
    distinct prompt of a micro-batch once), ``group`` (micro-batches of whole groups, not TRL's
    shuffled rows), ``score`` (only the positions the loss reads)."""
    from searchrl.training.trainer import merged_lora

    pad = tokenizer.pad_token_id
    prompts = [row for row in shape["prompt_ids"] for _ in range(samples)]
    contexts = [row for row in shape["context_ids"] for _ in range(samples)]  # completion tokens before sampling
    ids, mask = padded([p + c for p, c in zip(prompts, contexts)], pad, "left")
    start = time.perf_counter()
    with torch.no_grad(), (merged_lora(model) if "merge" in savings else contextlib.nullcontext()):
        generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                   max_new_tokens=max_new_tokens, pad_token_id=pad)
    generation = time.perf_counter() - start
    new = []
    for row in generated[:, ids.shape[1]:].tolist():
        tokens = []
        for token in row:
            tokens.append(token)
            if token == tokenizer.eos_token_id:
                break
        new.append(tokens)
    prompt_ids, prompt_mask = padded(prompts, pad, "left")
    completion_ids, completion_mask = padded([c + n for c, n in zip(contexts, new)], pad, "right")
    input_ids, attention = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    keep = completion_ids.shape[1]
    loss_mask = completion_mask.clone()
    for i, context in enumerate(contexts):
        loss_mask[i, : len(context)] = 0  # tool results and earlier turns: TRL's env mask
    start = time.perf_counter()
    if reference_pass:  # beta > 0: the starting policy (adapter off) over the whole step, in order
        with torch.no_grad(), model.disable_adapter():
            for chunk in range(0, input_ids.shape[0], micro_batch):
                rows = slice(chunk, chunk + micro_batch)
                trl_logprobs(model, input_ids[rows], attention[rows], keep, savings, loss_mask[rows])
    reference = time.perf_counter() - start
    if "group" in savings:  # the trainer keeps each prompt's samples side by side
        order = torch.arange(input_ids.shape[0])
    else:  # TRL shuffles the step
        order = torch.randperm(input_ids.shape[0], generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for chunk in range(0, input_ids.shape[0], micro_batch):
        rows = order[chunk : chunk + micro_batch]
        logps = trl_logprobs(model, input_ids[rows], attention[rows], keep, savings, loss_mask[rows])
        loss = -(logps * loss_mask[rows]).sum() / loss_mask[rows].sum().clamp(min=1)
        loss.backward()
    backward = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad()
    update = time.perf_counter() - start
    return {
        "generation_s": generation, "reference_pass_s": reference, "forward_backward_s": backward, "update_s": update,
        "completions": input_ids.shape[0], "completion_tokens": sum(len(n) for n in new),
        "sequence_tokens": int(attention.sum()),
    }


def logprob_gap(models, tokenizer, chats) -> dict[str, dict[str, float]]:
    """Per-token |log p - log p_fp32 trainer| over greedy completions of the bf16 model, for the
    bf16 trainer (adapter live) and the bf16 sampler with the adapter merged — what the importance
    ratio and the sampling distribution see. The adapters get the same non-zero B first, so the
    merge has something to round."""
    from searchrl.coaug.dataset import render_training_prompt
    from searchrl.training.trainer import merged_lora

    generator = torch.Generator().manual_seed(3)
    for model in models.values():
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.002)
    texts = [render_training_prompt(tokenizer, chat) for chat in chats[:8]]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]

    def logps(model):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, width - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, width:, None]).squeeze(-1)

    with torch.no_grad():
        ids = models["bf16"].generate(**batch, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id)
        mask = (ids != tokenizer.pad_token_id).long()
        mask[:, :width] = batch["attention_mask"]
        exact = logps(models["fp32"])
        trainer = logps(models["bf16"])
        with merged_lora(models["bf16"]):
            sampler = logps(models["bf16"])
        for model in models.values():  # back to a fresh adapter
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.zero_()
    real = mask[:, width:].bool()

    def gap(a, b):
        diff = (a - b).abs()[real]
        return {"mean_abs": float(diff.mean()), "max_abs": float(diff.max()), "tokens": int(diff.numel())}

    return {"bf16_trainer_vs_fp32": gap(trainer, exact), "bf16_merged_sampler_vs_fp32": gap(sampler, exact),
            "bf16_merged_sampler_vs_bf16_trainer": gap(sampler, trainer)}


VARIANTS = {  # name: (weights, the trainer's savings)
    "fp32": ("fp32", frozenset()),
    "bf16": ("bf16", frozenset()),
    "bf16_merge_share": ("bf16", frozenset({"merge", "share"})),
    "bf16_fast": ("bf16", frozenset({"merge", "share", "group", "score"})),
    # fp32 with every saving: what the recipes run where the CPU has no native bf16 (precision: auto)
    "fp32_fast": ("fp32", frozenset({"merge", "share", "group", "score"})),
}
DEFAULT_VARIANTS = ("fp32", "bf16", "bf16_merge_share", "bf16_fast")


def measure(models, optimizers, tokenizer, shape: dict, samples: int, max_new_tokens: int, repeats: int, *,
            micro_batch: int, reference_pass: bool, variants: tuple[str, ...] = DEFAULT_VARIANTS) -> dict:
    """Median seconds of each part of a step for each variant, interleaved, and what they buy."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name in variants:
            weights, savings = VARIANTS[name]
            torch.manual_seed(repeat)
            runs[name].append(one_step(models[weights], tokenizer, shape, samples, max_new_tokens, optimizers[weights],
                                       micro_batch=micro_batch, savings=savings, reference_pass=reference_pass,
                                       seed=repeat))
    parameters = sum(p.numel() for p in models["fp32"].parameters())
    result: dict = {"step": {"prompts": len(shape["prompt_ids"]), "samples_per_prompt": samples,
                             "max_new_tokens": max_new_tokens, "micro_batch": micro_batch,
                             "reference_pass": reference_pass,
                             "prompt_tokens": [len(p) for p in shape["prompt_ids"]],
                             "completion_context_tokens": [len(c) for c in shape["context_ids"]]}}
    for name, steps in runs.items():
        median = {key: statistics.median(step[key] for step in steps) for key in steps[0]}
        total = median["generation_s"] + median["reference_pass_s"] + median["forward_backward_s"] + median["update_s"]
        flops = 2 * parameters * median["sequence_tokens"] * 3  # full-pass forward + backward, a rough bound
        result[name] = {
            **{key: round(value, 3) for key, value in median.items()},
            "step_s": round(total, 3),
            "generated_tokens_per_s": round(median["completion_tokens"] / median["generation_s"], 1),
            "trained_tokens_per_s": round(median["sequence_tokens"] / median["forward_backward_s"], 1),
            "completions_per_cpu_hour": round(3600 * median["completions"] / total, 1),
            "forward_backward_gflops_equivalent": round(flops / median["forward_backward_s"] / 1e9, 1),
        }
    for name in variants:
        if name != "fp32":
            result[f"{name}_over_fp32_completions_per_hour"] = round(
                result[name]["completions_per_cpu_hour"] / result["fp32"]["completions_per_cpu_hour"], 2
            )
    return result


def token_shape(tokenizer, chats, prompt_chats=None) -> dict:
    """Prompt ids (what a group shares) and completion ids before sampling, as the trainers tokenise them."""
    from searchrl.coaug.dataset import render_training_prompt
    from searchrl.llm.engine import render_chat

    if prompt_chats is None:  # co-augmentation: the whole chat is the prompt
        prompt_ids = [tokenizer(render_training_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]
        return {"prompt_ids": prompt_ids, "context_ids": [[] for _ in chats]}
    shape: dict = {"prompt_ids": [], "context_ids": []}
    for chat, prompt in zip(chats, prompt_chats):
        full = tokenizer(render_chat(tokenizer, chat), add_special_tokens=False)["input_ids"]
        head = tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if full[: len(head)] != head:
            raise SystemExit("the chat template does not render the prompt as a prefix of the episode")
        shape["prompt_ids"].append(head)
        shape["context_ids"].append(full[len(head):])
    return shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", default="coaug,agent", help="comma-separated: coaug, agent")
    parser.add_argument("--prompts", type=int, default=4, help="coaug: expanded query prompts per step (coaug-cpu: 4)")
    parser.add_argument("--samples", type=int, default=6, help="coaug: samples per prompt (coaug-cpu: 6)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, fp32 first (the baseline of every ratio): {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "rl_step.json", help="where the JSON goes")
    args = parser.parse_args()
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or variants[0] != "fp32" or len(set(variants)) != len(variants):
        parser.error(f"--variants {args.variants!r}: list fp32 first, then any of {', '.join(v for v in VARIANTS if v != 'fp32')}"
                     f" once each{' (unknown: ' + ', '.join(unknown) + ')' if unknown else ''}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from searchrl.resolver import resolve_model
    from searchrl.runs import machine_info

    folder = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    chats, roles, config = step_prompts(args.prompts, args.samples)
    models, optimizers = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        # as GRPOTrainer does: entropies too (its metric); off Triton devices it projects every position
        add_fused_lm_head(base, outputs=("log_probs", "entropy"))
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, target_modules="all-linear", task_type="CAUSAL_LM")
        models[name] = get_peft_model(base, lora)
        optimizers[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-5)

    gap = logprob_gap(models, tokenizer, chats)
    result: dict = {
        "model": MODEL,
        "machine": {**machine_info(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_1min_at_start": os.getloadavg()[0]},
        "matmul_gflops": {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)},
        "parameters": sum(p.numel() for p in models["fp32"].parameters()),
        "logprob_gap": gap,
        "variants": {"fp32": "float32 weights, sampling through the adapter, TRL's full pass (the recipes before bf16)",
                     "bf16": "bfloat16 weights, otherwise the same",
                     "bf16_merge_share": "bfloat16 weights, LoRA merged for sampling, each distinct prompt scored "
                                         "once",
                     "bf16_fast": "bf16_merge_share with micro-batches of whole groups, only the positions the "
                                  "loss reads projected onto the vocabulary and each micro-batch cut after its "
                                  "longest row (searchrl.training.trainer, the recipes' default)",
                     "fp32_fast": "float32 weights with every saving of bf16_fast: what the recipes run where the "
                                  "CPU has no native bf16 (precision: auto)"},
    }
    result["variants"] = {name: result["variants"][name] for name in variants}
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    if "coaug" in trainers:
        # coaug-cpu: 4 query prompts x 6 samples, 12 sequences per forward/backward, no KL
        result["coaug"] = measure(models, optimizers, tokenizer, token_shape(tokenizer, chats), args.samples,
                                  args.max_new_tokens, args.repeats, micro_batch=12, reference_pass=False,
                                  variants=variants)
        result["coaug"]["step"]["roles"] = {r: roles.count(r) for r in set(roles)}
    if "agent" in trainers:
        # agent-cpu: 4 questions x 4 episodes, 4 sequences per forward/backward, KL to the warm-start
        agent_chats, agent_prompt_chats = agent_prompts(4)
        result["agent"] = measure(models, optimizers, tokenizer, token_shape(tokenizer, agent_chats, agent_prompt_chats),
                                  4, 64, args.repeats, micro_batch=4, reference_pass=True, variants=variants)
    result["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
