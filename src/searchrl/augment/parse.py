"""Turn a model's completion into an expansion string; malformed output never raises.

The strict rule (used for training rewards and, by default, everywhere): after removing
``<think>…</think>`` blocks, the completion must hold exactly one ``<answer>…</answer>`` block
with some text in it. Anything else gives an empty expansion and a ``reason``.

Untrained small models often ignore the tags. ``lenient=True`` salvages text from those
completions — the text after an unclosed ``<answer>``, the text before a stray ``</answer>``,
the first of several answer blocks, or the whole completion (tags removed) when there are no
usable tags —
while still reporting the completion as malformed (``ok=False``) so it is counted. Reasoning
is never salvaged: an unclosed ``<think>`` yields an empty expansion in both modes.

Answer prefill: when the prompt already opened the assistant turn with ``<answer>`` (or
``<think>``), pass that text as ``prefill``; it is put back in front of the completion before
parsing, so the same rules apply to what the model saw as its own output. In that case an
``<answer>`` still open at the end of the completion counts as closed: generation stops at
``</answer>`` or at the end of the turn, and the engines drop the end-of-turn token, so a model
that ends its turn right after the answer text has given a well-formed answer. (A completion cut
by the token budget reads the same way; its words are kept, like any answer cut to
``max_words``.) Writing a second ``<answer>`` tag, or reasoning that never closes, is still
malformed.

Strict is the default because a trained policy must learn the format, and because the reward
seen in training must come from the same string that evaluation indexes. Use lenient only to
measure or deploy models that were never trained on the format.

>>> parse_expansion("<think>hmm</think><answer> aspirin   platelets </answer>")
ParsedExpansion(text='aspirin platelets', ok=True, reason='ok', truncated=False)
>>> parse_expansion("aspirin platelets").reason
'no_answer'
>>> parse_expansion("aspirin platelets", lenient=True).text
'aspirin platelets'
>>> parse_expansion(" aspirin platelets", prefill="<answer>")
ParsedExpansion(text='aspirin platelets', ok=True, reason='ok', truncated=False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_WORDS = 64

OK = "ok"
EMPTY_ANSWER = "empty_answer"
NO_ANSWER = "no_answer"
UNCLOSED_THINK = "unclosed_think"
UNCLOSED_ANSWER = "unclosed_answer"
MISSING_OPEN_TAG = "missing_open_tag"
MULTIPLE_ANSWERS = "multiple_answers"
MISORDERED_TAGS = "misordered_tags"
NOT_TEXT = "not_text"

REASONS = (
    OK,
    EMPTY_ANSWER,
    NO_ANSWER,
    UNCLOSED_THINK,
    UNCLOSED_ANSWER,
    MISSING_OPEN_TAG,
    MULTIPLE_ANSWERS,
    MISORDERED_TAGS,
    NOT_TEXT,
)
"""Every value :attr:`ParsedExpansion.reason` can take."""

_THINK_BLOCK = re.compile(r"<\s*think\s*>.*?<\s*/\s*think\s*>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<\s*/?\s*(?:think|answer)\s*>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParsedExpansion:
    """The expansion taken from one completion.

    ``text`` is what gets appended to the query or document ("" when nothing usable);
    ``ok`` is True only for a well-formed completion; ``reason`` is one of :data:`REASONS`;
    ``truncated`` says the answer was cut to ``max_words``.
    """

    text: str
    ok: bool
    reason: str
    truncated: bool = False

    @property
    def recovered(self) -> bool:
        """Malformed, yet lenient parsing salvaged some text."""
        return not self.ok and bool(self.text)


def _visible_text(completion: str) -> tuple[str, bool]:
    """The completion without its reasoning, and whether an unclosed ``<think>`` cut it short."""
    text = _THINK_BLOCK.sub(" ", completion)
    # A lone "</think>" means the reasoning began before the completion (e.g. a chat template
    # that opens <think> itself): everything up to it is reasoning.
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        return text[: opened.start()], True
    return text, False


def _clean(text: str, max_words: int | None) -> tuple[str, bool]:
    words = _ANY_TAG.sub(" ", text).split()
    if max_words is not None and len(words) > max_words:
        return " ".join(words[:max_words]), True
    return " ".join(words), False


def parse_expansion(
    completion: str, *, max_words: int | None = DEFAULT_MAX_WORDS, lenient: bool = False, prefill: str = ""
) -> ParsedExpansion:
    """Extract the expansion from ``completion`` (see the module docstring for the rules).

    ``prefill`` is the text the prompt put at the start of the assistant turn (``"<answer>"``,
    ``"<think>"`` or ``""``); when given, the end of the completion closes an open answer.
    Whitespace is collapsed and the result is cut to ``max_words`` words (``None``: no cap).
    Never raises, whatever the input.
    """
    if not isinstance(completion, str):
        return ParsedExpansion("", False, NOT_TEXT)
    visible, think_unclosed = _visible_text(prefill + completion)
    if prefill and not think_unclosed:
        opens = list(_ANSWER_OPEN.finditer(visible))
        if len(opens) == 1 and not _ANSWER_CLOSE.search(visible):
            # The turn ended inside the prefilled (or self-opened) answer: that is its end.
            visible += "</answer>"
    opens = list(_ANSWER_OPEN.finditer(visible))
    closes = list(_ANSWER_CLOSE.finditer(visible))

    salvage = ""
    if len(opens) == 1 and len(closes) == 1 and opens[0].end() <= closes[0].start():
        answer, truncated = _clean(visible[opens[0].end(): closes[0].start()], max_words)
        if answer:
            return ParsedExpansion(answer, True, OK, truncated)
        return ParsedExpansion("", False, EMPTY_ANSWER)
    if len(opens) > 1 or len(closes) > 1:
        reason = MULTIPLE_ANSWERS
        first_open = opens[0].end() if opens else 0
        first_close = next((c.start() for c in closes if c.start() >= first_open), len(visible))
        salvage = visible[first_open:first_close]
    elif len(opens) == 1 and len(closes) == 1:
        reason = MISORDERED_TAGS
        salvage = visible  # the tags mean nothing here; keep the words, drop the tags
    elif len(opens) == 1:
        reason = UNCLOSED_THINK if think_unclosed else UNCLOSED_ANSWER
        salvage = visible[opens[0].end():]
    elif len(closes) == 1:
        reason = MISSING_OPEN_TAG
        salvage = visible[: closes[0].start()]
    else:
        reason = UNCLOSED_THINK if think_unclosed else NO_ANSWER
        salvage = visible

    if not lenient:
        return ParsedExpansion("", False, reason)
    text, truncated = _clean(salvage, max_words)
    return ParsedExpansion(text, False, reason, truncated)
