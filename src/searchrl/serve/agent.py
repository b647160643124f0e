"""The search agent as an OpenAI-compatible chat service.

``POST /v1/chat/completions`` runs the agent's search loop on the last user message (earlier
messages and any system prompt from the client are ignored: the agent keeps the system prompt it
was trained with) and answers a normal chat completion whose message content is the agent's
final answer. What it did is in an extra top-level ``searchrl`` field::

    {"choices": [{"message": {"role": "assistant", "content": "Jim Lovell"}, "finish_reason": "stop"}],
     "searchrl": {"answer", "finish_reason", "searches": [{"query", "doc_ids", ...}],
                  "sources": [{"id", "title", "text"}], "transcript": [messages]}}

With the ``openai`` client it reads ``response.searchrl`` (or ``response.model_extra["searchrl"]``).
An episode that ends without an answer has empty content and ``finish_reason`` ``"length"`` (a
turn, token or context limit) or ``"stop"``; a failing search tool is a 502, never an answer.
``GET /v1/models`` lists the one model; ``GET /health`` says the server is up.

Concurrent requests queue in front of one worker thread that owns the model
(:class:`~searchrl.serve.http.MicroBatcher`): requests that arrive while it generates are played
together as one batch of episodes in the next round (up to ``max_batch``), so the model is never
used by two threads and a busy server still generates in batches. Streaming is not supported.
"""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from searchrl.agent.episode import EpisodeConfig, EpisodeResult, Policy, run_episodes
from searchrl.agent.tool import SearchTool
from searchrl.data.types import QAExample
from searchrl.serve.http import BodySizeLimit, MicroBatcher, ServerBusy, error_response, install_error_handlers

LENGTH_FINISHES = {"turn_limit", "token_budget", "context_limit"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request the agent uses; the others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = None
    n: int | None = 1
    stream: bool | None = False


def _text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content or [] if part.get("type") == "text")


def episode_details(episode: EpisodeResult, tool: SearchTool) -> dict[str, Any]:
    """The ``searchrl`` field of a completion: answer, finish reason, searches, sources, transcript."""
    seen = dict.fromkeys(doc_id for search in episode.searches for doc_id in search["doc_ids"])
    sources = [
        {"id": doc_id, "title": tool.corpus[doc_id].title, "text": tool.corpus[doc_id].text}
        for doc_id in seen
        if doc_id in tool.corpus
    ]
    searches = [{key: search[key] for key in ("turn", "query", "doc_ids", "backend", "noise", "before_noise") if key in search}
                for search in episode.searches]
    return {
        "answer": episode.answer,
        "finish_reason": episode.finish_reason,
        "num_turns": episode.num_turns,
        "searches": searches,
        "sources": sources,
        "transcript": episode.messages,
    }


def create_app(
    policy: Policy,
    tool: SearchTool,
    episode_config: EpisodeConfig | None = None,
    *,
    model_name: str = "searchrl-agent",
    max_batch: int = 8,
    max_pending: int = 256,
    max_question_chars: int = 8192,
    max_body_bytes: int = 1_048_576,
) -> Any:
    """The FastAPI app serving the agent (``policy`` searching with ``tool``).

    ``episode_config`` holds the turn and token limits and the default temperature and seed; a
    request's ``temperature`` and ``seed`` override those two.
    """
    from fastapi import FastAPI

    episode_config = episode_config or EpisodeConfig()

    def play(key: tuple[float, int], questions: list[str]) -> list[EpisodeResult]:
        temperature, seed = key
        config = episode_config.model_copy(update={"temperature": temperature, "seed": seed})
        examples = [QAExample(id=f"request-{i}", question=q, answers=()) for i, q in enumerate(questions)]
        return run_episodes(policy, tool, examples, config)

    batcher = MicroBatcher(play, max_batch=max_batch, max_pending=max_pending, name="searchrl-agent")

    @asynccontextmanager
    async def lifespan(app):  # noqa: ARG001
        yield
        batcher.close()

    app = FastAPI(title="searchrl agent", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
    app.state.batcher = batcher
    created = int(time.time())

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, "retriever": tool.default_backend, "k": tool.k,
                "max_batch": max_batch}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "searchrl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        """Answer the last user message by searching; the final answer is the message content."""
        if request.stream:
            return error_response(400, "streaming is not supported by this server: send stream=false")
        if request.n not in (None, 1):
            return error_response(400, f"n={request.n}: this server answers one choice per request")
        users = [m for m in request.messages if m.role == "user"]
        question = _text(users[-1].content).strip() if users else ""
        if not question:
            return error_response(400, "no user message with text: the agent answers the last user message")
        if len(question) > max_question_chars:
            return error_response(413, f"the question has {len(question):,} characters; the limit is {max_question_chars:,}")
        temperature = episode_config.temperature if request.temperature is None else request.temperature
        seed = episode_config.seed if request.seed is None else request.seed
        try:
            [episode] = await batcher.run((temperature, seed), [question])
        except ServerBusy as err:
            return error_response(503, f"server busy: {err}; retry later")
        except Exception as err:  # noqa: BLE001 - the model or the tool failed
            return error_response(500, f"the agent failed: {type(err).__name__}: {err}")
        if episode.finish_reason == "tool_error":
            return error_response(502, f"search failed: {episode.error}")
        finish = "length" if episode.finish_reason in LENGTH_FINISHES else "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": episode.answer or ""},
                "finish_reason": finish,
                "logprobs": None,
            }],
            "usage": {
                # what the model read (prompt and search results) and what it wrote
                "prompt_tokens": len(episode.token_ids) - episode.num_model_tokens,
                "completion_tokens": episode.num_model_tokens,
                "total_tokens": len(episode.token_ids),
            },
            "searchrl": episode_details(episode, tool),
        }

    return app
