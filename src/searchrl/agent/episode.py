"""Multi-turn search episodes, batched across questions, kept at the token level for training.

Each round generates one assistant turn for every unfinished episode (generation stops after
``</search>`` or ``</answer>``). A turn whose last action is a search runs the search tool and
appends a user turn with the numbered passages; a turn that answers — or does neither — ends
the episode. Episodes also end at a turn limit, a budget of model-written tokens (retrieved text
does not count), a context-length limit, or when the search tool fails.

The conversation is built by appending token ids, never by re-rendering the chat, so the ids a
trainer scores are exactly the ids the policy saw and produced. The loss mask is 1 for every
token the model wrote — including the end-of-turn token (e.g. ``<|im_end|>``) that closes each
of its turns, which the model must learn to emit — and 0 for the prompt, the search results and
the template tokens the environment inserts around them. When generation stopped at a stop
string, the end-of-turn token is appended by the environment but still masked in: it is the
token the model should have produced next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from searchrl.agent.protocol import (
    ANSWER_OPEN,
    INFORMATION_OPEN,
    SYSTEM_PROMPT,
    TURN_STOP_STRINGS,
    format_information,
    parse_turn,
    user_prompt,
)
from searchrl.agent.tool import SearchTool
from searchrl.data.types import QAExample
from searchrl.errors import ConfigError, EngineError, ToolError
from searchrl.llm.engine import Message, SamplingParams

FinishReason = Literal["answered", "no_action", "turn_limit", "token_budget", "context_limit", "tool_error"]
"""Why an episode ended: an ``<answer>``; a turn with neither action (or cut by ``max_turn_tokens``,
or stopped as it began a fake ``<information>`` block); ``max_turns`` reached with a search pending;
``max_model_tokens`` spent; no room left in the context; the search tool raised."""
TurnFinish = Literal["stop", "eos", "length"]


# ----------------------------------------------------------------------------------------
# What a policy must provide


@dataclass(frozen=True)
class TurnOutput:
    """One generated assistant turn.

    ``token_ids`` are the sampled tokens: they end with the end-of-turn/EOS token when
    ``finish == "eos"``, with the token that completed a stop string when ``finish == "stop"``
    (nothing after it), and anywhere when ``finish == "length"``. ``logprobs`` (one per token,
    under the sampling distribution's logits) may be ``None`` when the backend has none.
    """

    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    finish: TurnFinish


@runtime_checkable
class Policy(Protocol):
    """The minimum the episode loop needs from a model: a tokenizer and token-level generation."""

    tokenizer: Any

    def generate_turns(self, token_id_lists: Sequence[Sequence[int]], params: SamplingParams) -> list[TurnOutput]:
        """Continue each token sequence with one assistant turn (``params.stop`` ends a turn)."""
        ...


# ----------------------------------------------------------------------------------------
# The chat template, taken apart once


class ChatFormat:
    """The pieces of a tokenizer's chat template the episode loop inserts between turns.

    Rendering a sentinel conversation reveals, for any template: the end-of-turn text that
    closes an assistant turn, the text that opens a user turn after it, and the text that closes
    that user turn and opens the next assistant turn.
    """

    _ASSISTANT = "ASSISTANTSENTINEL1729"
    _USER = "USERSENTINEL4104"

    def __init__(self, tokenizer: Any, *, end_of_turn: str | None = None, system_prompt: str = SYSTEM_PROMPT) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(
                "the tokenizer has no chat template", hint="use an instruction-tuned model or set tokenizer.chat_template"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        head = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
        full = self.render(
            [*head, {"role": "assistant", "content": self._ASSISTANT}, {"role": "user", "content": self._USER}],
            add_generation_prompt=True,
        )
        a_end = full.index(self._ASSISTANT) + len(self._ASSISTANT)
        u_start = full.index(self._USER)
        between = full[a_end:u_start]
        end_of_turn = end_of_turn if end_of_turn is not None else tokenizer.eos_token
        if not end_of_turn or not between.startswith(end_of_turn):
            raise ConfigError(
                f"cannot find the end-of-turn token: the chat template closes an assistant turn with {between!r}",
                hint="pass end_of_turn= with the token that ends an assistant turn in this template",
            )
        self.end_of_turn = end_of_turn
        self.end_of_turn_ids: list[int] = self.encode(end_of_turn)
        self.user_open = between[len(end_of_turn) :]
        """Template text after the end-of-turn token and before a user message."""
        self.user_close_assistant_open = full[u_start + len(self._USER) :]
        """Template text after a user message, through the opening of the next assistant turn."""
        without = self.render(head, add_generation_prompt=False)
        with_prompt = self.render(head, add_generation_prompt=True)
        self.generation_prompt = with_prompt[len(without) :] if with_prompt.startswith(without) else ""

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def initial_messages(self, question: str) -> list[Message]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user_prompt(question)}]

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the opening conversation, through the first assistant header."""
        return self.encode(self.render(messages, add_generation_prompt=True))

    def user_turn_ids(self, content: str) -> list[int]:
        """Ids the environment appends after a closed assistant turn: a user turn and the next assistant header."""
        return self.encode(self.user_open + content + self.user_close_assistant_open)


# ----------------------------------------------------------------------------------------
# Configuration and results


class EpisodeConfig(BaseModel):
    """Limits and sampling of an episode."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(8, ge=1, description="assistant turns at most")
    max_model_tokens: int = Field(1024, ge=1, description="budget of model-written tokens per episode")
    max_turn_tokens: int = Field(256, ge=1, description="new tokens per turn at most")
    max_context_tokens: int | None = Field(None, ge=1, description="prompt + history length at most")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    answer_temperature: float | None = Field(
        None,
        ge=0.0,
        description="temperature of the words after <answer> (None: the turn's temperature); a turn is then "
        "generated up to its <answer> tag and the answer continued at this temperature",
    )
    seed: int = 0
    system_prompt: str = SYSTEM_PROMPT
    stop_on_information: bool = Field(
        True, description="end a turn as soon as the model starts writing its own <information> block"
    )

    def stop_strings(self) -> list[str]:
        return [*TURN_STOP_STRINGS, *([INFORMATION_OPEN] if self.stop_on_information else [])]


@dataclass
class EpisodeResult:
    """One finished episode: the transcript for people and rewards, the tokens for training.

    ``token_ids[:prompt_length]`` is the opening prompt; ``mask[i] == 1`` marks a token the model
    wrote (or the end-of-turn token it should have written: what a warm-start learns to write);
    ``sampled[i] == 1`` marks the model's tokens the policy actually sampled, that is ``mask``
    less the end-of-turn tokens appended after a turn stopped on a stop string (what GRPO trains:
    nothing ever samples those, so a gradient on them only drifts them); ``logprobs[i]`` is the
    policy's log-probability of a sampled token, ``None`` where it has none (environment tokens,
    an appended end-of-turn token), and the whole list is ``None`` if the policy reports none.
    """

    question_id: str
    question: str
    answers: list[str]
    gold_ids: list[str]
    sample_key: str
    messages: list[Message]
    searches: list[dict]
    answer: str | None
    num_turns: int
    num_model_tokens: int
    finish_reason: FinishReason
    error: str | None
    prompt_length: int
    token_ids: list[int] = field(repr=False)
    mask: list[int] = field(repr=False)
    logprobs: list[float | None] | None = field(repr=False)
    sampled: list[int] = field(repr=False)

    @property
    def assistant_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    @property
    def num_searches(self) -> int:
        return len(self.searches)

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.prompt_length :]

    @property
    def completion_mask(self) -> list[int]:
        return self.mask[self.prompt_length :]

    @property
    def completion_sampled(self) -> list[int]:
        return self.sampled[self.prompt_length :]

    def to_dict(self, *, tokens: bool = True) -> dict:
        """A JSON-ready record; ``tokens=False`` leaves out the token arrays."""
        record = asdict(self)
        if not tokens:
            for key in ("token_ids", "mask", "sampled", "logprobs"):
                record.pop(key)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "EpisodeResult":
        values = dict(record)
        values.setdefault("token_ids", [])
        values.setdefault("mask", [])
        values.setdefault("logprobs", None)
        values.setdefault("sampled", list(values["mask"]))  # saved before ``sampled`` existed: all sampled
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class _State:
    example: QAExample
    key: str
    messages: list[Message]
    token_ids: list[int]
    mask: list[int]
    logprobs: list[float | None]
    prompt_length: int
    sampled: list[int]
    searches: list[dict] = field(default_factory=list)
    has_logprobs: bool = True
    model_tokens: int = 0
    turns: int = 0
    answer: str | None = None
    finish: FinishReason | None = None
    error: str | None = None

    def append(self, ids: Sequence[int], *, written_by_model: bool, sampled: bool | None = None,
               logprobs: Sequence[float | None] | None = None) -> None:
        """``sampled`` (default: ``written_by_model``) is False for model tokens the policy did not sample."""
        self.token_ids.extend(ids)
        self.mask.extend([int(written_by_model)] * len(ids))
        self.sampled.extend([int(written_by_model if sampled is None else sampled)] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [None] * len(ids))
        if written_by_model:
            self.model_tokens += len(ids)

    def result(self) -> EpisodeResult:
        return EpisodeResult(
            question_id=self.example.id,
            question=self.example.question,
            answers=list(self.example.answers),
            gold_ids=list(self.example.gold_ids),
            sample_key=self.key,
            messages=self.messages,
            searches=self.searches,
            answer=self.answer,
            num_turns=self.turns,
            num_model_tokens=self.model_tokens,
            finish_reason=self.finish or "turn_limit",
            error=self.error,
            prompt_length=self.prompt_length,
            token_ids=self.token_ids,
            mask=self.mask,
            logprobs=self.logprobs if self.has_logprobs else None,
            sampled=self.sampled,
        )


# ----------------------------------------------------------------------------------------
# The loop


def sample_key(question_id: str, n: int = 0) -> str:
    """``"<id>#<n>"``: the key of the n-th episode of a question in one batch (GRPO plays each
    question once per sample); it seeds, with the turn, the noise of that episode's searches.

    >>> sample_key("q7")
    'q7#0'
    """
    return f"{question_id}#{n}"


def search_key(sample_key: str, turn: int) -> str:
    """The key that seeds the tool's noise for the search written in assistant turn ``turn`` (1 = first)
    of the episode ``sample_key`` (``"<id>#<n>"``).

    >>> search_key("q7#0", 2)
    'q7#0:2'
    """
    return f"{sample_key}:{turn}"


def copy_numbers(examples: Sequence[QAExample]) -> list[int]:
    """Which copy of its question each example is, from 0 (GRPO repeats each question once per sample)."""
    seen: dict[str, int] = {}
    numbers = []
    for example in examples:
        numbers.append(seen.get(example.id, 0))
        seen[example.id] = numbers[-1] + 1
    return numbers


def _sample_keys(examples: Sequence[QAExample]) -> list[str]:
    """``"<id>#<n>"``: the n-th copy of a question."""
    return [sample_key(example.id, n) for example, n in zip(examples, copy_numbers(examples))]


def _check_turn(output: TurnOutput, index: int) -> None:
    if output.finish not in ("stop", "eos", "length"):
        raise EngineError(f"policy returned finish={output.finish!r} for sequence {index}")
    if output.logprobs is not None and len(output.logprobs) != len(output.token_ids):
        raise EngineError(
            f"policy returned {len(output.logprobs)} logprobs for {len(output.token_ids)} tokens (sequence {index})"
        )


def run_episodes(
    policy: Policy,
    tool: SearchTool,
    examples: Sequence[QAExample],
    config: EpisodeConfig | None = None,
    *,
    step: int = 0,
    chat_format: ChatFormat | None = None,
    on_message: Callable[[int, Message], None] | None = None,
    greedy: Sequence[bool] | None = None,
) -> list[EpisodeResult]:
    """Play one episode per example (repeat an example to sample it several times), all batched.

    ``step`` is the training step (it drives noise schedules); ``on_message(i, message)`` is
    called as each message of episode ``i`` appears (the CLI prints the transcript live).
    ``greedy[i]`` plays episode ``i`` at temperature 0 whatever ``config.temperature`` (GRPO's
    greedy group member, ``grpo.greedy_member``).
    """
    config = config or EpisodeConfig()
    fmt = chat_format or ChatFormat(policy.tokenizer, system_prompt=config.system_prompt)
    eot = fmt.end_of_turn_ids
    stops = config.stop_strings()
    # With its own answer temperature, a turn first stops at <answer>; _continue_answers writes the rest.
    split_answers = config.answer_temperature is not None and config.answer_temperature != config.temperature
    greedy = [bool(g) for g in greedy] if greedy is not None else [False] * len(examples)
    if len(greedy) != len(examples):
        raise ConfigError(f"greedy has {len(greedy)} flags for {len(examples)} episodes", hint="one flag per example")
    if split_answers and any(greedy):
        raise ConfigError("greedy episodes cannot be combined with an answer temperature of their own",
                          hint="leave answer_temperature unset, or play no episode greedily")
    turn_stops = [*stops, ANSWER_OPEN] if split_answers else stops
    max_context = config.max_context_tokens or getattr(policy, "context_length", None)

    states: list[_State] = []
    for example, key in zip(examples, _sample_keys(examples)):
        messages = fmt.initial_messages(example.question)
        ids = fmt.prompt_ids(messages)
        states.append(
            _State(example, key, messages, list(ids), [0] * len(ids), [None] * len(ids), prompt_length=len(ids),
                   sampled=[0] * len(ids))
        )
        if on_message is not None:
            for message in messages:
                on_message(len(states) - 1, message)

    for round_index in range(config.max_turns):
        ready: list[tuple[int, int]] = []  # (episode index, new-token limit for this turn)
        for i, state in enumerate(states):
            if state.finish is not None:
                continue
            # Reserve room for the end-of-turn token so the budget is never overrun.
            limit = min(config.max_turn_tokens, config.max_model_tokens - state.model_tokens - len(eot))
            if limit < 1:
                state.finish = "token_budget"
                continue
            if max_context is not None:
                room = max_context - len(state.token_ids) - len(eot)
                if room < 1:
                    state.finish = "context_limit"
                    continue
                limit = min(limit, room)
            ready.append((i, limit))
        if not ready:
            break

        params = SamplingParams(n=1, temperature=config.temperature, top_p=config.top_p, max_new_tokens=1,
                                stop=turn_stops, seed=config.seed + round_index)
        outputs = _generate_mixed(policy, [(states[i].token_ids, limit) for i, limit in ready], params,
                                  [greedy[i] for i, _ in ready])
        if split_answers:
            # a seed no turn of the episode uses: the answer's draws do not replay the turn's
            outputs = _continue_answers(policy, states, ready, outputs, config, stops,
                                        seed=config.seed + config.max_turns + round_index)

        searching: list[int] = []
        for (i, limit), output in zip(ready, outputs):
            _check_turn(output, i)
            state = states[i]
            ids, logprobs, finish = list(output.token_ids), output.logprobs, output.finish
            if len(ids) > limit:
                ids, finish = ids[:limit], "length"
                logprobs = logprobs[:limit] if logprobs is not None else None
            if logprobs is None:
                state.has_logprobs = False
            state.append(ids, written_by_model=True, logprobs=logprobs)
            text_ids = ids
            if finish == "eos":
                if ids[-len(eot) :] == eot:
                    text_ids = ids[: -len(eot)]
                else:  # stopped on another EOS id: close the turn the way the template does
                    text_ids = ids[:-1] if ids else ids
                    state.append(eot, written_by_model=True, sampled=False)
            elif finish == "stop":
                state.append(eot, written_by_model=True, sampled=False)
            text = fmt.decode(text_ids)
            state.turns += 1
            state.messages.append({"role": "assistant", "content": text})
            if on_message is not None:
                on_message(i, state.messages[-1])

            turn = parse_turn(text)
            if finish == "length":
                budget_spent = state.model_tokens + len(eot) >= config.max_model_tokens
                context_full = max_context is not None and len(state.token_ids) + len(eot) >= max_context
                state.finish = "token_budget" if budget_spent else "context_limit" if context_full else "no_action"
            elif turn.action == "answer":
                state.finish, state.answer = "answered", turn.answer
            elif turn.action == "search":
                if round_index == config.max_turns - 1:
                    state.finish = "turn_limit"
                else:
                    searching.append(i)
            else:
                state.finish = "no_action"

        if searching:
            _run_searches(tool, [states[i] for i in searching], searching, fmt, step, on_message, max_context)

    for state in states:
        if state.finish is None:
            state.finish = "turn_limit"
    return [state.result() for state in states]


def _generate_by_limit(
    policy: Policy, requests: Sequence[tuple[Sequence[int], int]], params: SamplingParams
) -> list[TurnOutput]:
    """Continue each ``(token ids, new-token limit)`` request with ``params``; outputs in request order.

    One generation call per distinct limit (usually one): a row near its budget or the context
    length must not be asked for more tokens than it has room for.
    """
    outputs: list[TurnOutput | None] = [None] * len(requests)
    for limit in sorted({limit for _, limit in requests}, reverse=True):
        group = [n for n, (_, row_limit) in enumerate(requests) if row_limit == limit]
        got = policy.generate_turns([requests[n][0] for n in group], params.model_copy(update={"max_new_tokens": limit}))
        if len(got) != len(group):
            raise EngineError(f"policy returned {len(got)} turns for {len(group)} sequences")
        for n, output in zip(group, got):
            outputs[n] = output
    return outputs  # type: ignore[return-value]


def _generate_mixed(
    policy: Policy, requests: Sequence[tuple[Sequence[int], int]], params: SamplingParams, greedy: Sequence[bool]
) -> list[TurnOutput]:
    """:func:`_generate_by_limit`, with the rows flagged in ``greedy`` continued at temperature 0."""
    if not any(greedy):
        return _generate_by_limit(policy, requests, params)
    outputs: list[TurnOutput | None] = [None] * len(requests)
    greedy_params = params.model_copy(update={"temperature": 0.0, "top_p": 1.0})
    for flag, row_params in ((False, params), (True, greedy_params)):
        rows = [n for n, g in enumerate(greedy) if g == flag]
        if rows:
            for n, output in zip(rows, _generate_by_limit(policy, [requests[n] for n in rows], row_params)):
                outputs[n] = output
    return outputs  # type: ignore[return-value]


def _continue_answers(
    policy: Policy,
    states: Sequence[_State],
    ready: Sequence[tuple[int, int]],
    outputs: Sequence[TurnOutput],
    config: EpisodeConfig,
    stops: Sequence[str],
    *,
    seed: int,
) -> list[TurnOutput]:
    """Finish the turns that stopped at ``<answer>``: the answer's words at ``config.answer_temperature``.

    Each such turn is continued from its own tokens (within the turn's token limit) and returned as
    one turn: the tokens, log-probabilities and finish of both parts joined. Other turns pass through.
    """
    merged = list(outputs)
    waiting = [
        (n, states[i].token_ids + output.token_ids, limit - len(output.token_ids))
        for n, ((i, limit), output) in enumerate(zip(ready, outputs))
        if output.finish == "stop" and output.text.endswith(ANSWER_OPEN)
    ]
    for n, _, room in waiting:
        if room < 1:  # no token left for the answer: the turn was cut by its limit
            merged[n] = TurnOutput(outputs[n].token_ids, outputs[n].text, outputs[n].logprobs, "length")
    continued = [(n, ids, room) for n, ids, room in waiting if room >= 1]
    temperature = config.answer_temperature or 0.0
    params = SamplingParams(n=1, temperature=temperature, top_p=config.top_p if temperature > 0 else 1.0,
                            max_new_tokens=1, stop=list(stops), seed=seed)
    rests = _generate_by_limit(policy, [(ids, room) for _, ids, room in continued], params) if continued else []
    for (n, _, _), rest in zip(continued, rests):
        first = outputs[n]
        both = first.logprobs + rest.logprobs if first.logprobs is not None and rest.logprobs is not None else None
        merged[n] = TurnOutput(first.token_ids + list(rest.token_ids), first.text + rest.text, both, rest.finish)
    return merged


def _run_searches(
    tool: SearchTool,
    states: list[_State],
    indices: list[int],
    fmt: ChatFormat,
    step: int,
    on_message: Callable[[int, Message], None] | None,
    max_context: int | None,
) -> None:
    """Search for every state's last query; append results, or end the episode (tool failure, no room)."""
    queries = [parse_turn(state.messages[-1]["content"]).searches[-1] for state in states]
    keys = [search_key(state.key, state.turns) for state in states]
    try:
        results: list = tool.search_batch(queries, step=step, keys=keys)
    except ToolError:
        # Attribute the failure: retry one by one so that only the failing calls end their episodes.
        results = []
        for query, key in zip(queries, keys):
            try:
                results.append(tool.search(query, step=step, key=key))
            except ToolError as err:
                results.append(err)
    for state, index, result in zip(states, indices, results):
        if isinstance(result, ToolError):
            state.finish, state.error = "tool_error", result.format()
            continue
        content = format_information(result.text)
        ids = fmt.user_turn_ids(content)
        if max_context is not None and len(state.token_ids) + len(ids) + len(fmt.end_of_turn_ids) + 1 > max_context:
            # The results would leave no room for another turn: a sequence longer than the
            # model's context could not be scored by a trainer, so the episode ends here.
            state.finish = "context_limit"
            continue
        state.searches.append({"turn": state.turns, **result.to_dict()})
        state.append(ids, written_by_model=False)
        state.messages.append({"role": "user", "content": content})
        if on_message is not None:
            on_message(index, state.messages[-1])


def answer_text_mask(result: EpisodeResult, decode: Callable[[Sequence[int]], str]) -> list[int]:
    """The episode's completion mask with the tokens after its final ``<answer>`` tag set to 0.

    What GRPO then trains is the search: when to search, the queries, when to stop and answer
    (the tokens up to and including ``<answer>``); the words of the answer keep the
    warm-start's distribution. An episode that did not end with an answer keeps its whole mask.
    ``decode`` turns token ids into text (the tokenizer's ``decode``).
    """
    mask = list(result.completion_mask)
    if result.finish_reason != "answered":
        return mask
    ids = result.completion_ids
    start = len(mask)  # the final turn: the last run of model-written tokens
    while start > 0 and mask[start - 1] == 1:
        start -= 1
    for end in range(start + 1, len(ids) + 1):
        if ANSWER_OPEN in decode(ids[start:end]):
            return mask[:end] + [0] * (len(mask) - end)
    return mask


def answer_mask(result: EpisodeResult, decode: Callable[[Sequence[int]], str]) -> list[int]:
    """1 on the words of the episode's final answer (the model's tokens after its final ``<answer>``
    tag, the closing tag included), 0 elsewhere: the complement of :func:`answer_text_mask`
    within the model's tokens. All 0 for an episode that did not end with an answer."""
    return [whole - kept for whole, kept in zip(result.completion_mask, answer_text_mask(result, decode))]


def resample_answers(
    policy: Policy,
    results: Sequence[EpisodeResult],
    config: EpisodeConfig,
    *,
    samples: int,
    seed: int,
    answer_masks: Sequence[Sequence[int]] | None = None,
    chat_format: ChatFormat | None = None,
) -> list[list[str] | None]:
    """``samples`` more answers to each answered episode, written from where its own answer began.

    Each episode is continued ``samples`` times from its tokens up to and including its final
    ``<answer>`` tag, at ``config.temperature`` and within the room its own answer had (the final
    turn's token limit, the episode's token budget, the context), in one batched call. Returns,
    per episode, the final turn's text as each sample would have written it, to be scored like
    the episode's own (a sample cut by the limit before ``</answer>`` holds no answer); ``None``
    for an episode that did not end with an answer or whose answer had no room. ``answer_masks``
    are the episodes' :func:`answer_mask` when the caller has them already.
    """
    fmt = chat_format or ChatFormat(policy.tokenizer, system_prompt=config.system_prompt)
    eot = len(fmt.end_of_turn_ids)
    max_context = config.max_context_tokens or getattr(policy, "context_length", None)
    requests: list[tuple[int, list[int], int]] = []  # (episode, tokens up to <answer>, new-token limit)
    if answer_masks is None:
        answer_masks = [answer_mask(result, fmt.decode) for result in results]
    for n, (result, words) in enumerate(zip(results, answer_masks)):
        words = list(words)
        if result.finish_reason != "answered" or 1 not in words:
            continue
        begin = words.index(1)  # the answer's first token, in completion positions
        mask = result.completion_mask
        turn_start = begin
        while turn_start > 0 and mask[turn_start - 1] == 1:
            turn_start -= 1
        context = result.token_ids[: result.prompt_length + begin]
        limit = min(config.max_turn_tokens - (begin - turn_start), config.max_model_tokens - sum(mask[:begin]) - eot)
        if max_context is not None:
            limit = min(limit, max_context - len(context) - eot)
        if limit >= 1:
            requests.extend((n, context, limit) for _ in range(samples))
    params = SamplingParams(n=1, temperature=config.temperature, top_p=config.top_p, max_new_tokens=1,
                            stop=config.stop_strings(), seed=seed)
    outputs = _generate_by_limit(policy, [(ids, limit) for _, ids, limit in requests], params) if requests else []
    turns: list[list[str] | None] = [None] * len(results)
    for (n, _, _), output in zip(requests, outputs):
        final_turn = results[n].assistant_turns[-1]
        written = final_turn[: final_turn.rindex(ANSWER_OPEN) + len(ANSWER_OPEN)]
        turns[n] = [*(turns[n] or []), written + output.text]
    return turns


def rollout_batch(
    results: Sequence[EpisodeResult], *, completion_masks: Sequence[list[int]] | None = None,
    answer_masks: Sequence[list[int]] | None = None,
    answer_advantages: Sequence[float] | None = None,
) -> dict[str, list]:
    """Episodes in the shape TRL's ``GRPOTrainer`` expects back from a ``rollout_func``.

    ``env_mask`` is the completion part of each mask (or ``completion_masks`` when given, e.g.
    from :func:`answer_text_mask`) kept to the tokens the policy sampled: an end-of-turn token
    appended after a stop string is never in the loss (``answer_mask`` likewise); ``logprobs``
    holds the policy's sampling log-probability of each completion token, ``None`` where there is
    none (tool results, the end-of-turn token added after a stop string) — TRL turns those into
    NaN and leaves them out of its importance-sampling correction. It is ``None`` altogether when
    the policy gave no log-probabilities (TRL then computes its own). ``episode`` carries each episode's record
    (without token arrays) to the reward functions; ``answer_mask`` (only when ``answer_masks``
    is given, see :func:`answer_mask`) where searchrl's trainer applies answer credit, and
    ``answer_advantage`` (only when ``answer_advantages`` is given) the advantage each episode's
    answer words get there instead of the one the trainer computes.
    """
    logprobs = (
        [[None if lp is None else float(lp) for lp in r.logprobs[r.prompt_length :]] for r in results]  # type: ignore[index]
        if all(r.logprobs is not None for r in results)
        else None
    )
    masks = [r.completion_mask for r in results] if completion_masks is None else [list(m) for m in completion_masks]
    if len(masks) != len(results):
        raise ValueError(f"{len(masks)} completion masks for {len(results)} episodes")
    masks = [_sampled_only(mask, r, "completion") for mask, r in zip(masks, results)]
    batch = {
        "prompt_ids": [r.token_ids[: r.prompt_length] for r in results],
        "completion_ids": [r.completion_ids for r in results],
        "logprobs": logprobs,
        "env_mask": masks,
        "episode": [r.to_dict(tokens=False) for r in results],
    }
    if answer_masks is not None:
        if len(answer_masks) != len(results):
            raise ValueError(f"{len(answer_masks)} answer masks for {len(results)} episodes")
        batch["answer_mask"] = [_sampled_only(m, r, "answer") for m, r in zip(answer_masks, results)]
    if answer_advantages is not None:
        if answer_masks is None or len(answer_advantages) != len(results):
            raise ValueError(f"{len(answer_advantages)} answer advantages for {len(results)} episodes "
                             f"({'with' if answer_masks is not None else 'without'} answer masks)")
        batch["answer_advantage"] = [float(a) for a in answer_advantages]
    return batch


def _sampled_only(mask: Sequence[int], result: EpisodeResult, kind: str) -> list[int]:
    sampled = result.completion_sampled
    if len(mask) != len(sampled):
        raise ValueError(f"a {kind} mask of {len(mask)} tokens for episode {result.sample_key!r} "
                         f"of {len(sampled)} completion tokens")
    return [int(m) * s for m, s in zip(mask, sampled)]


# ----------------------------------------------------------------------------------------
# Policies


def _cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    """End position of the earliest stop string in ``text``, or ``None``."""
    found = [(text.find(s), -len(s), s) for s in stops if s and s in text]
    if not found:
        return None
    start, _, stop = min(found)
    return start + len(stop)


class ScriptedPolicy:
    """A policy that plays canned turns — for tests and examples — through the real token path.

    ``scripts`` maps a question (as it appears in the prompt) to its assistant turns, or is a
    function ``(prompt_text, turn_index) -> turn text``. Each turn is cut after the first stop
    string like a real engine would, tokenised with the real tokenizer, ended with the EOS token
    when no stop string fired, and truncated at ``max_new_tokens``. Every token gets ``logprob``.
    """

    def __init__(
        self,
        tokenizer: Any,
        scripts: Mapping[str, Sequence[str]] | Callable[[str, int], str],
        *,
        logprob: float = -0.5,
        end_of_turn: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.logprob = logprob
        self.format = ChatFormat(tokenizer, end_of_turn=end_of_turn)
        self.calls: list[int] = []
        """How many sequences each call received (tests check batching with it)."""

    def _turn_text(self, prompt_text: str) -> str:
        turn_index = prompt_text.count(self.format.generation_prompt) - 1 if self.format.generation_prompt else 0
        if callable(self.scripts):
            text = self.scripts(prompt_text, turn_index)
        else:
            matches = [q for q in self.scripts if q in prompt_text]
            if not matches:
                raise ConfigError("no script for this prompt", hint=f"prompt starts {prompt_text[:200]!r}")
            turns = self.scripts[max(matches, key=len)]
            text = turns[turn_index] if turn_index < len(turns) else ""
        # A prompt that ends inside the turn (an answer continued on its own) gets the rest of it.
        written = prompt_text.rsplit(self.format.generation_prompt, 1)[-1] if self.format.generation_prompt else ""
        return text[len(written):] if written and text.startswith(written) else text

    def generate_turns(self, token_id_lists: Sequence[Sequence[int]], params: SamplingParams) -> list[TurnOutput]:
        self.calls.append(len(token_id_lists))
        outputs = []
        for ids in token_id_lists:
            text = self._turn_text(self.format.decode(ids))
            cut = _cut_at_stop(text, params.stop)
            if cut is not None:
                tokens, finish = self.format.encode(text[:cut]), "stop"
            else:
                tokens, finish = self.format.encode(text) + self.format.end_of_turn_ids, "eos"
            if len(tokens) > params.max_new_tokens:
                tokens, finish = tokens[: params.max_new_tokens], "length"
            outputs.append(
                TurnOutput(tokens, self.format.decode(tokens), [self.logprob] * len(tokens), finish)  # type: ignore[arg-type]
            )
        return outputs


class EnginePolicy:
    """A policy backed by any engine with token-level generation (``generate_tokens``).

    The transformers engine (and vLLM) provide it; an HTTP engine does not. ``logprobs=False``
    skips the extra forward pass that scores the sampled tokens (evaluation does not need them).
    """

    def __init__(self, engine: Any, *, logprobs: bool = True) -> None:
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(
                f"{type(engine).__name__} gives no token-level access to its model",
                hint="agent episodes need the transformers (or vllm) engine",
            )
        self.engine = engine
        self.tokenizer = tokenizer
        self.logprobs = logprobs
        config = getattr(getattr(engine, "model", None), "config", None)
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)

    def generate_turns(self, token_id_lists: Sequence[Sequence[int]], params: SamplingParams) -> list[TurnOutput]:
        groups = self.engine.generate_tokens(
            [list(ids) for ids in token_id_lists], params.model_copy(update={"n": 1}), logprobs=self.logprobs
        )
        outputs = []
        for group in groups:
            completion = group[0]
            if completion.stop is not None:
                finish: TurnFinish = "stop"
            else:
                finish = "eos" if completion.finish_reason == "stop" else "length"
            outputs.append(TurnOutput(list(completion.token_ids), completion.text, completion.logprobs, finish))
        return outputs
