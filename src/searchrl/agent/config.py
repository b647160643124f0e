"""Settings of one search-agent training run (read from YAML, stored as ``RUN/config.yaml``).

:class:`AgentTrainConfig` holds every section: data and its chunk-disjoint split, the search
tool, episode limits, reward weights, LoRA, the supervised warm-start (:class:`SFTConfig`), the
RL stage (:class:`GRPOSettings`) and the dev evaluation that chooses ``best/``
(:class:`DevEvalSettings`).

Loss presets (``grpo.preset``) fill in the loss settings a YAML file leaves out:

* ``searchrl`` (default): group-centred advantages without std division
  (``scale_rewards: none``, Dr. GRPO), token-mean loss (``loss_type: dapo``), asymmetric clip
  0.2 / 0.28, grad-norm clip 1.0, no KL (``beta: 0``);
* ``rezero``: ReZero's own settings — std-scaled advantages (``scale_rewards: group``), KL
  0.04 to the policy GRPO starts from, grad-norm clip 0.1, ``loss_type: grpo``, symmetric
  clip 0.2.

A value given explicitly always wins over the preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from searchrl.agent.episode import EpisodeConfig
from searchrl.agent.rewards import RewardWeights
from searchrl.agent.sft import SFTConfig
from searchrl.agent.tool import SearchToolConfig
from searchrl.config import load_config
from searchrl.llm.precision import Precision
from searchrl.resolver import DEFAULT_LLM
from searchrl.runs import MIN_DELTA_HELP
from searchrl.training import GRPOSettings as SharedGRPOSettings
from searchrl.training import LoraSettings
from searchrl.training.credit import SCALINGS

LossPreset = Literal["searchrl", "rezero"]

#: The loss settings each ``grpo.preset`` fills in (see the module docstring).
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    "searchrl": {
        "loss_type": "dapo", "scale_rewards": "none", "beta": 0.0, "max_grad_norm": 1.0,
        "epsilon": 0.2, "epsilon_high": 0.28,
    },
    "rezero": {
        "loss_type": "grpo", "scale_rewards": "group", "beta": 0.04, "max_grad_norm": 0.1,
        "epsilon": 0.2, "epsilon_high": None,
    },
}


class AgentDataConfig(BaseModel):
    """The QA set, its corpus and the chunk-disjoint split (default: Apollo 13 from the shared data)."""

    model_config = ConfigDict(extra="forbid")

    questions: Path | None = Field(None, description="QA JSONL; default $SEARCHRL_DATA/apollo13/questions.jsonl")
    corpus: Path | None = Field(None, description="corpus JSONL (_id, title, text); default the Apollo 13 chunks")
    split_dir: Path | None = Field(None, description="existing split (train.jsonl, dev.jsonl); default RUN/split")
    dev_size: int | None = Field(40, ge=1, description="dev questions (None: use dev_fraction)")
    dev_fraction: float = Field(0.15, gt=0, lt=1)
    split_seed: int = 0
    max_train_questions: int | None = Field(None, ge=1, description="use only the first N training questions")

    def resolved(self) -> "AgentDataConfig":
        from searchrl.paths import shared_data_dir

        apollo = shared_data_dir() / "apollo13"
        return self.model_copy(
            update={
                "questions": Path(self.questions or apollo / "questions.jsonl").expanduser(),
                "corpus": Path(self.corpus or apollo / "corpus.jsonl").expanduser(),
            }
        )


class GRPOSettings(SharedGRPOSettings):
    """The RL stage: the shared GRPO knobs (:class:`searchrl.training.GRPOSettings`) plus the agent's own.

    See :func:`searchrl.training.build_grpo_config` for the batch layout.
    """

    preset: LossPreset = Field("searchrl", description="loss settings left out are filled in from this preset")
    steps: int = Field(20, ge=0, description="RL steps (0: only the warm-start and evaluation)")
    prompts_per_step: int = Field(2, ge=1, description="questions per step")
    num_generations: int = Field(4, ge=2, description="episodes per question (the GRPO group)")
    beta: float = Field(
        0.0, ge=0, description="KL weight to the policy GRPO starts from (the warm-start); 0 keeps no reference"
    )
    loss_type: str = "dapo"
    scale_rewards: str = "none"
    mask_truncated_completions: bool = False
    train_answer_text: bool = Field(
        True,
        description="False: the words after <answer> are left out of the loss, so GRPO trains the search "
        "(when and what to search, when to answer) and the answers keep the warm-start's wording",
    )
    answer_credit: Literal["all_terms", "answer_terms", "context_baseline"] = Field(
        "all_terms",
        description="the advantage the words after <answer> get: all_terms (GRPO's one advantage per episode), "
        "answer_terms (only the part of the terms that score what the answer says: correctness, and retry when "
        "it pays for correct answers) or context_baseline (the answer's correctness against answer_samples "
        "answers resampled from where it began, scaled as a GRPO group; searchrl.training.credit)",
    )
    answer_samples: int = Field(
        4, ge=1, description="with answer_credit: context_baseline, the answers resampled per episode for its baseline"
    )
    answer_advantage_floor: float | None = Field(
        None,
        description="with answer_credit: answer_terms or context_baseline, the least advantage the answer's words "
        "get (0: an answer better than its baseline is reinforced, a worse one is left alone rather than pushed "
        "down; None: no floor)",
    )
    answer_temperature: float | None = Field(
        None,
        ge=0,
        description="with train_answer_text: false, the temperature rollouts write the answer's words at (None: "
        "the GRPO temperature). 0 reads them greedily, as evaluation does: those words are not trained, so the "
        "reward scores each sampled search by the answer the evaluated policy would give",
    )
    greedy_member: bool = Field(
        False,
        description="play one episode of each group greedily (temperature 0, as evaluation plays it) and sample "
        "the rest: GRPO then compares the evaluated policy's episode with its samples, pushing the greedy choice "
        "down where a sample beat it and up where it beat them",
    )
    later_turn_credit: bool = Field(
        False,
        description="what the model writes after its first search's results (searching again, or answering; the "
        "answer's words keep answer_credit) is credited with the terms the first search does not settle, against "
        "the episodes of its group whose first search ended alike, not with the whole episode's advantage, which "
        "charges a retry with the miss before it (needs rewards.retrieval_scope: first; searchrl.training.credit)",
    )
    shuffle: bool = True
    save_steps: int = Field(5, ge=1)
    generation_batch_size: int = Field(16, ge=1, description="sequences per transformers generate call")
    max_minutes: float | None = Field(None, gt=0, description="stop (and save) once this invocation ran this long")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "searchrl")
        if preset not in LOSS_PRESETS:
            return data  # the field's own validation names the allowed values
        return {**LOSS_PRESETS[preset], **data}

    @model_validator(mode="after")
    def _check_answer_credit(self) -> "GRPOSettings":
        if self.answer_credit != "all_terms" and not self.train_answer_text:
            raise ValueError(f"grpo.answer_credit: {self.answer_credit} trains the answer's words, which "
                             "grpo.train_answer_text: false leaves out of the loss; keep one of the two")
        if self.answer_advantage_floor is not None and self.answer_credit == "all_terms":
            raise ValueError("grpo.answer_advantage_floor applies to the answer's own advantage: it needs "
                             "grpo.answer_credit: answer_terms or context_baseline")
        if self.answer_temperature is not None and self.train_answer_text:
            raise ValueError("grpo.answer_temperature samples the answer's words away from the policy the loss "
                             "trains; it needs grpo.train_answer_text: false (which leaves them out of the loss)")
        if self.greedy_member and self.answer_temperature is not None:
            raise ValueError("grpo.greedy_member plays one episode of each group greedily, answer included; it "
                             "cannot be combined with grpo.answer_temperature")
        for used, name in ((self.answer_credit == "answer_terms", "grpo.answer_credit: answer_terms"),
                           (self.later_turn_credit, "grpo.later_turn_credit")):
            if used and self.scale_rewards not in SCALINGS:
                raise ValueError(f"{name} cannot split advantages scaled with "
                                 f"scale_rewards={self.scale_rewards!r}; use one of {', '.join(SCALINGS)}")
        return self


class DevEvalSettings(BaseModel):
    """Periodic dev evaluation (greedy episodes) and best-checkpoint keeping.

    The dev split is cut once more, by source chunk, into a *selection* part, whose score
    chooses ``best/``, and a *report* part, which is evaluated alongside and only reported
    (``dev_report/...`` in ``metrics.jsonl``): a maximum over noisy evaluations flatters the
    set that chose it.
    """

    model_config = ConfigDict(extra="forbid")

    every: int = Field(5, ge=1, description="evaluate every N RL steps (and before the first, and after the last)")
    metric: Literal["em", "f1"] = "f1"
    patience: int | None = Field(None, ge=1, description="stop after N evaluations without improvement")
    min_delta: float = Field(0.0, ge=0, description=MIN_DELTA_HELP)
    max_questions: int | None = Field(None, ge=1, description="evaluate on the first N dev questions only")
    report_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of dev questions held out from choosing best/ (0: select and report on all)"
    )
    batch_size: int = Field(20, ge=1)
    samples: int = Field(
        0, ge=0, description="choose best/ on N episodes of each selection question sampled as GRPO samples "
        "(grpo.temperature), averaged (dev/...), instead of its one greedy episode, which is still played "
        "and logged (dev_greedy/...); 0: the greedy episode chooses",
    )
    at_start: bool = Field(True, description="also evaluate the policy before the first RL step")
    train_questions: int = Field(
        0, ge=0, description="also play N fixed training questions greedily at each evaluation (train_eval/...): "
        "how well the policy fits what it trains on, beside how it does on dev; never chooses best/",
    )

    @property
    def chosen_by(self) -> str:
        """Which episodes' ``metric`` chooses ``best/``, in words."""
        if self.samples:
            return f"the mean of {self.samples} sampled episodes per question"
        return "one greedy episode per question"


class AgentTrainConfig(BaseModel):
    """Everything one agent training run needs; stored as ``config.yaml`` in the run directory."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_LLM, description="policy: a name, folder or .gguf (see searchrl.resolver)")
    init_adapter: Path | None = Field(None, description="start from this LoRA adapter (e.g. another run's sft/adapter)")
    output_dir: Path = Path("runs/agent")
    wandb_project: str | None = Field(None, description="also log metrics to this Weights & Biases project")
    device: str = "auto"
    precision: Precision = Field(
        "auto", description="policy weights: bf16 where the hardware multiplies it natively (see searchrl.llm.precision)"
    )
    seed: int = 0
    data: AgentDataConfig = Field(default_factory=AgentDataConfig)
    tool: SearchToolConfig = Field(default_factory=lambda: SearchToolConfig(k=3))
    episode: EpisodeConfig = Field(
        default_factory=lambda: EpisodeConfig(max_turns=4, max_model_tokens=384, max_turn_tokens=128)
    )
    rewards: RewardWeights = Field(default_factory=RewardWeights)
    retry_reward: bool = Field(True, description="false: drop the retry reward (ReZero's ablation)")
    judge_model: str | None = Field(None, description="judge model when rewards.metric is 'judge'")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: SFTConfig = Field(default_factory=lambda: SFTConfig(enabled=False))
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)
    eval: DevEvalSettings = Field(default_factory=DevEvalSettings)

    @model_validator(mode="after")
    def _check(self) -> "AgentTrainConfig":
        if self.rewards.metric == "judge" and not self.judge_model:
            raise ValueError("rewards.metric 'judge' needs judge_model (a fixed model other than the policy)")
        if not self.lora.enabled and (self.sft.enabled or self.init_adapter is not None):
            raise ValueError("the warm-start and init_adapter produce LoRA adapters: keep lora.enabled true")
        if self.grpo.answer_credit == "context_baseline" and (not self.rewards.correctness or self.rewards.metric == "judge"):
            raise ValueError("grpo.answer_credit: context_baseline scores the resampled answers with the correctness "
                             "term: it needs rewards.correctness above 0 and rewards.metric em or f1")
        if (self.retry_reward and self.rewards.retry and self.rewards.retry_mode == "spoiled"
                and not self.tool.noise.can_remove_results):
            raise ValueError("rewards.retry_mode 'spoiled' pays for a retry after a search the tool's noise spoiled, and "
                             "this tool.noise never removes a result, so the term would be 0 in every episode: set "
                             "tool.noise.fail_prob (e.g. 0.3), or another retry_mode")
        if self.grpo.later_turn_credit and (not self.rewards.retrieval or self.rewards.retrieval_scope != "first"):
            raise ValueError("grpo.later_turn_credit compares later turns among episodes whose first search ended "
                             "alike, read from the retrieval term on the first search: it needs rewards.retrieval "
                             "above 0 and rewards.retrieval_scope: first")
        if self.episode.answer_temperature is not None:
            raise ValueError("episode.answer_temperature is set by the stage: use grpo.answer_temperature for "
                             "rollouts (evaluation is greedy throughout)")
        return self

    def reward_weights(self) -> RewardWeights:
        """The reward weights in effect (retry weight 0 when ``retry_reward`` is false)."""
        return self.rewards if self.retry_reward else self.rewards.model_copy(update={"retry": 0.0})

    def rollout_episode_config(self) -> EpisodeConfig:
        """Episode settings of RL rollouts: sampled at the GRPO temperature the loss also uses (the answer's
        words, when the loss leaves them out, at ``grpo.answer_temperature``)."""
        return self.episode.model_copy(
            update={"temperature": self.grpo.temperature, "top_p": self.grpo.top_p, "seed": self.seed,
                    "answer_temperature": self.grpo.answer_temperature}
        )

    def eval_episode_config(self) -> EpisodeConfig:
        """Episode settings of dev evaluation: greedy."""
        return self.episode.model_copy(update={"temperature": 0.0, "top_p": 1.0, "seed": self.seed})


#: Keys a finished run may change when it is rerun (to extend it or stop it differently).
RESUMABLE_KEYS = ("grpo.steps", "grpo.max_minutes", "eval.patience", "wandb_project")


def load_agent_config(config_path: str | Path | None, overrides: Sequence[str] | None = None) -> AgentTrainConfig:
    """Read a YAML config (or a packaged recipe's name), apply ``key=value`` overrides, validate."""
    return load_config(AgentTrainConfig, config_path, list(overrides or []))


__all__ = [
    "LOSS_PRESETS",
    "RESUMABLE_KEYS",
    "AgentDataConfig",
    "AgentTrainConfig",
    "DevEvalSettings",
    "GRPOSettings",
    "LossPreset",
    "load_agent_config",
]
