"""The tag protocol between the agent and its search tool, and the parsers that read it.

An assistant turn may reason in ``<think>…</think>`` and then ends with exactly one action:
``<search>query</search>`` (the environment answers in the next user turn, wrapped in
``<information>…</information>``) or ``<answer>…</answer>`` (the episode ends).

The system prompt deliberately never names the information tag: telling a model what the tool's
results look like makes it write fake result blocks itself. A model-written ``<information>`` tag is
therefore always a format violation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

THINK, SEARCH, ANSWER, INFORMATION = "think", "search", "answer", "information"
MODEL_TAGS = (THINK, SEARCH, ANSWER)
ACTION_TAGS = (SEARCH, ANSWER)

SEARCH_CLOSE = "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFORMATION_OPEN = "<information>"
TURN_STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)
"""Generation of one assistant turn stops right after either closing tag."""

SYSTEM_PROMPT = (
    "You answer questions by looking things up in a document collection.\n"
    "Work in turns. In each turn you may first reason briefly inside <think> </think>. "
    "Then do exactly one of two things and stop:\n"
    "- search: write a short keyword query inside <search> </search>. "
    "The top matching passages will be shown to you in the next message.\n"
    "- answer: when the passages contain what you need, write only the short final answer "
    "inside <answer> </answer>.\n"
    "If the passages do not help, search again with different words. "
    "Give one answer only, never a list of guesses."
)


def user_prompt(question: str) -> str:
    """The first user turn of an episode."""
    return f"Question: {question.strip()}"


def format_information(results_text: str) -> str:
    """The user turn that carries search results back to the model."""
    return f"{INFORMATION_OPEN}\n{results_text.strip()}\n</information>"


_TAG = re.compile(r"<(/?)(think|search|answer|information)>", re.IGNORECASE)
_BLOCK = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL | re.IGNORECASE) for tag in (*MODEL_TAGS, INFORMATION)}
# Markdown decoration touching a tag: **<answer>, `<search>`, ```\n<think>, </answer>**, ...
_MARKDOWN_BEFORE = re.compile(r"(\*\*|__|`|#+ ?)\s*</?(?:think|search|answer)>", re.IGNORECASE)
_MARKDOWN_AFTER = re.compile(r"</?(?:think|search|answer)>[ \t]*(\*\*|__|`)", re.IGNORECASE)


def blocks(text: str, tag: str) -> list[str]:
    """Contents of every complete ``<tag>…</tag>`` block, stripped, in order.

    >>> blocks("<search> a </search> x <search>b</search>", "search")
    ['a', 'b']
    """
    return [m.group(1).strip() for m in _BLOCK[tag].finditer(text)]


def last_search_query(text: str) -> str | None:
    """The query of the last complete ``<search>`` block in a turn, or ``None``.

    >>> last_search_query("<think>hm</think><search>oxygen tank</search>")
    'oxygen tank'
    >>> last_search_query("<answer>42</answer>") is None
    True
    """
    found = blocks(text, SEARCH)
    return found[-1] if found else None


def extract_answer(text: str) -> str | None:
    """The content of the last complete ``<answer>`` block, or ``None``.

    >>> extract_answer("<think>easy</think><answer> Jim Lovell </answer>")
    'Jim Lovell'
    """
    found = blocks(text, ANSWER)
    return found[-1] if found else None


def has_information_tag(text: str) -> bool:
    """True if ``text`` contains an ``<information>`` or ``</information>`` tag (model-written fakes).

    >>> has_information_tag("<information>made up</information><answer>x</answer>")
    True
    """
    return any(m.group(2).lower() == INFORMATION for m in _TAG.finditer(text))


Action = Literal["search", "answer", "none"]


@dataclass(frozen=True)
class ParsedTurn:
    """What one assistant turn contains and every way it breaks the protocol."""

    text: str
    thoughts: tuple[str, ...]
    searches: tuple[str, ...]
    answer: str | None
    action: Action
    """The last complete action block: what the environment acts on."""
    problems: tuple[str, ...]
    """Format problems; empty means the turn is well formed."""

    @property
    def well_formed(self) -> bool:
        return not self.problems


def _tag_problems(text: str) -> list[str]:
    """Balance and order of the tags: no nesting, no stray or unclosed tags, think before the action."""
    problems: list[str] = []
    stack: list[str] = []
    seen: list[str] = []
    for match in _TAG.finditer(text):
        closing, tag = match.group(1) == "/", match.group(2).lower()
        if tag == INFORMATION:
            continue  # reported separately
        if not closing:
            if stack:
                problems.append(f"<{tag}> opened inside <{stack[-1]}>")
            if tag == THINK and any(t in ACTION_TAGS for t in seen):
                problems.append("<think> after the action")
            if tag in ACTION_TAGS and any(t in ACTION_TAGS for t in seen):
                problems.append("more than one action in a turn")
            stack.append(tag)
            seen.append(tag)
        elif stack and stack[-1] == tag:
            stack.pop()
        elif tag in stack:
            while stack[-1] != tag:
                problems.append(f"<{stack.pop()}> is never closed")
            stack.pop()
        else:
            problems.append(f"</{tag}> without a matching <{tag}>")
    problems += [f"<{tag}> is never closed" for tag in reversed(stack)]
    if seen.count(THINK) > 1:
        problems.append("more than one <think> block")
    return problems


def parse_turn(text: str) -> ParsedTurn:
    """Parse one assistant turn and list its format problems.

    A well-formed turn is: optional ``<think>…</think>``, then exactly one ``<search>…</search>``
    or ``<answer>…</answer>``, and nothing but whitespace after the closing tag; no markdown
    around tags; no ``<information>`` tag (only the environment writes those).

    >>> turn = parse_turn("<think>need data</think>\\n<search>crew names</search>")
    >>> turn.action, turn.searches, turn.problems
    ('search', ('crew names',), ())
    >>> parse_turn("**<answer>42</answer>**").problems
    ('markdown around a tag', 'text after the final closing tag')
    """
    problems = _tag_problems(text)
    if has_information_tag(text):
        problems.append("model-written <information> tag")
    if _MARKDOWN_BEFORE.search(text) or _MARKDOWN_AFTER.search(text):
        problems.append("markdown around a tag")

    searches = tuple(blocks(text, SEARCH))
    answers = blocks(text, ANSWER)
    last_search = max((m.end() for m in _BLOCK[SEARCH].finditer(text)), default=-1)
    last_answer = max((m.end() for m in _BLOCK[ANSWER].finditer(text)), default=-1)
    action: Action = "none"
    if last_search >= 0 or last_answer >= 0:
        action = "search" if last_search > last_answer else "answer"
    if action == "search" and last_answer >= 0:
        problems.append("search after an answer")

    stripped = text.rstrip()
    if action == "none":
        problems.append("turn ends without </search> or </answer>")
    elif not (stripped.endswith(SEARCH_CLOSE) or stripped.endswith(ANSWER_CLOSE)):
        problems.append("text after the final closing tag")
    if any(not query for query in searches):
        problems.append("empty search query")
    if answers and not answers[-1]:
        problems.append("empty answer")
    return ParsedTurn(
        text=text,
        thoughts=tuple(blocks(text, THINK)),
        searches=searches,
        answer=answers[-1] if answers else None,
        action=action,
        problems=tuple(dict.fromkeys(problems)),  # de-duplicated, order kept
    )


def final_answer(assistant_turns: Sequence[str]) -> str | None:
    """The answer of an episode: the last turn's answer, only if that turn *ends* with the answer.

    A transcript that searches after answering, or whose last turn is not an answer, has none.

    >>> final_answer(["<search>q</search>", "<answer>Lovell</answer>"])
    'Lovell'
    >>> final_answer(["<answer>Lovell</answer>", "<search>q</search>"]) is None
    True
    """
    if not assistant_turns:
        return None
    last = parse_turn(assistant_turns[-1])
    return last.answer if last.action == "answer" else None
