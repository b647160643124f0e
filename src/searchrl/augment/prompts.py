"""Expansion prompts: two roles (query, document) × two prompt styles (sparse, dense).

The model is asked to put its expansion inside ``<answer>…</answer>``; with ``think=True`` it
first reasons inside ``<think>…</think>``. Prompts are deliberately short (prompt prefill
dominates generation cost on a CPU). Only the answer is used (see
:mod:`searchrl.augment.parse`). The wording here is the single source of every prompt: the
augmentation job records the templates in its manifest and the trainer uses the same ones.

>>> chat = build_expansion_prompt("query", "sparse", "aspirin and heart attacks")
>>> [message["role"] for message in chat]
['system', 'user']
>>> "aspirin and heart attacks" in chat[1]["content"]
True
>>> build_expansion_prompt("query", "sparse", "aspirin", prefill=True)[-1]
{'role': 'assistant', 'content': '<answer>'}

With ``prefill`` the chat ends with an assistant message that opens the answer (``<answer>``, or
``<think>`` when thinking): every engine continues a final assistant message instead of opening
a new turn, so even a model that ignores the format instruction writes its text inside the
answer block, and the prompt needs no example of the format.
"""

from __future__ import annotations

from typing import Literal, get_args

from searchrl.errors import ConfigError
from searchrl.llm.engine import Chat

Role = Literal["query", "document"]
PromptStyle = Literal["sparse", "dense"]
"""What an expansion is written for: ``sparse`` asks for key terms and synonyms (for BM25),
``dense`` for a passage-like rewrite (for an encoder). :func:`prompt_style_for` picks it from
the retriever kind."""

ROLES: tuple[str, ...] = get_args(Role)
PROMPT_STYLES: tuple[str, ...] = get_args(PromptStyle)

_STYLE_OF_RETRIEVER = {"bm25": "sparse", "dense": "dense"}


def prompt_style_for(retriever: str) -> PromptStyle:
    """The prompt style that suits a retriever kind: bm25 -> sparse, dense -> dense.

    >>> prompt_style_for("bm25"), prompt_style_for("dense")
    ('sparse', 'dense')

    A hybrid retriever uses both, so its style must be chosen explicitly.
    """
    if retriever not in _STYLE_OF_RETRIEVER:
        raise ConfigError(
            f"no default prompt style for retriever {retriever!r}",
            hint="choose the prompt style explicitly: sparse (key terms) or dense (a passage)",
        )
    return _STYLE_OF_RETRIEVER[retriever]  # type: ignore[return-value]

TEXT_PLACEHOLDER = "{text}"
"""Where the query or document goes in a user template (replaced literally, not with ``str.format``)."""

SYSTEM_PROMPT = "You help a search engine."

# Kept short on purpose: on a CPU, prompt prefill dominates the cost of expanding a corpus, and a
# small model follows a one-line task no worse than a paragraph. With SmolLM2's tokenizer the
# whole fixed prompt (chat markup, system prompt, task, format line and answer prefill) is about
# 50 tokens; see tests/test_augment.py for the bound that is checked.
_TASKS: dict[tuple[str, str], str] = {
    ("query", "sparse"): "List key terms, synonyms and related concepts that a document answering this query contains.",
    ("document", "sparse"): "List key terms, synonyms and questions that someone looking for this document would search.",
    ("query", "dense"): "Write a short passage that a document answering this query would contain.",
    ("document", "dense"): "Summarise this document: its topic, findings and the questions it answers.",
}

_LABELS = {"query": "Query", "document": "Document"}

_FORMAT_DIRECT = "Answer inside <answer></answer>."
_FORMAT_THINK = "Think inside <think></think>, then answer inside <answer></answer>."

ANSWER_PREFILL = "<answer>"
"""Start of the assistant turn when ``think`` is off: the model continues straight into its answer."""
THINK_PREFILL = "<think>"
"""Start of the assistant turn when ``think`` is on: the model continues into its reasoning."""


def prefill_text(*, think: bool, prefill: bool) -> str:
    """What the assistant turn starts with (``""`` when ``prefill`` is off)."""
    if not prefill:
        return ""
    return THINK_PREFILL if think else ANSWER_PREFILL


def _check(role: str, style: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown expansion role {role!r}", hint=f"use one of: {', '.join(ROLES)}")
    if style not in PROMPT_STYLES:
        raise ConfigError(f"unknown prompt style {style!r}", hint=f"use one of: {', '.join(PROMPT_STYLES)}")


def expansion_prompt_template(
    role: Role, style: PromptStyle, *, think: bool = False, prefill: bool = False
) -> Chat:
    """The chat for ``role``/``style`` with :data:`TEXT_PLACEHOLDER` where the text goes.

    With ``prefill`` the chat ends with an assistant message holding :func:`prefill_text`, which
    the engines continue instead of opening a new turn. Recorded verbatim in augmentation
    manifests, so a change of wording is detected on resume.
    """
    _check(role, style)
    user = (
        f"{_TASKS[(role, style)]} {_FORMAT_THINK if think else _FORMAT_DIRECT}\n"
        f"{_LABELS[role]}: {TEXT_PLACEHOLDER}"
    )
    chat: Chat = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    if prefill:
        chat.append({"role": "assistant", "content": prefill_text(think=think, prefill=True)})
    return chat


def build_expansion_prompt(
    role: Role, style: PromptStyle, text: str, *, think: bool = False, prefill: bool = False
) -> Chat:
    """The chat asking the model to expand ``text`` (a query, or a document's ``title text``).

    ``role`` is ``"query"`` or ``"document"``; ``style`` is ``"sparse"`` (key terms and
    synonyms) or ``"dense"`` (a semantic rewrite / summary). With ``think=True`` the model is
    asked to reason in ``<think>…</think>`` before the ``<answer>…</answer>`` block. With
    ``prefill=True`` the assistant turn is already opened with ``<answer>`` (``<think>`` when
    thinking), so the completion is the answer itself. Unknown roles or styles raise
    :class:`~searchrl.errors.ConfigError`.
    """
    template = expansion_prompt_template(role, style, think=think, prefill=prefill)
    # str.replace, not str.format: documents routinely contain braces.
    return [
        {"role": m["role"], "content": m["content"].replace(TEXT_PLACEHOLDER, " ".join(str(text).split()))}
        for m in template
    ]


def truncate_words(text: str, max_words: int | None) -> str:
    """``text`` with whitespace collapsed and at most ``max_words`` words (``None``: no limit)."""
    words = str(text).split()
    if max_words is not None:
        words = words[:max_words]
    return " ".join(words)
