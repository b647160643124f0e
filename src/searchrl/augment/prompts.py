"""Expansion prompts: two roles (query, document) × two retriever kinds (sparse, dense).

The model is asked to put its expansion inside ``<answer>…</answer>``; with ``think=True`` it
first reasons inside ``<think>…</think>``. Only the answer is used (see
:mod:`searchrl.augment.parse`). The wording here is the single source of every prompt: the
augmentation job records the templates in its manifest and the trainer uses the same ones.

>>> chat = build_expansion_prompt("query", "sparse", "aspirin and heart attacks")
>>> [message["role"] for message in chat]
['system', 'user']
>>> "aspirin and heart attacks" in chat[1]["content"]
True
"""

from __future__ import annotations

from typing import Literal, get_args

from searchrl.errors import ConfigError
from searchrl.llm.engine import Chat

Role = Literal["query", "document"]
RetrieverKind = Literal["sparse", "dense"]

ROLES: tuple[str, ...] = get_args(Role)
RETRIEVER_KINDS: tuple[str, ...] = get_args(RetrieverKind)

TEXT_PLACEHOLDER = "{text}"
"""Where the query or document goes in a user template (replaced literally, not with ``str.format``)."""

SYSTEM_PROMPT = (
    "You help a search engine match questions with the documents that answer them. "
    "You add useful words to a text; you never repeat the instructions."
)

_TASKS: dict[tuple[str, str], str] = {
    ("query", "sparse"): (
        "A keyword search engine (BM25) will look for documents that answer the search query below. "
        "Write the words that a relevant document is likely to contain: key terms, synonyms, technical "
        "names and closely related concepts. End with one short sentence explaining what the query is "
        "looking for."
    ),
    ("document", "sparse"): (
        "A keyword search engine (BM25) indexes the document below. Write the words that someone searching "
        "for this document would type: its key terms, synonyms, technical names and the questions it "
        "answers. End with one short sentence saying what the document is about."
    ),
    ("query", "dense"): (
        "A semantic search engine compares the meaning of queries and documents. Rewrite the search query "
        "below as a short passage stating what a document that answers it would say, in plain, specific "
        "language."
    ),
    ("document", "dense"): (
        "A semantic search engine compares the meaning of queries and documents. Summarise the document "
        "below in a few sentences: its main topic, its findings and the questions it answers."
    ),
}

_LABELS = {"query": "Search query", "document": "Document"}

_FORMAT_DIRECT = (
    "Reply with the added words only, inside <answer> and </answer>, for example:\n"
    "<answer>your words here</answer>"
)
_FORMAT_THINK = (
    "First think briefly inside <think> and </think>, then give the added words inside <answer> and "
    "</answer>, for example:\n"
    "<think>your reasoning</think>\n<answer>your words here</answer>"
)


def _check(role: str, retriever: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown expansion role {role!r}", hint=f"use one of: {', '.join(ROLES)}")
    if retriever not in RETRIEVER_KINDS:
        raise ConfigError(f"unknown retriever kind {retriever!r}", hint=f"use one of: {', '.join(RETRIEVER_KINDS)}")


def expansion_prompt_template(role: Role, retriever: RetrieverKind, *, think: bool = False) -> Chat:
    """The chat for ``role``/``retriever`` with :data:`TEXT_PLACEHOLDER` where the text goes.

    Recorded verbatim in augmentation manifests, so a change of wording is detected on resume.
    """
    _check(role, retriever)
    user = (
        f"{_TASKS[(role, retriever)]}\n\n"
        f"{_LABELS[role]}: {TEXT_PLACEHOLDER}\n\n"
        f"{_FORMAT_THINK if think else _FORMAT_DIRECT}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def build_expansion_prompt(role: Role, retriever: RetrieverKind, text: str, *, think: bool = False) -> Chat:
    """The chat asking the model to expand ``text`` (a query, or a document's ``title text``).

    ``role`` is ``"query"`` or ``"document"``; ``retriever`` is ``"sparse"`` (keywords plus one
    explaining sentence) or ``"dense"`` (a semantic rewrite / summary). With ``think=True`` the
    model is asked to reason in ``<think>…</think>`` before the ``<answer>…</answer>`` block.
    Unknown roles or kinds raise :class:`~searchrl.errors.ConfigError`.
    """
    template = expansion_prompt_template(role, retriever, think=think)
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
