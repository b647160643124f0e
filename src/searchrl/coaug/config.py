"""The configuration of one co-augmentation run (YAML + ``--set key=value`` overrides).

Sections follow the order of a step: which prompts a step holds (``batch``), how they are
rewarded (``reward``, ``role_scales``, the retriever's ``bm25``), how the policy is sampled and
updated (``grpo``: the GRPO knobs under TRL's names, the same keys as the agent's config;
``generation``: completion length), what an expansion is (``expansion``, shared with
``searchrl augment``), and how checkpoints are chosen (``eval``). :func:`searchrl.coaug.train.train_coaug` consumes it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from searchrl.augment import ExpansionPolicy
from searchrl.augment.prompts import prompt_style_for
from searchrl.llm.precision import Precision
from searchrl.resolver import DEFAULT_ENCODER, DEFAULT_LLM
from searchrl.runs import MIN_DELTA_HELP
from searchrl.config import refuse_renamed_keys
from searchrl.training import GRPOSettings, LoraSettings


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
    background_corpus: bool = Field(
        False,
        description="every corpus document joins every pool unexpanded, so the query side is ranked over the whole "
        "corpus as evaluation ranks it (replaces background; for corpora whose BM25 scoring fits a step)",
    )
    skip_solved: bool = Field(
        False,
        description="leave out training queries the unexpanded retriever already ranks perfectly (nDCG@k = 1): "
        "their samples tie and carry no gradient",
    )
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


class BM25Settings(_Section):
    """The retriever the reward scores with and evaluation searches with (Lucene BM25, the whole corpus's statistics)."""

    k1: float = Field(1.2, ge=0.0)
    b: float = Field(0.75, ge=0.0, le=1.0)
    query_repeat: int = Field(
        1, ge=1,
        description="an expanded query holds the original query this many times before the expansion "
        "(query2doc's weighting; 1: CoAug's plain concatenation)",
    )


class RoleScales(_Section):
    query: float = Field(1.0, ge=0.0)
    relevant_document: float = Field(0.2, ge=0.0)
    negative_document: float = Field(0.1, ge=0.0)


class CoAugGRPOSettings(GRPOSettings):
    """The GRPO knobs (:class:`searchrl.training.GRPOSettings`, TRL's names), with CoAug's defaults.

    ``num_generations`` is CoAug's G, the sampled expansions per prompt.
    """

    steps: int = Field(300, ge=1, description="RL steps")
    num_generations: int = Field(5, ge=2, description="G: sampled expansions per prompt (the GRPO group)")


class GenerationSettings(_Section):
    """Length and options of sampled rollouts (evaluation decodes greedily; temperature and top_p are ``grpo.*``)."""

    max_new_tokens: int = Field(64, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    generation_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra sampling options passed to TRL (e.g. vLLM 'stop')"
    )


class ExpansionSettings(_Section):
    """What an expansion is (shared with ``searchrl augment`` through ExpansionPolicy)."""

    prompt_style: Literal["sparse", "dense"] | None = Field(
        None, description="sparse: key terms; dense: a passage (None: follows retriever, bm25 -> sparse, dense -> dense)"
    )
    think: bool = False
    prefill: bool = Field(True, description="the prompt opens the answer (<answer>, or <think> when thinking)")
    max_words: int = Field(64, ge=1)
    max_input_words: int | None = Field(256, ge=1)
    lenient: bool = False


class EvalSettings(_Section):
    """Evaluation while training, on the *selection* queries: part of dev, or held-out training queries."""

    every: int = Field(10, ge=1, description="evaluate the selection queries every N steps")
    select_on: Literal["dev", "train"] = Field(
        "dev",
        description="dev: choose checkpoints on part of dev (report_fraction says how much only reports); "
        "train: on max_queries seeded training queries taken out of RL training, so all of dev only reports",
    )
    report_fraction: float = Field(
        0.5, ge=0.0, lt=1.0,
        description="share of the judged dev queries held out from checkpoint selection and used only to report "
        "results (seeded); the checkpoint is chosen on the rest",
    )
    max_queries: int | None = Field(
        100, ge=1, description="selection queries evaluated (None: all of them; with select_on: train, required)"
    )
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
    min_delta: float = Field(0.0, ge=0, description=MIN_DELTA_HELP)


class CoAugConfig(_Section):
    """One co-augmentation training run (YAML + ``--set key=value`` overrides)."""

    model: str = Field(DEFAULT_LLM, description="policy model: name, folder or .gguf")
    data: str = Field(..., description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    train_split: str = "train"
    dev_split: str = "dev"
    qrels_dir: str | None = Field(None, description="folder of <split>.tsv qrels files to use instead of DATA/qrels")
    max_train_queries: int | None = Field(None, ge=1, description="use only this many training queries (seeded)")
    mode: Literal["query", "document", "coaug"] = "coaug"
    retriever: Literal["bm25", "dense"] = Field(
        "bm25", description="the retriever the reward and evaluation rank with (searchrl.retrieval.RetrieverKind; no hybrid)"
    )
    encoder: str = Field(DEFAULT_ENCODER, description="sentence-transformers model for retriever: dense")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    bm25: BM25Settings = Field(default_factory=BM25Settings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    role_scales: RoleScales = Field(default_factory=RoleScales)
    grpo: CoAugGRPOSettings = Field(default_factory=CoAugGRPOSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    expansion: ExpansionSettings = Field(default_factory=ExpansionSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = Field(
        "auto", description="policy weights: bf16 where the hardware multiplies it natively (see searchrl.llm.precision)"
    )
    output_dir: str = "runs/coaug"
    wandb_project: str | None = Field(None, description="also log metrics to this Weights & Biases project")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        refuse_renamed_keys(raw, RENAMED_KEYS)
        if isinstance(raw, dict) and raw.get("retriever") == "sparse":
            raise ValueError("retriever: sparse is now retriever: bm25 (the prompt style follows from it)")
        return raw

    @model_validator(mode="after")
    def _check_selection(self) -> "CoAugConfig":
        if self.eval.select_on == "train" and self.eval.max_queries is None:
            raise ValueError("eval.select_on: train needs eval.max_queries (how many training queries choose checkpoints)")
        return self

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
            prompt_style=e.prompt_style or prompt_style_for(self.retriever),
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
    "grpo.steps", "eval.every", "eval.patience", "grpo.save_steps", "grpo.save_total_limit", "output_dir", "wandb_project"
)

#: Keys of earlier versions and where each setting lives now (the same TRL knob has the same key
#: in the co-augmentation and agent configs); a config that uses an old key is refused, naming the new one.
RENAMED_KEYS = {
    "dense_model": "encoder",
    "reward.bm25_k1": "bm25.k1",
    "reward.bm25_b": "bm25.b",
    "optim.steps": "grpo.steps",
    "optim.learning_rate": "grpo.learning_rate",
    "optim.lr_scheduler": "grpo.lr_scheduler_type",
    "optim.warmup_steps": "grpo.warmup_steps",
    "optim.epsilon": "grpo.epsilon",
    "optim.epsilon_high": "grpo.epsilon_high",
    "optim.beta": "grpo.beta",
    "optim.max_grad_norm": "grpo.max_grad_norm",
    "optim.num_iterations": "grpo.num_iterations",
    "optim.gradient_checkpointing": "grpo.gradient_checkpointing",
    "optim": "grpo",
    "batch.samples_per_prompt": "grpo.num_generations",
    "batch.micro_batch_size": "grpo.micro_batch_size",
    "generation.temperature": "grpo.temperature",
    "generation.top_p": "grpo.top_p",
    "save_every": "grpo.save_steps",
    "keep_checkpoints": "grpo.save_total_limit",
    "engine": "grpo.use_vllm (true, false or auto)",
    "vllm_gpu_memory_utilization": "grpo.vllm_gpu_memory_utilization",
}


def augment_flags(config: CoAugConfig) -> str:
    """The ``searchrl augment`` flags that reproduce the training run's expansion policy."""
    e = config.expansion
    flags = [
        f"--retriever {config.retriever}",
        *([f"--prompt-style {e.prompt_style}"] if e.prompt_style else []),
        "--think" if e.think else "--no-think",
        "--prefill" if e.prefill else "--no-prefill",
        "--lenient" if e.lenient else "--strict",
        f"--max-new-tokens {config.generation.max_new_tokens}",
        f"--max-words {e.max_words}",
    ]
    if e.max_input_words is not None:
        flags.append(f"--max-input-words {e.max_input_words}")
    return " ".join(flags)


__all__ = [
    "BM25Settings",
    "BatchSettings",
    "CoAugConfig",
    "EvalSettings",
    "ExpansionSettings",
    "CoAugGRPOSettings",
    "GenerationSettings",
    "RENAMED_KEYS",
    "RESUMABLE_KEYS",
    "RewardSettings",
    "RoleScales",
    "augment_flags",
]
