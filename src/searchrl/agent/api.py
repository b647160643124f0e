"""Ask the search agent questions from Python.

The common case is one line per step::

    agent = Agent.from_checkpoint("runs/agent-cpu/best", data="../shared/data/apollo13")
    answer = agent.ask("What failed on Apollo 13?")
    answer.text, answer.sources, answer.messages

:meth:`Agent.from_checkpoint` searches and limits turns the way the training run that saved the
checkpoint did (k, passage length, turn and token limits, system prompt), read from the run's
``config.yaml``; keyword arguments override single settings. ``Agent(model=..., retriever=...)``
wraps any model (a name, a folder, an engine or a :class:`~searchrl.agent.episode.Policy`) and
any retriever (a kind, an indexed :class:`~searchrl.retrieval.base.Retriever` or a ready
:class:`~searchrl.agent.tool.SearchTool`):

>>> from searchrl.agent.episode import ScriptedPolicy
>>> from searchrl.data.types import Document
>>> from searchrl.testing import build_tiny_tokenizer
>>> policy = ScriptedPolicy(build_tiny_tokenizer(), {"What exploded?": ["<search>oxygen tank</search>", "<answer>the oxygen tank</answer>"]})
>>> docs = [Document("c1", "The oxygen tank exploded."), Document("c2", "The crew landed safely.")]
>>> answer = Agent(policy, "bm25", corpus=docs).ask("What exploded?")
>>> answer.text, answer.searches, [doc.id for doc in answer.sources]
('the oxygen tank', ['oxygen tank'], ['c1'])

``searchrl agent ask`` and ``searchrl agent eval`` are thin shells over this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchrl.agent.episode import EnginePolicy, EpisodeConfig, EpisodeResult, Policy, run_episodes
from searchrl.agent.protocol import SYSTEM_PROMPT
from searchrl.agent.tool import SearchTool, SearchToolConfig, build_search_tool
from searchrl.data.types import Document, QAExample
from searchrl.errors import ConfigError
from searchrl.llm.engine import Message
from searchrl.retrieval.base import Retriever

DEFAULT_SETTINGS: dict[str, Any] = {
    "retriever": "bm25",
    "encoder": None,
    "k": 5,
    "max_chars": None,
    "max_turns": 8,
    "max_turn_tokens": 256,
    "max_model_tokens": 1024,
    "max_context_tokens": None,
    "system_prompt": SYSTEM_PROMPT,
}
"""How the agent searches and limits its turns when neither the caller nor a training run says otherwise."""

_TOOL_KEYS = ("retriever", "encoder", "k", "max_chars")
"""Settings read from a training run's ``tool`` section ..."""
_EPISODE_KEYS = ("max_turns", "max_turn_tokens", "max_model_tokens", "max_context_tokens", "system_prompt")
"""... and from its ``episode`` section (sampling settings are the caller's, not the run's)."""


# ----------------------------------------------------------------------------------------
# Settings of the training run a checkpoint came from


@dataclass(frozen=True)
class TrainingRun:
    """What an agent checkpoint's training run says about using it."""

    directory: Path
    settings: dict[str, Any]
    """Search and episode settings, keys of :data:`DEFAULT_SETTINGS` (only those the run names)."""
    corpus: Path | None
    """The corpus the run searched (``data.corpus``), if it names one."""


def find_training_run(checkpoint: str | Path | None) -> TrainingRun | None:
    """The ``searchrl train agent`` run that saved ``checkpoint``, or ``None`` if it is not a run's checkpoint.

    A checkpoint is ``RUN/best``, ``RUN/final`` or ``RUN/checkpoints/checkpoint-N``: the run's
    ``config.yaml`` (with ``tool`` and ``episode`` sections) sits one or two folders up.
    """
    if checkpoint is None or not Path(checkpoint).is_dir():
        return None
    import yaml

    for folder in list(Path(checkpoint).resolve().parents)[:2]:
        config_file = folder / "config.yaml"
        if not config_file.is_file():
            continue
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(config, dict) or not isinstance(config.get("tool"), dict) or not isinstance(config.get("episode"), dict):
            return None
        tool, episode = config["tool"], config["episode"]
        settings = {key: tool[key] for key in _TOOL_KEYS if key in tool}
        settings.update({key: episode[key] for key in _EPISODE_KEYS if key in episode})
        data = config.get("data")
        corpus = data.get("corpus") if isinstance(data, dict) else None
        return TrainingRun(folder, settings, Path(corpus) if corpus else None)
    return None


def agent_settings(model: str | Path | None, **given: Any) -> tuple[dict[str, Any], TrainingRun | None]:
    """Settings in effect: those ``given`` (``None`` means not given), else the training run's, else the defaults.

    Returns the settings (every key of :data:`DEFAULT_SETTINGS`) and the run they came from, if any.
    """
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown agent settings: {', '.join(unknown)}", hint=f"known: {', '.join(DEFAULT_SETTINGS)}")
    run = find_training_run(model)
    from_run = run.settings if run is not None else {}
    settings = {}
    for key, default in DEFAULT_SETTINGS.items():
        value = given.get(key)
        value = getattr(value, "value", value)  # an Enum member from the command line
        settings[key] = value if value is not None else from_run.get(key, default)
    return settings, run


# ----------------------------------------------------------------------------------------
# Answers


@dataclass
class AgentAnswer:
    """What the agent did for one question: its answer, the transcript and the documents it read."""

    question: str
    text: str | None
    """The final answer, or ``None`` when the episode ended without one (see ``finish_reason``)."""
    messages: list[Message]
    """The whole conversation: system prompt, question, every assistant turn and search result."""
    searches: list[str]
    """The queries the agent searched for, in order."""
    sources: list[Document]
    """Every document shown to the agent, in the order it first appeared."""
    finish_reason: str
    error: str | None
    """The search tool's error when ``finish_reason == "tool_error"``."""
    episode: EpisodeResult = field(repr=False)
    """The full episode record (token ids, masks, search details)."""

    @property
    def answered(self) -> bool:
        return self.finish_reason == "answered"


def _answer(episode: EpisodeResult, corpus: Mapping[str, Document]) -> AgentAnswer:
    doc_ids = dict.fromkeys(doc_id for search in episode.searches for doc_id in search["doc_ids"])
    return AgentAnswer(
        question=episode.question,
        text=episode.answer,
        messages=list(episode.messages),
        searches=[search["query"] for search in episode.searches],
        sources=[corpus[doc_id] for doc_id in doc_ids if doc_id in corpus],
        finish_reason=episode.finish_reason,
        error=episode.error,
        episode=episode,
    )


# ----------------------------------------------------------------------------------------
# The agent


class Agent:
    """A search agent: a policy model, a search tool over a corpus, and episode limits.

    ``model``: a model name, folder or LoRA adapter folder (loaded with transformers; default
    SmolLM2-135M-Instruct), a generation engine with token-level access, or a ``Policy``.
    ``retriever``: ``"bm25"``, ``"dense"`` or ``"hybrid"`` (the corpus is indexed now), a
    ``Retriever`` (indexed on the corpus here unless it already holds documents), or a
    ``SearchTool`` (used as it is; ``data``/``corpus`` are then not needed).
    ``data``: a BEIR folder or ``corpus.jsonl``; or ``corpus``: documents as a list or
    ``{id: Document}``. The other options are the search settings (``encoder``, ``k``,
    ``max_chars``) and episode limits of :class:`~searchrl.agent.episode.EpisodeConfig`;
    ``temperature=0`` is greedy decoding.
    """

    def __init__(
        self,
        model: str | Path | Any = None,
        retriever: str | Retriever | SearchTool = "bm25",
        *,
        data: str | Path | None = None,
        corpus: Mapping[str, Document] | Iterable[Document] | None = None,
        encoder: str | None = None,
        k: int = 5,
        max_chars: int | None = None,
        max_turns: int = 8,
        max_turn_tokens: int = 256,
        max_model_tokens: int = 1024,
        max_context_tokens: int | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        temperature: float = 0.0,
        seed: int = 0,
        device: str | None = None,
        show_progress: bool = False,
    ) -> None:
        self.episode_config = EpisodeConfig(
            max_turns=max_turns, max_turn_tokens=max_turn_tokens, max_model_tokens=max_model_tokens,
            max_context_tokens=max_context_tokens, system_prompt=system_prompt, temperature=temperature, seed=seed,
        )
        self.tool = _search_tool(
            retriever, data=data, corpus=corpus, encoder=encoder, k=k, max_chars=max_chars, seed=seed,
            show_progress=show_progress,
        )
        self.policy, self.model_name = _policy(model, device)
        self.settings: dict[str, Any] = {
            "retriever": retriever if isinstance(retriever, str) else self.tool.default_backend,
            "encoder": encoder, "k": self.tool.k, "max_chars": self.tool.max_chars,
            **self.episode_config.model_dump(include=set(_EPISODE_KEYS)),
        }
        """The search and episode settings in effect (keys of :data:`DEFAULT_SETTINGS`)."""
        self.training_run: Path | None = None
        """The training run whose settings :meth:`from_checkpoint` used."""

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        data: str | Path | None = None,
        *,
        corpus: Mapping[str, Document] | Iterable[Document] | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        device: str | None = None,
        show_progress: bool = False,
        **settings: Any,
    ) -> "Agent":
        """The agent saved by ``searchrl train agent`` (``RUN/best``, ``RUN/final``, a checkpoint folder).

        It searches and limits its turns as the run was trained; ``settings`` (``k=10``,
        ``max_turns=4``, ...; see :data:`DEFAULT_SETTINGS`) override single values. ``data``
        defaults to the corpus the run searched.
        """
        resolved, run = agent_settings(checkpoint, **settings)
        if run is None:
            raise ConfigError(
                "not a checkpoint of `searchrl train agent`: no config.yaml with tool and episode sections "
                "in its folder's parent or the one above",
                path=checkpoint,
                hint="for any other model use Agent(model=..., retriever=..., data=...)",
            )
        if data is None and corpus is None:
            if run.corpus is None or not run.corpus.exists():
                raise ConfigError(
                    f"the training run's corpus {run.corpus} is not here" if run.corpus else "the training run names no corpus",
                    path=run.directory / "config.yaml",
                    hint="pass data= (a BEIR folder or corpus.jsonl) or corpus=",
                )
            data = run.corpus
        agent = cls(
            checkpoint, data=data, corpus=corpus, temperature=temperature, seed=seed, device=device,
            show_progress=show_progress, **resolved,
        )
        agent.training_run = run.directory
        return agent

    def ask(self, question: str, *, on_message: Callable[[Message], None] | None = None) -> AgentAnswer:
        """Answer one question by searching; ``on_message`` sees each message as it appears."""
        callback = None if on_message is None else (lambda _, message: on_message(message))
        return self.ask_many([question], on_message=callback)[0]

    def ask_many(
        self, questions: Sequence[str], *, on_message: Callable[[int, Message], None] | None = None
    ) -> list[AgentAnswer]:
        """Answer several questions, generated together; ``on_message(i, message)`` follows question ``i``."""
        if isinstance(questions, str):
            raise ConfigError("ask_many() takes a list of questions", hint="use ask() for one question")
        examples = [QAExample(id=f"q{i}", question=question, answers=()) for i, question in enumerate(questions)]
        episodes = run_episodes(self.policy, self.tool, examples, self.episode_config, on_message=on_message)
        return [_answer(episode, self.tool.corpus) for episode in episodes]


def _search_tool(
    retriever: str | Retriever | SearchTool,
    *,
    data: str | Path | None,
    corpus: Mapping[str, Document] | Iterable[Document] | None,
    encoder: str | None,
    k: int,
    max_chars: int | None,
    seed: int,
    show_progress: bool,
) -> SearchTool:
    if isinstance(retriever, SearchTool):
        return retriever
    if isinstance(retriever, str) and retriever == "bm25" and encoder is not None:
        raise ConfigError("the encoder applies to dense and hybrid retrieval only", hint="drop it, or search with dense or hybrid")
    if (data is None) == (corpus is None):
        raise ConfigError("give the documents to search as data= (a BEIR folder or corpus.jsonl) or corpus=, not both")
    if data is not None:
        from searchrl.data.beir import load_corpus

        documents = load_corpus(data)
    elif isinstance(corpus, Mapping):
        documents = dict(corpus)
    else:
        documents = {doc.id: doc for doc in corpus}  # type: ignore[union-attr]
    if isinstance(retriever, Retriever):
        if not _holds_documents(retriever):
            retriever.index(list(documents.values()), show_progress=show_progress)
        return SearchTool(retriever, documents, k=k, seed=seed, max_chars=max_chars)
    config = SearchToolConfig(retriever=retriever, encoder=encoder, k=k, max_chars=max_chars, seed=seed)
    return build_search_tool(documents, config, show_progress=show_progress)


def _holds_documents(retriever: Retriever) -> bool:
    try:
        return bool(retriever.doc_ids)
    except (AttributeError, ValueError, RuntimeError):  # not indexed yet
        return False


def _policy(model: str | Path | Any, device: str | None) -> tuple[Policy, str]:
    """``(policy, model name)`` for a model name/folder, an engine or a policy."""
    if isinstance(model, Policy):
        return model, str(getattr(model, "model_name", type(model).__name__))
    if model is None or isinstance(model, (str, Path)):
        from searchrl.llm.transformers_engine import TransformersEngine
        from searchrl.resolver import DEFAULT_LLM

        name = str(model) if model is not None else DEFAULT_LLM
        return EnginePolicy(TransformersEngine(name, device=device), logprobs=False), name
    return EnginePolicy(model, logprobs=False), str(getattr(model, "model_name", type(model).__name__))


__all__ = ["Agent", "AgentAnswer", "DEFAULT_SETTINGS", "TrainingRun", "agent_settings", "find_training_run"]
