"""Generation through any OpenAI-compatible server (``POST {base_url}/chat/completions``).

vLLM, SGLang, llama.cpp, TGI and hosted APIs all speak this protocol. Connection errors, 5xx
and 429 replies are retried with exponential backoff; anything else that is not the expected
JSON raises :class:`~searchrl.errors.EngineError` naming the server.

Stop strings: servers strip the matched stop string from the text. vLLM (``stop_reason``) and
SGLang (``matched_stop``) say which one matched, and it is put back. A server that does not say
is asked again without ``stop`` and the text is cut here, so every engine returns completions
that end *with* their stop string.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from searchrl.errors import EngineError
from searchrl.llm.engine import Chat, GenerationEngine, SamplingParams

_RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIEngine(GenerationEngine):
    """Chat completions from an OpenAI-compatible server.

    ``base_url`` is the API root, e.g. ``http://localhost:8000/v1`` (``/v1`` is added to a bare
    ``http://host:port``); it defaults to ``$OPENAI_BASE_URL``. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (local servers usually need none). ``concurrency`` prompts are in flight
    at once; a failing request is tried ``max_retries`` more times, waiting ``backoff * 2**k``
    seconds.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        import httpx

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise EngineError(
                "no server address for the openai engine",
                hint="pass --base-url http://host:port/v1 or set OPENAI_BASE_URL",
            )
        self.base_url = api_root(base_url)
        self.model_name = str(model)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.extra_body = dict(extra_body or {})
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        # None until a reply shows whether this server reports which stop string matched.
        self._server_reports_stop: bool | None = None

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """For each chat, ``params.n`` completion texts (see :class:`GenerationEngine`)."""
        if self.concurrency == 1 or len(prompts) <= 1:
            return [self._complete(chat, params) for chat in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda chat: self._complete(chat, params), prompts))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    # ---------------------------------------------------------------------------------------

    def _complete(self, chat: Chat, params: SamplingParams) -> list[str]:
        texts: list[str] = []
        # Some servers ignore ``n``; ask again for what is missing, a bounded number of times.
        for _ in range(params.n):
            missing = params.n - len(texts)
            if missing == 0:
                break
            texts.extend(self._request_choices(chat, params, missing))
        if len(texts) < params.n:
            raise EngineError(f"{self._url} returned {len(texts)} completions, {params.n} were asked for")
        return texts[: params.n]

    def _request_choices(self, chat: Chat, params: SamplingParams, n: int) -> list[str]:
        stops = [s for s in params.stop if s]
        server_side_stop = bool(stops) and self._server_reports_stop is not False
        reply = self._post(self._body(chat, params, n, stops if server_side_stop else []))
        texts = []
        for choice in _choices(reply, self._url):
            text = _choice_text(choice, self._url)
            if server_side_stop:
                matched = _matched_stop(choice)
                if matched is _UNREPORTED and choice.get("finish_reason") == "stop":
                    # The server stopped without saying on what: ask again without server-side
                    # stop strings for this and every later request, and cut the text here.
                    self._server_reports_stop = False
                    return self._request_choices(chat, params, n)
                if isinstance(matched, str) and matched in stops and not text.endswith(matched):
                    text += matched
                if matched is not _UNREPORTED:
                    self._server_reports_stop = True
            elif stops:
                text = _cut_at_first_stop(text, stops)
            texts.append(text)
        return texts

    @property
    def _url(self) -> str:
        return self.base_url + "/chat/completions"

    def _body(self, chat: Chat, params: SamplingParams, n: int, stops: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": list(chat),
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if stops:
            body["stop"] = stops
        if params.seed is not None:
            body["seed"] = params.seed
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        body.update(self.extra_body)
        return body

    def _post(self, body: dict[str, Any]) -> Any:
        import httpx

        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.post(self._url, json=body)
            except httpx.TransportError as err:  # refused, reset, DNS, timeout
                problem = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in _RETRY_STATUS:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise EngineError(
                    f"{self._url} answered HTTP {response.status_code}: {response.text[:300]}",
                    hint="check the model name, the API key and the request options",
                )
            try:
                return response.json()
            except ValueError:
                raise EngineError(
                    f"{self._url} did not answer JSON: {response.text[:200]!r}",
                    hint="is base_url the /v1 root of an OpenAI-compatible server?",
                ) from None
        raise EngineError(
            f"cannot get a completion from {self._url} after {self.max_retries + 1} attempts ({problem})",
            hint="start the server, or check --base-url",
        )


_UNREPORTED = object()


def _matched_stop(choice: dict) -> Any:
    """The stop string a server says it matched: vLLM ``stop_reason``, SGLang ``matched_stop``."""
    for key in ("stop_reason", "matched_stop"):
        if key in choice:
            return choice[key]
    return _UNREPORTED


def _choices(reply: Any, url: str) -> list[dict]:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise EngineError(f"{url} answered JSON without a 'choices' list: {str(reply)[:200]}")
    return choices


def _choice_text(choice: dict, url: str) -> str:
    message = choice.get("message")
    if not isinstance(message, dict) or "content" not in message:
        raise EngineError(f"{url} answered a choice without message.content: {str(choice)[:200]}")
    content = message["content"]
    if content is None:
        return ""
    if not isinstance(content, str):
        raise EngineError(f"{url} answered non-text content: {str(content)[:200]}")
    return content


def _cut_at_first_stop(text: str, stops: list[str]) -> str:
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


def api_root(base_url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; any URL with a path is kept as it is."""
    url = base_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EngineError(f"not an http(s) URL: {base_url!r}", hint="e.g. http://localhost:8000/v1")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    elif parts.path in ("", "/"):
        url += "/v1"
    return url
