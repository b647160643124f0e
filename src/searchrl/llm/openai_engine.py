"""Generation through any OpenAI-compatible server (``POST {base_url}/chat/completions``).

vLLM, SGLang, llama.cpp, TGI and hosted APIs all speak this protocol. Connection errors, 5xx
and 429 replies are retried with exponential backoff; anything else that is not the expected
JSON raises :class:`~searchrl.errors.EngineError` naming the server.

Limits, so a broken or hostile server cannot hang a job or fill a disk:

* ``timeout`` is a *total* deadline per attempt, measured on a monotonic clock from sending the
  request to the last byte of the reply (httpx's own timeout is per read, which a server
  dribbling one byte at a time never trips). An attempt past it is abandoned and counts as a
  failed attempt (retried like a dropped connection), so one request takes at most about
  ``(max_retries + 1) × timeout`` plus the backoff waits.
* ``max_response_bytes`` caps a reply body (after decompression); a larger one is an error at
  once, whether announced by ``Content-Length`` or found while reading, and is not retried.
* A completion longer than ``max_new_tokens × max_chars_per_token`` characters (plus the longest
  stop string) is an error, not truncated: the server ignored ``max_tokens``, and a silently cut
  text would be stored as if it were the model's answer.
* An API key about to go over plain ``http://`` to a host that is not this machine gives one
  warning per host (the key itself is never printed).

Stop strings: servers strip the matched stop string from the text. vLLM (``stop_reason``) and
SGLang (``matched_stop``) say which one matched, and it is put back. A server that does not say
is asked again without ``stop`` and the text is cut here, so every engine returns completions
that end *with* their stop string.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from searchrl.errors import EngineError
from searchrl.llm.engine import Chat, GenerationEngine, SamplingParams, chat_template_options, continues_assistant_turn

_RETRY_STATUS = {429, 500, 502, 503, 504}
_WARNED_HOSTS: set[str] = set()
"""Hosts already warned about an API key over plain http (once per process)."""


class _DeadlineExceeded(Exception):
    """An attempt did not get its whole reply within the engine's total deadline."""


class OpenAIEngine(GenerationEngine):
    """Chat completions from an OpenAI-compatible server.

    ``base_url`` is the API root, e.g. ``http://localhost:8000/v1`` (``/v1`` is added to a bare
    ``http://host:port``); it defaults to ``$OPENAI_BASE_URL``. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (local servers usually need none). ``concurrency`` prompts are in flight
    at once; a failing request is tried ``max_retries`` more times, waiting ``backoff * 2**k``
    seconds. ``timeout`` (total seconds per attempt), ``max_response_bytes`` and
    ``max_chars_per_token`` are the limits described in the module docstring.
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
        max_response_bytes: int = 32 << 20,
        max_chars_per_token: float = 32.0,
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
        if timeout <= 0 or max_response_bytes < 1 or max_chars_per_token <= 0:
            raise EngineError("timeout, max_response_bytes and max_chars_per_token must be positive")
        self.timeout = float(timeout)
        self.max_response_bytes = int(max_response_bytes)
        self.max_chars_per_token = float(max_chars_per_token)
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if api_key:
            _warn_if_key_travels_in_clear(self.base_url)
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
        limit = int(params.max_new_tokens * self.max_chars_per_token) + max((len(s) for s in stops), default=0)
        for choice in _choices(reply, self._url):
            text = _choice_text(choice, self._url)
            if len(text) > limit:
                raise EngineError(
                    f"{self._url} returned a completion of {len(text)} characters for max_new_tokens="
                    f"{params.max_new_tokens} (the cap is {limit})",
                    hint="the server ignores max_tokens; check it, or raise max_chars_per_token if this "
                    "model's tokens really are that long",
                )
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
        if continues_assistant_turn(chat):
            # Servers open a new assistant turn unless told to continue the final message (a
            # prefill such as <answer>); vLLM and SGLang take the chat-template switches.
            body.update(chat_template_options(chat))
        body.update(self.extra_body)
        return body

    def _post(self, body: dict[str, Any]) -> Any:
        import httpx

        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, payload = self._exchange(body)
            except _DeadlineExceeded:
                problem = f"no complete reply within the {self.timeout:g} s deadline"
                continue
            except httpx.TransportError as err:  # refused, reset, DNS, timeout
                problem = f"{type(err).__name__}: {err}"
                continue
            text = payload.decode("utf-8", errors="replace")
            if status in _RETRY_STATUS:
                problem = f"HTTP {status}: {text[:200]}"
                continue
            if status >= 400:
                raise EngineError(
                    f"{self._url} answered HTTP {status}: {text[:300]}",
                    hint="check the model name, the API key and the request options",
                )
            try:
                return json.loads(payload)
            except ValueError:
                raise EngineError(
                    f"{self._url} did not answer JSON: {text[:200]!r}",
                    hint="is base_url the /v1 root of an OpenAI-compatible server?",
                ) from None
        raise EngineError(
            f"cannot get a completion from {self._url} after {self.max_retries + 1} attempts ({problem})",
            hint="start the server, or check --base-url",
        )

    def _exchange(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """``(status, body)`` of one POST, within the total deadline (else :class:`_DeadlineExceeded`).

        The exchange runs in a helper thread that the caller stops waiting for at the deadline:
        body reads check the clock after every chunk, but a server dribbling its *headers* keeps
        httpx inside one call. An abandoned exchange ends on its own at its next chunk, or when
        httpx's per-read timeout (the time left at its start) fires; its result is dropped.
        """
        deadline = time.monotonic() + self.timeout
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def attempt() -> None:
            try:
                outcome["reply"] = self._read_reply(body, deadline)
            except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = err
            finally:
                finished.set()

        threading.Thread(target=attempt, name="searchrl-openai-request", daemon=True).start()
        if not finished.wait(max(deadline - time.monotonic(), 0.0) + 0.05):
            raise _DeadlineExceeded
        if "error" in outcome:
            raise outcome["error"]
        return outcome["reply"]

    def _read_reply(self, body: dict[str, Any], deadline: float) -> tuple[int, bytes]:
        import httpx

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded
        with self._client.stream("POST", self._url, json=body, timeout=httpx.Timeout(remaining)) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise self._too_large(f"it announces {int(declared):,} bytes")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise self._too_large(f"more than {self.max_response_bytes:,} bytes arrived")
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    def _too_large(self, detail: str) -> EngineError:
        return EngineError(
            f"{self._url} sent a reply larger than the {self.max_response_bytes:,}-byte cap ({detail})",
            hint="the server is misbehaving; raise max_response_bytes only if such replies are expected",
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


def _warn_if_key_travels_in_clear(api_root_url: str) -> None:
    """Warn once per host when an API key would go unencrypted to another machine."""
    parts = urlsplit(api_root_url)
    host = parts.hostname or ""
    if parts.scheme != "http" or _is_loopback(host) or host in _WARNED_HOSTS:
        return
    _WARNED_HOSTS.add(host)
    warnings.warn(
        f"the API key for {host} will be sent over plain http, unencrypted; use an https:// --base-url, "
        "or a server on this machine",
        stacklevel=1,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
