"""Co-augmentation training: one policy expands queries and documents, trained with GRPO (TRL).

How one RL step maps onto TRL's ``GRPOTrainer`` (checked against TRL 1.16's source):

* **One generation batch = one step.** The training dataset is laid out step by step — step
  ``s`` occupies rows ``s·P … s·P+P-1`` with the ``P`` expanded prompts of
  ``CoAugBatchBuilder.build(s)`` — and is not shuffled. TRL's ``RepeatSampler`` then yields
  each chunk of ``generation_batch_size / num_generations = P`` consecutive rows, each row
  ``G`` times in a row, and the trainer generates and scores that whole chunk in one reward
  call. :class:`CoAugReward` checks this on every call (one step id, every prompt of the step
  exactly ``G`` times) and raises otherwise, because the entangled reward is meaningless on a
  partial step.
* **Advantages.** With ``scale_rewards="none"`` TRL computes ``advantage = r − mean(r of the
  prompt's G samples)``. Every sample of a group shares its prompt's role, so returning
  ``role_scale × r`` gives exactly ``role_scale × (r − mean)`` — the CoAug advantage (×1
  query, ×0.2 relevant document, ×0.1 negative document) — with no trainer subclass. A sample
  without a reward (a document sample never drawn into a pool) is returned as ``None``: TRL
  leaves it out of the group mean and gives it advantage 0, as
  :func:`searchrl.coaug.advantages.group_advantages` does.
* **Loss.** PPO clipped surrogate with ``epsilon=0.2, epsilon_high=0.28`` (range [0.8, 1.28]),
  token-mean (``loss_type="dapo"``), grad clip 1.0, optional KL ``beta`` (0 = no reference model).
* **Single process.** In multi-process training TRL calls each reward function on its own
  shard of the batch, so the in-batch pool would be split; training refuses more than one
  process (use one GPU, with vLLM colocated for fast rollouts).

Everything else — run directory, resume, dev evaluation and best checkpoint — comes from
:mod:`searchrl.runs` and :mod:`searchrl.training`. The best checkpoint ``RUN/best`` is a LoRA
adapter folder (or a full model) that ``searchrl augment --model RUN/best`` loads directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from searchrl.augment import ExpansionPolicy
from searchrl.coaug.advantages import AdvantageScales
from searchrl.coaug.batch import CoAugBatch, CoAugBatchBuilder
from searchrl.coaug.bm25 import CorpusStatistics
from searchrl.coaug.evaluate import BatchScorer, DevEvaluator, top_documents_per_query
from searchrl.coaug.reward import group_spread_metrics, merge_duplicate_documents, sampled_ndcg_rewards
from searchrl.config import load_config
from searchrl.data.types import Document, document_text, query_text
from searchrl.errors import ConfigError, DataError
from searchrl.llm.precision import Precision
from searchrl.resolver import DEFAULT_ENCODER, DEFAULT_LLM
from searchrl.runs import RunDirectory
from searchrl.training import (
    DevEvaluationCallback,
    LoraSettings,
    RunLoggingCallback,
    build_grpo_config,
    build_lora_config,
    load_policy,
    quiet_trainer,
    resolve_device,
    train_with_resume,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchSettings(_Section):
    """Composite sampling per step (CoAug's letters in brackets)."""

    queries_per_step: int = Field(32, ge=1, description="B: query groups per step")
    group_size: int = Field(16, ge=2, description="H: prompts per group, the query included")
    relevant_per_query: int = Field(5, ge=1, description="P: relevant documents per group (drawn with replacement)")
    hard_negatives: int = Field(0, ge=0, description="M: hard negatives per group (top unexpanded-BM25 non-relevant)")
    hard_negative_depth: int = Field(30, ge=1, description="hard negatives are drawn from this many top results")
    background: int = Field(
        0, ge=0,
        description="per query, its top-N unexpanded-BM25 documents over the whole corpus join every pool "
        "unexpanded (0: in-batch documents only, as CoAug)",
    )
    samples_per_prompt: int = Field(5, ge=2, description="G: sampled expansions per prompt (the GRPO group)")
    micro_batch_size: int | None = Field(None, ge=1, description="completions per forward/backward pass")
    updates_per_step: int = Field(1, ge=1, description="optimiser updates per step (CoAug: 4)")


class RewardSettings(_Section):
    rounds: int = Field(512, ge=1, description="T: sampled pools per step")
    k: int = Field(10, ge=1, description="nDCG cut-off")
    relevant_weight: float = Field(10.0, ge=0.0, description="w: document weight 1 + w·relevance on its own query")
    ties: Literal["pessimistic", "index"] = "pessimistic"
    merge_duplicates: bool = Field(
        True, description="a document drawn several times in a step is one pool slot (CoAug); false: one slot per draw"
    )
    unseen_terms: Literal["zero", "rare"] = Field(
        "zero", description="IDF of a query word no corpus document contains: zero (CoAug) or that of a df=1 word"
    )
    bm25_k1: float = 1.2
    bm25_b: float = 0.75


class RoleScales(_Section):
    query: float = Field(1.0, ge=0.0)
    relevant_document: float = Field(0.2, ge=0.0)
    negative_document: float = Field(0.1, ge=0.0)


class OptimSettings(_Section):
    steps: int = Field(300, ge=1, description="RL steps")
    learning_rate: float = Field(1e-5, gt=0.0)
    lr_scheduler: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    epsilon: float = Field(0.2, ge=0.0, description="clip low: ratio >= 1 - epsilon")
    epsilon_high: float = Field(0.28, ge=0.0, description="clip high: ratio <= 1 + epsilon_high")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient (0: no reference model)")
    max_grad_norm: float = Field(1.0, gt=0.0)
    num_iterations: int = Field(1, ge=1, description="passes over each generated batch")
    gradient_checkpointing: bool = False


class GenerationSettings(_Section):
    """Sampling of training rollouts (evaluation decodes greedily)."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    generation_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra sampling options passed to TRL (e.g. vLLM 'stop')"
    )


class ExpansionSettings(_Section):
    """What an expansion is (shared with ``searchrl augment`` through ExpansionPolicy)."""

    think: bool = False
    prefill: bool = Field(True, description="the prompt opens the answer (<answer>, or <think> when thinking)")
    max_words: int = Field(64, ge=1)
    max_input_words: int | None = Field(256, ge=1)
    lenient: bool = False


class EvalSettings(_Section):
    every: int = Field(10, ge=1, description="evaluate dev every N steps")
    max_queries: int | None = Field(100, ge=1, description="dev queries evaluated (None: all)")
    candidate_docs: int | None = Field(
        500, ge=1, description="documents in the evaluation slice (None: the whole corpus)"
    )
    candidate_depth: int = Field(20, ge=0, description="top unexpanded results per dev query put in the slice")
    expand_depth: int | None = Field(
        None, ge=1,
        description="expand only the union of each dev query's top-N unexpanded results; other documents are "
        "ranked unexpanded (None: expand every document ranked)",
    )
    batch_size: int = Field(16, ge=1, description="prompts per generation call during evaluation")
    patience: int | None = Field(None, ge=1, description="stop after N evaluations without improvement")
    at_start: bool = Field(True, description="evaluate the untrained policy at step 0")


class CoAugConfig(_Section):
    """One co-augmentation training run (YAML + ``--set key=value`` overrides)."""

    model: str = Field(DEFAULT_LLM, description="policy model: name, folder or .gguf")
    data: str = Field(..., description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    train_split: str = "train"
    dev_split: str = "dev"
    max_train_queries: int | None = Field(None, ge=1, description="use only this many training queries (seeded)")
    mode: Literal["query", "document", "coaug"] = "coaug"
    retriever: Literal["sparse", "dense"] = "sparse"
    dense_model: str = Field(DEFAULT_ENCODER, description="encoder for retriever: dense")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    role_scales: RoleScales = Field(default_factory=RoleScales)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    expansion: ExpansionSettings = Field(default_factory=ExpansionSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    save_every: int = Field(10, ge=1, description="checkpoint every N steps (resume point)")
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = Field(
        "auto", description="policy weights: bf16 where the hardware multiplies it natively (see searchrl.llm.precision)"
    )
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="rollout engine: vllm (colocated) when a GPU and vllm are present under auto"
    )
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    output_dir: str = "runs/coaug"
    wandb_project: str | None = Field(None, description="also log metrics to this Weights & Biases project")

    @model_validator(mode="after")
    def _check_group(self) -> "CoAugConfig":
        b = self.batch
        if b.group_size < 1 + b.relevant_per_query + b.hard_negatives:
            raise ValueError(
                f"batch.group_size {b.group_size} cannot hold the query, {b.relevant_per_query} relevant "
                f"documents and {b.hard_negatives} hard negatives"
            )
        return self

    def expansion_policy(self) -> ExpansionPolicy:
        """The policy (prompts + parser) used in rollouts, rewards and evaluation."""
        e = self.expansion
        return ExpansionPolicy(
            retriever=self.retriever,
            think=e.think,
            prefill=e.prefill,
            max_words=e.max_words,
            max_input_words=e.max_input_words,
            lenient=e.lenient,
            sampling=ExpansionPolicy().sampling.model_copy(update={"max_new_tokens": self.generation.max_new_tokens}),
        )

    def prompts_per_step(self) -> int:
        """Expanded prompts per step: queries and/or documents depending on ``mode``."""
        b = self.batch
        queries = b.queries_per_step if self.mode in ("query", "coaug") else 0
        documents = b.queries_per_step * (b.group_size - 1) if self.mode in ("document", "coaug") else 0
        return queries + documents


#: Config keys that may change when a run is resumed (extending or re-scheduling training).
RESUMABLE_KEYS = (
    "optim.steps", "eval.every", "eval.patience", "save_every", "keep_checkpoints", "output_dir", "wandb_project"
)


# --------------------------------------------------------------------------------------
# data and dataset layout
# --------------------------------------------------------------------------------------


@dataclass
class CoAugData:
    """Training and dev data of a run, loaded once."""

    corpus: dict[str, Document]
    train_queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    dev_queries: dict[str, str]
    dev_qrels: dict[str, dict[str, int]]
    files: list[Path] = field(default_factory=list)


def load_coaug_data(config: CoAugConfig) -> CoAugData:
    """Load the BEIR folder's corpus, training split and dev split named in ``config``."""
    from searchrl.data.beir import load_beir, qrels_path
    from searchrl.data.io import resolve_data_file

    train = load_beir(config.data, config.train_split)
    dev = load_beir(config.data, config.dev_split)
    overlap = set(train.queries) & set(dev.queries)
    if overlap:
        raise DataError(
            f"{len(overlap)} queries are in both the {config.train_split} and {config.dev_split} qrels, "
            f"e.g. {sorted(overlap)[0]!r}",
            path=config.data,
            hint="split the queries so dev is held out",
        )
    queries = train.queries
    if config.max_train_queries is not None and config.max_train_queries < len(queries):
        rng = np.random.default_rng(config.seed)
        ids = list(queries)
        keep = sorted(rng.choice(len(ids), size=config.max_train_queries, replace=False))
        queries = {ids[i]: queries[ids[i]] for i in keep}
    files = [
        resolve_data_file(config.data, "corpus.jsonl"),
        resolve_data_file(config.data, "queries.jsonl"),
        qrels_path(config.data, config.train_split),
        qrels_path(config.data, config.dev_split),
    ]
    return CoAugData(train.corpus, queries, train.qrels, dev.queries, dev.qrels, files)


def render_training_prompt(tokenizer: Any, chat: Sequence[Mapping[str, str]]) -> str:
    """``chat`` as prompt text for TRL, tokenising to exactly the ids the generation engines use.

    TRL 1.16 renders a conversational prompt with ``add_generation_prompt=True`` whatever its
    last message, so the ``<answer>`` prefill would be closed and followed by a fresh assistant
    turn. Rows therefore carry the prompt already rendered the way
    :meth:`searchrl.llm.transformers_engine.TransformersEngine.encode_chat` and the vLLM engine
    render it (a final assistant message is continued, otherwise the assistant turn is opened),
    and TRL only tokenises the text, with the tokenizer's special tokens added: a
    beginning-of-sequence token that the template already wrote is taken off the text when the
    tokenizer would add it again.
    """
    messages = [dict(message) for message in chat]
    continue_last = messages[-1]["role"] == "assistant"
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not continue_last, continue_final_message=continue_last
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        added = tokenizer("", add_special_tokens=True)["input_ids"]
        if added and added[0] == tokenizer.bos_token_id:
            text = text[len(bos):]
    return text


def check_training_prompt(tokenizer: Any, chat: Sequence[Mapping[str, str]], text: str) -> None:
    """Raise :class:`~searchrl.errors.ModelError` unless TRL's tokenisation of ``text`` equals the engine's of ``chat``."""
    from searchrl.errors import ModelError

    messages = [dict(message) for message in chat]
    continue_last = messages[-1]["role"] == "assistant"
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not continue_last, continue_final_message=continue_last
    )
    engine_ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    trainer_ids = list(tokenizer(text)["input_ids"])
    if engine_ids != trainer_ids:
        raise ModelError(
            f"training would see a different prompt than generation ({len(trainer_ids)} vs {len(engine_ids)} tokens)",
            hint="this tokenizer adds special tokens the chat template does not expect; set expansion.prefill=false",
        )


def step_rows(batch: CoAugBatch, policy: ExpansionPolicy, render: Any = None) -> list[dict[str, Any]]:
    """Dataset rows of one step: its expanded prompts, in batch order, with the reward's columns.

    Columns: ``prompt`` (the chat, or the text ``render(chat)`` returns — see
    :func:`render_training_prompt`), ``step``, ``prompt_index`` (position in the step),
    ``role``, ``kind``, ``item_id``, ``group``.
    """
    return [
        {
            "prompt": policy.prompt(item.role, item.text) if render is None else render(policy.prompt(item.role, item.text)),
            "step": batch.step,
            "prompt_index": index,
            "role": item.role,
            "kind": item.kind,
            "item_id": item.item_id,
            "group": item.group,
        }
        for index, item in enumerate(batch.prompts)
    ]


def build_step_dataset(builder: CoAugBatchBuilder, policy: ExpansionPolicy, steps: int, tokenizer: Any = None):
    """A ``datasets.Dataset`` holding ``steps`` steps back to back (read in order, never shuffled).

    With ``tokenizer`` the prompts are rendered text (:func:`render_training_prompt`), checked
    on the first step to tokenise exactly as the generation engines tokenise the chats.
    """
    from datasets import Dataset

    render = None if tokenizer is None else (lambda chat: render_training_prompt(tokenizer, chat))
    rows: list[dict[str, Any]] = []
    for step in range(steps):
        rows.extend(step_rows(builder.build(step), policy, render))
    if tokenizer is not None and rows:
        first = builder.build(0).prompts
        for item, row in list(zip(first, rows))[:4]:
            check_training_prompt(tokenizer, policy.prompt(item.role, item.text), row["prompt"])
    return Dataset.from_list(rows)


# --------------------------------------------------------------------------------------
# the reward
# --------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


@dataclass
class RewardCall:
    """What the last reward call computed (for logging and tests)."""

    step: int
    raw_rewards: np.ndarray  # per completion, before role scaling (NaN = no reward)
    scaled_rewards: np.ndarray  # what TRL received (NaN for None)
    prompt_of_completion: np.ndarray  # the step's prompt index of each completion
    prompt_kinds: list[str]  # kind of each of the step's prompts
    expansions: list[str]
    metrics: dict[str, float]


class CoAugReward:
    """TRL reward function for one whole co-augmentation step (the entangled, sampled nDCG reward).

    Called by TRL with all ``P × G`` completions of a step and the dataset columns of
    :func:`step_rows`. It rebuilds the step's batch from ``builder`` (deterministic per step),
    parses each completion with the :class:`~searchrl.augment.ExpansionPolicy`, appends the
    expansions with :func:`~searchrl.data.query_text` / :func:`~searchrl.data.document_text`,
    scores every query sample against every document sample, draws ``rounds`` pools with
    :func:`~searchrl.coaug.reward.sampled_ndcg_rewards`, and returns ``role_scale × reward``
    per completion (``None`` for a document sample never drawn).

    >>> from searchrl.data import Document
    >>> from searchrl.augment import ExpansionPolicy
    >>> corpus = {f"d{i}": Document(f"d{i}", f"filler text number {i}") for i in range(6)}
    >>> corpus["d0"] = Document("d0", "vitamin d deficiency and bone fractures")
    >>> builder = CoAugBatchBuilder(corpus, {"q1": "vitamin d bone"}, {"q1": {"d0": 1}}, mode="query",
    ...                             queries_per_step=1, group_size=3, relevant_per_query=1)
    >>> reward = CoAugReward(builder, ExpansionPolicy(), BatchScorer("sparse",
    ...     statistics=CorpusStatistics.from_documents(corpus.values())), samples_per_prompt=2, rounds=4)
    >>> reward(prompts=[None, None], completions=[" fracture</answer>", " bone fracture"],
    ...        step=[0, 0], prompt_index=[0, 0], role=["query"] * 2, kind=["query"] * 2,
    ...        item_id=["q1", "q1"], group=[0, 0])
    [1.0, 1.0]
    """

    __name__ = "coaug_ndcg"

    def __init__(
        self,
        builder: CoAugBatchBuilder,
        policy: ExpansionPolicy,
        scorer: BatchScorer,
        *,
        samples_per_prompt: int,
        rounds: int = 512,
        k: int = 10,
        relevant_weight: float = 10.0,
        ties: str = "pessimistic",
        scales: AdvantageScales = AdvantageScales(),
        merge_duplicates: bool = True,
        seed: int = 0,
    ) -> None:
        self.builder = builder
        self.merge_duplicates = merge_duplicates
        self.policy = policy
        self.scorer = scorer
        self.samples_per_prompt = samples_per_prompt
        self.rounds = rounds
        self.k = k
        self.relevant_weight = relevant_weight
        self.ties = ties
        self.scales = scales
        self.seed = seed
        self.last: RewardCall | None = None
        self.calls = 0

    # -- layout checks -------------------------------------------------------------------
    def _check_layout(self, batch: CoAugBatch, step: int, prompt_index: np.ndarray, item_id: Sequence[str]) -> None:
        prompts = batch.prompts
        G = self.samples_per_prompt
        expected = np.repeat(np.arange(len(prompts)), G)
        if len(prompt_index) != len(expected) or not np.array_equal(np.sort(prompt_index), expected):
            counts = np.bincount(prompt_index, minlength=len(prompts))
            raise ConfigError(
                f"the reward call for step {step} got {len(prompt_index)} completions covering "
                f"{int((counts > 0).sum())} of the step's {len(prompts)} prompts (expected every prompt exactly "
                f"{G} times)",
                hint="one generation batch must be exactly one step: generation_batch_size = prompts × "
                "samples_per_prompt, shuffle_dataset false, a single process",
            )
        for index, given in zip(prompt_index, item_id):
            if prompts[index].item_id != given:
                raise ConfigError(
                    f"step {step} prompt {index} is {given!r} in the dataset but {prompts[index].item_id!r} "
                    "when the batch is rebuilt",
                    hint="the training data or the batch settings changed since the dataset was built",
                )

    # -- the call ------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        *,
        step: Sequence[int],
        prompt_index: Sequence[int],
        item_id: Sequence[str],
        log_metric: Any = None,
        **_: Any,
    ) -> list[float | None]:
        steps = set(int(s) for s in step)
        if len(steps) != 1:
            raise ConfigError(
                f"one reward call mixes prompts of steps {sorted(steps)}",
                hint="one generation batch must be exactly one step (see searchrl.coaug.train)",
            )
        current = steps.pop()
        batch = self.builder.build(current)
        prompt_of_completion = np.asarray(prompt_index, dtype=np.int64)
        self._check_layout(batch, current, prompt_of_completion, item_id)
        self.calls += 1

        parsed = [self.policy.parse(completion_text(c)) for c in completions]
        expansions = [p.text for p in parsed]
        prompts_of_step = batch.prompts
        prompt_position = {id(item): index for index, item in enumerate(prompts_of_step)}
        # Completions of each prompt, in call order.
        completions_of_prompt: dict[int, list[int]] = {}
        for position, index in enumerate(prompt_of_completion):
            completions_of_prompt.setdefault(int(index), []).append(position)

        # Lay the samples out query by query and document by document (relevance order).
        def samples(items, join) -> tuple[list[str], list[int], list[int]]:
            texts, owner, completion_of_sample = [], [], []
            for row, item in enumerate(items):
                if item.expand:
                    for position in completions_of_prompt[prompt_position[id(item)]]:
                        texts.append(join(item, expansions[position]))
                        owner.append(row)
                        completion_of_sample.append(position)
                else:
                    texts.append(join(item, None))
                    owner.append(row)
                    completion_of_sample.append(-1)
            return texts, owner, completion_of_sample

        corpus = self.builder.corpus
        q_texts, q_owner, q_completion = samples(batch.queries, lambda item, e: query_text(item.text, e))
        d_texts, d_owner, d_completion = samples(batch.documents, lambda item, e: document_text(corpus[item.item_id], e))
        relevance = batch.relevance
        d_owner = np.asarray(d_owner)
        if self.merge_duplicates:
            relevance, d_owner = merge_duplicate_documents([item.item_id for item in batch.documents], relevance, d_owner)
        scores = self.scorer.score(q_texts, d_texts)
        result = sampled_ndcg_rewards(
            scores,
            np.asarray(q_owner),
            d_owner,
            relevance,
            rounds=self.rounds,
            k=self.k,
            relevant_weight=self.relevant_weight,
            seed=np.random.default_rng([self.seed, current]),
            ties=self.ties,
        )

        raw = np.full(len(completions), np.nan)
        for sample, position in enumerate(q_completion):
            if position >= 0:
                raw[position] = result.query_rewards[sample]
        for sample, position in enumerate(d_completion):
            if position >= 0:
                raw[position] = result.document_rewards[sample]
        kinds = [item.kind for item in prompts_of_step]
        scale = np.array([self.scales.for_kind(kinds[i]) for i in prompt_of_completion])
        scaled = raw * scale

        metrics = self._metrics(parsed, raw, prompt_of_completion, prompts_of_step, completions)
        metrics.update(group_spread_metrics(raw, prompt_of_completion, [item.role for item in prompts_of_step]))
        metrics["coaug/pool_documents"] = float(relevance.shape[1])
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(name, value)
        self.last = RewardCall(current, raw, scaled, prompt_of_completion, kinds, expansions, metrics)
        return [None if np.isnan(v) else float(v) for v in scaled]

    @staticmethod
    def _metrics(parsed, raw, prompt_of_completion, prompts_of_step, completions) -> dict[str, float]:
        roles = np.array([prompts_of_step[i].role for i in prompt_of_completion])
        kinds = np.array([prompts_of_step[i].kind for i in prompt_of_completion])
        empty = np.array([not p.text for p in parsed])
        well_formed = np.array([p.ok for p in parsed])
        words = np.array([len(p.text.split()) for p in parsed])
        length = np.array([len(completion_text(c)) for c in completions])
        metrics: dict[str, float] = {
            "coaug/empty_expansion_rate": float(empty.mean()),
            "coaug/format_ok_rate": float(well_formed.mean()),
            "coaug/expansion_words": float(words.mean()),
            "coaug/completion_chars": float(length.mean()),
        }
        groups = {
            "query": roles == "query",
            "relevant_doc": kinds == "relevant",
            "negative_doc": (roles == "document") & (kinds != "relevant"),
        }
        for name, mask in groups.items():
            if mask.any():
                values = raw[mask]
                if np.isfinite(values).any():
                    metrics[f"coaug/reward_{name}"] = float(np.nanmean(values))
                metrics[f"coaug/empty_rate_{name}"] = float(empty[mask].mean())
        return metrics


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


@dataclass
class CoAugSetup:
    """Everything :func:`train_coaug` builds before training (tests use it to reach inside)."""

    config: CoAugConfig
    run: RunDirectory
    data: CoAugData
    builder: CoAugBatchBuilder
    reward: CoAugReward
    evaluator: DevEvaluator
    trainer: Any


def _top_candidates(config: CoAugConfig, data: CoAugData, scorer: BatchScorer) -> dict[str, list[str]] | None:
    """Each training query's top documents under the unexpanded retriever over the whole corpus.

    Deep enough for both uses: hard negatives (drawn from the top ``hard_negative_depth``) and
    the background pool (the top ``background``). ``None`` when neither is asked for.
    """
    depth = max(config.batch.hard_negative_depth if config.batch.hard_negatives else 0, config.batch.background)
    if depth == 0:
        return None
    return top_documents_per_query(data.corpus, data.train_queries, scorer, depth)


def _prefixes(candidates: Mapping[str, list[str]] | None, depth: int) -> dict[str, list[str]] | None:
    return None if candidates is None else {q: docs[:depth] for q, docs in candidates.items()}


def prepare_coaug(config: CoAugConfig, *, force: bool = False, callbacks: Sequence[Any] = ()) -> CoAugSetup:
    """Load data and model, create/resume the run directory and build the GRPO trainer."""
    from trl import GRPOTrainer

    device = resolve_device(config.device)
    data = load_coaug_data(config)
    run = RunDirectory.create_or_resume(
        config.output_dir, config, input_files=data.files, force=force, mutable_keys=RESUMABLE_KEYS
    )
    if config.wandb_project:
        run.enable_wandb(config.wandb_project)
    policy = config.expansion_policy()
    statistics = CorpusStatistics.from_documents(data.corpus.values()) if config.retriever == "sparse" else None
    scorer = BatchScorer(
        config.retriever,
        statistics=statistics,
        dense_model=config.dense_model,
        k1=config.reward.bm25_k1,
        b=config.reward.bm25_b,
        unseen=config.reward.unseen_terms,
    )
    candidates = _top_candidates(config, data, scorer)
    builder = CoAugBatchBuilder(
        data.corpus,
        data.train_queries,
        data.train_qrels,
        mode=config.mode,
        queries_per_step=config.batch.queries_per_step,
        group_size=config.batch.group_size,
        relevant_per_query=config.batch.relevant_per_query,
        hard_negatives=config.batch.hard_negatives,
        hard_negative_candidates=_prefixes(candidates, config.batch.hard_negative_depth),
        background=config.batch.background,
        background_candidates=candidates,
        seed=config.seed,
    )
    scales = AdvantageScales(**config.role_scales.model_dump())
    reward = CoAugReward(
        builder,
        policy,
        scorer,
        samples_per_prompt=config.batch.samples_per_prompt,
        rounds=config.reward.rounds,
        k=config.reward.k,
        relevant_weight=config.reward.relevant_weight,
        ties=config.reward.ties,
        scales=scales,
        merge_duplicates=config.reward.merge_duplicates,
        seed=config.seed,
    )
    evaluator = DevEvaluator.build(
        data.corpus,
        data.dev_queries,
        data.dev_qrels,
        scorer,
        policy,
        mode=config.mode,
        max_queries=config.eval.max_queries,
        candidate_docs=config.eval.candidate_docs,
        candidate_depth=config.eval.candidate_depth,
        expand_depth=config.eval.expand_depth,
        seed=config.seed,
        batch_size=config.eval.batch_size,
    )
    (run.path / "expansion_policy.json").write_text(policy.model_dump_json(indent=2) + "\n", encoding="utf-8")
    baseline_path = run.path / "baseline.json"
    if not baseline_path.exists():
        baseline = evaluator.baseline()
        baseline_path.write_text(json.dumps({"retriever": config.retriever, **baseline}, indent=2) + "\n")

    prompts_per_step = config.prompts_per_step()
    use_vllm: bool | str = {"auto": "auto", "vllm": True, "transformers": False}[config.engine]
    grpo_args = build_grpo_config(
        output_dir=run.checkpoints_dir,
        max_steps=config.optim.steps * config.batch.updates_per_step,
        num_generations=config.batch.samples_per_prompt,
        prompts_per_step=prompts_per_step,
        micro_batch_size=config.batch.micro_batch_size,
        updates_per_step=config.batch.updates_per_step,
        num_iterations=config.optim.num_iterations,
        learning_rate=config.optim.learning_rate,
        lr_scheduler_type=config.optim.lr_scheduler,
        warmup_steps=config.optim.warmup_steps,
        max_grad_norm=config.optim.max_grad_norm,
        max_completion_length=config.generation.max_new_tokens,
        temperature=config.generation.temperature,
        top_p=config.generation.top_p,
        repetition_penalty=config.generation.repetition_penalty,
        beta=config.optim.beta,
        epsilon=config.optim.epsilon,
        epsilon_high=config.optim.epsilon_high,
        loss_type="dapo",
        scale_rewards="none",
        shuffle_dataset=False,
        save_steps=config.save_every * config.batch.updates_per_step,
        save_total_limit=config.keep_checkpoints,
        seed=config.seed,
        device=device,
        use_vllm=use_vllm,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        gradient_checkpointing=config.optim.gradient_checkpointing,
        extra={"generation_kwargs": dict(config.generation.generation_kwargs)} if config.generation.generation_kwargs else None,
    )
    if grpo_args.world_size > 1:
        raise ConfigError(
            f"co-augmentation training runs in one process (got {grpo_args.world_size})",
            hint="TRL scores each process's shard separately, which would split the in-batch pool; use one GPU",
        )
    model, tokenizer = load_policy(config.model, device=device, precision=config.precision)
    dataset = build_step_dataset(builder, policy, config.optim.steps, tokenizer)
    dev_callback = DevEvaluationCallback(
        run,
        evaluator,
        metric="ndcg@10",
        every=config.eval.every * config.batch.updates_per_step,
        patience=config.eval.patience,
        evaluate_at_start=config.eval.at_start,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=grpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=build_lora_config(config.lora),
        callbacks=[RunLoggingCallback(run), dev_callback, *callbacks],
    )
    quiet_trainer(trainer, "co-augmentation")
    return CoAugSetup(config, run, data, builder, reward, evaluator, trainer)


def train_coaug(config: CoAugConfig, *, force: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Train (or resume) the run described by ``config``; returns the run directory."""
    started = time.time()
    return train_prepared(prepare_coaug(config, force=force, callbacks=callbacks), started=started)


def train_prepared(setup: CoAugSetup, *, started: float | None = None) -> Path:
    """Train (or resume) the run :func:`prepare_coaug` built, save ``final/``, write the report; returns the run directory."""
    started = time.time() if started is None else started
    config = setup.config
    run = setup.run
    resumed_from = train_with_resume(setup.trainer, run)
    # Save the final state too, so a finished run is complete on disk whatever save_every was.
    setup.trainer.save_model(str(run.path / "final"))
    setup.trainer.processing_class.save_pretrained(str(run.path / "final"))
    run.write_report(
        "Co-augmentation training",
        {
            "Summary": {
                "mode": config.mode,
                "retriever": config.retriever,
                "model": config.model,
                "steps done": setup.trainer.state.global_step // config.batch.updates_per_step,
                "prompts per step": config.prompts_per_step(),
                "samples per prompt": config.batch.samples_per_prompt,
                "resumed from": str(resumed_from) if resumed_from else "-",
                "wall time this invocation (s)": round(time.time() - started, 1),
            },
            "Dev baseline (no expansion, same slice)": json.loads((run.path / "baseline.json").read_text()),
            "Use the trained policy": (
                f"`searchrl augment {{queries|corpus}} --model {run.best_dir} --data {config.data} "
                f"{augment_flags(config)} --out OUT` (the best checkpoint; `final/` holds the last one; "
                "the flags repeat the expansion policy used in training, see expansion_policy.json)."
            ),
        },
    )
    run.close()
    return run.path


def augment_flags(config: CoAugConfig) -> str:
    """The ``searchrl augment`` flags that reproduce the training run's expansion policy."""
    e = config.expansion
    flags = [
        f"--retriever {config.retriever}",
        "--think" if e.think else "--no-think",
        "--prefill" if e.prefill else "--no-prefill",
        "--lenient" if e.lenient else "--strict",
        f"--max-new-tokens {config.generation.max_new_tokens}",
        f"--max-words {e.max_words}",
    ]
    if e.max_input_words is not None:
        flags.append(f"--max-input-words {e.max_input_words}")
    return " ".join(flags)


def run_coaug_training(
    config_path: str | Path | None, overrides: Sequence[str] | None = None, *, force: bool = False,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Load a :class:`CoAugConfig` from YAML + ``key=value`` overrides, train, return the run directory.

    Rerunning with the same config continues from the last checkpoint in ``RUN/checkpoints``.
    """
    config = load_config(CoAugConfig, config_path, list(overrides or []))
    return train_coaug(config, force=force, callbacks=callbacks)


# --------------------------------------------------------------------------------------
# quickstart
# --------------------------------------------------------------------------------------

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def quickstart_config(data: str | Path, output_dir: str | Path, *, model: str | None = None) -> dict[str, Any]:
    """The quickstart recipe (mirrored by ``configs/coaug-quickstart.yaml``) as a config dict.

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
        "retriever": "sparse",
        "batch": {
            "queries_per_step": 2,
            "group_size": 6,
            "relevant_per_query": 1,
            "hard_negatives": 4,
            "hard_negative_depth": 5,
            "samples_per_prompt": 4,
            "micro_batch_size": 8,
        },
        "reward": {"rounds": 64},
        "optim": {"steps": 6, "learning_rate": 5e-4},
        "generation": {"max_new_tokens": 20, "temperature": 1.0},
        # Answer prefill (the default) makes even the untrained model's completions usable under
        # strict parsing; documents are cut to their opening 40 words to keep prompts short.
        "expansion": {"max_words": 20, "max_input_words": 40},
        "lora": {"r": 16, "alpha": 32},
        "eval": {"every": 3, "max_queries": 25, "candidate_docs": None, "expand_depth": 4, "batch_size": 16},
        "save_every": 3,
        "device": "auto",
        "output_dir": str(output_dir),
    }
    if model:
        config["model"] = model
    return config


@dataclass
class QuickstartSummary:
    run_dir: Path
    bm25: float
    untrained: float | None
    trained: float | None
    trained_step: int | None
    seconds: float
    queries: int
    candidates: int
    trained_is_best: bool = True
    evaluated: str = ""
    formats: list[str] = field(default_factory=list)

    def table(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        header = self.evaluated or (
            f"{self.queries} dev queries, "
            + (f"{self.candidates}-document candidate slice" if self.candidates else "whole corpus")
        )
        return "\n".join(
            [
                f"dev nDCG@10 ({header})",
                f"  BM25 (no expansion)      {fmt(self.bm25)}",
                f"  + untrained expansions   {fmt(self.untrained)}",
                f"  + trained expansions     {fmt(self.trained)}"
                + (f"  (step {self.trained_step})" if self.trained_step is not None else "")
                + ("" if self.trained_is_best else "  (no improvement: best/ keeps the untrained policy)"),
                *self.formats,
                f"run directory: {self.run_dir}   wall time: {self.seconds / 60:.1f} min",
                f"trained policy: {self.run_dir / 'best'}",
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
    """Train the quickstart recipe and compare BM25, untrained and trained expansions on dev."""
    started = time.time()
    data_dir = Path(data) if data is not None else download_beir_dataset("scifact")
    ensure_dev_split(data_dir)
    out_dir = Path(out) if out is not None else Path("runs") / "quickstart"
    raw = quickstart_config(data_dir, out_dir, model=model)
    if steps is not None:
        raw["optim"]["steps"] = steps
    config = CoAugConfig.model_validate(raw)
    setup = prepare_coaug(config)
    prompt_tokens = _mean_prompt_tokens(setup)
    evaluated = setup.evaluator.describe(expand_depth=config.eval.expand_depth)
    run_dir = train_prepared(setup, started=started)
    run = RunDirectory(run_dir)
    baseline = json.loads((run_dir / "baseline.json").read_text())
    records = run.read_metrics()
    evaluations = [(r["step"], r["dev/ndcg@10"]) for r in records if "dev/ndcg@10" in r]
    untrained = next((value for step, value in evaluations if step == 0), None)
    best = run.best()
    trained_records = [(s, v) for s, v in evaluations if s > 0]
    trained, trained_step = (None, None)
    if best is not None and best["step"] > 0:
        trained, trained_step = best["value"], best["step"]
    elif trained_records:
        trained_step, trained = max(trained_records, key=lambda sv: sv[1])
    return QuickstartSummary(
        run_dir,
        float(baseline["ndcg@10"]),
        untrained,
        trained,
        trained_step,
        time.time() - started,
        queries=len(setup.evaluator.queries),
        candidates=0 if config.eval.candidate_docs is None else len(setup.evaluator.candidate_ids),
        trained_is_best=best is not None and best["step"] > 0,
        evaluated=evaluated,
        formats=_format_lines(config, prompt_tokens, records),
    )


def download_beir_dataset(name: str, *, cache: str | Path | None = None, url: str | None = None) -> Path:
    """Download and unzip a BEIR data set into ``$SEARCHRL_CACHE/data/<name>`` (once), return its folder.

    Offline, or when the server cannot be reached, raises :class:`DataError` saying to pass a
    local copy with ``--data``.
    """
    import shutil
    import tempfile
    import zipfile

    import httpx

    from searchrl.paths import cache_dir

    root = Path(cache) if cache is not None else cache_dir() / "data"
    target = root / name
    if (target / "corpus.jsonl").exists() or (target / "corpus.jsonl.gz").exists():
        return target
    url = url or BEIR_URL.format(name=name)
    root.mkdir(parents=True, exist_ok=True)
    hint = f"check the network, or download {url} yourself, unzip it and pass --data DIR"
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
                response.raise_for_status()
                with archive.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
        except httpx.HTTPError as err:
            raise DataError(f"cannot download BEIR {name} from {url}: {err}", hint=hint) from None
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    resolved = (Path(tmp) / member).resolve()
                    if not resolved.is_relative_to(Path(tmp).resolve()):
                        raise DataError(f"unsafe path {member!r} in the archive", path=archive, hint=hint)
                zipped.extractall(tmp)
        except zipfile.BadZipFile:
            raise DataError("the download is not a zip archive", path=archive, hint=hint) from None
        extracted = next((p.parent for p in Path(tmp).rglob("corpus.jsonl")), None)
        if extracted is None:
            raise DataError("the archive holds no corpus.jsonl", path=archive, hint=hint)
        shutil.move(str(extracted), str(target))
    return target


def ensure_dev_split(directory: str | Path, *, dev_queries: int = 100, seed: int = 0) -> bool:
    """Create ``qrels/dev.tsv`` from ``qrels/train.tsv`` when the folder has no dev split.

    ``dev_queries`` training queries (seeded) move to dev; ``train.tsv`` keeps the rest and the
    original is kept as ``train-full.tsv``. Returns whether a split was made.
    """
    from searchrl.data.beir import available_splits, load_qrels, qrels_path

    directory = Path(directory)
    splits = available_splits(directory)
    if "dev" in splits:
        return False
    if "train" not in splits:
        raise DataError(
            "no dev split and no train split to make one from", path=directory / "qrels",
            hint="the quickstart needs qrels/train.tsv (and optionally qrels/dev.tsv)",
        )
    train_path = qrels_path(directory, "train")
    if train_path.suffix == ".gz":
        raise DataError("cannot split a gzipped train qrels file", path=train_path, hint="gunzip it first")
    qrels = load_qrels(train_path)
    query_ids = sorted(qrels)
    if len(query_ids) < 2 * dev_queries:
        dev_queries = max(1, len(query_ids) // 5)
    rng = np.random.default_rng(seed)
    dev = {query_ids[i] for i in rng.choice(len(query_ids), size=dev_queries, replace=False)}

    def write(path: Path, ids) -> None:
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{q}\t{d}\t{r}" for q in ids for d, r in qrels[q].items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    full = train_path.with_name("train-full.tsv")
    if not full.exists():
        train_path.replace(full)
    write(train_path.with_name("dev.tsv"), [q for q in query_ids if q in dev])
    write(train_path, [q for q in query_ids if q not in dev])
    return True


__all__ = [
    "CoAugConfig",
    "CoAugReward",
    "QuickstartSummary",
    "augment_flags",
    "build_step_dataset",
    "download_beir_dataset",
    "ensure_dev_split",
    "load_coaug_data",
    "prepare_coaug",
    "quickstart_config",
    "render_training_prompt",
    "run_coaug_training",
    "run_quickstart",
    "step_rows",
    "train_coaug",
    "train_prepared",
]
