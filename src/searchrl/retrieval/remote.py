"""A retriever on another machine: any server speaking Search-R1's ``POST /retrieve`` protocol.

``searchrl serve retriever`` is one; Search-R1's own dense server is another (its BM25 server
sends documents without ids, which this client cannot use). Training and evaluation then index
nothing locally, as Search-R1 users do with a large corpus.

Each search is one HTTP call with a timeout; connection failures, timeouts and 429/502/503/504
answers are retried with exponential backoff. Where the retriever is named by URL (the agent's
``--retriever``, ``tool.retriever`` of a training config), ``$SEARCHRL_RETRIEVER_TIMEOUT``
(seconds per attempt, default 30) and ``$SEARCHRL_RETRIEVER_RETRIES`` (default 3) set them. A server that stays unreachable, answers an error
or sends something malformed raises :class:`~searchrl.errors.ToolError`, so an agent episode ends
as a tool failure (never scored as a wrong answer).

>>> is_remote_retriever("http://127.0.0.1:8000"), is_remote_retriever("bm25")
(True, False)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from searchrl.data.types import Document
from searchrl.errors import ConfigError, ToolError
from searchrl.retrieval.base import Hit, Retriever, check_search_args

RETRYABLE_STATUS = {429, 502, 503, 504}
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
START_HINT = "start one with `searchrl serve retriever --data DIR --port PORT`, or check the URL"


def is_remote_retriever(spec: str | None) -> bool:
    """True when a retriever setting names a server (``http://HOST:PORT``) rather than a kind."""
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def base_url(url: str) -> str:
    """``http://HOST:PORT`` from a server URL, with or without a trailing ``/`` or ``/retrieve``."""
    if not is_remote_retriever(url):
        raise ConfigError(f"not a retrieval server URL: {url!r}", hint="use http://HOST:PORT")
    url = url.rstrip("/")
    return url[: -len("/retrieve")] if url.endswith("/retrieve") else url


class RemoteRetriever(Retriever):
    """Search through a retrieval server; the index lives there.

    ``timeout`` is seconds per attempt; a failed attempt is retried ``retries`` times, waiting
    ``backoff``, then twice as long each time. A batch larger than the server's ``max_queries``
    (read from ``/health`` when the server has one) is sent in several calls.
    """

    name = "remote"

    def __init__(
        self, url: str, *, timeout: float | None = None, retries: int | None = None, backoff: float | None = None
    ) -> None:
        timeout = timeout if timeout is not None else _env_number("SEARCHRL_RETRIEVER_TIMEOUT", DEFAULT_TIMEOUT, float)
        retries = retries if retries is not None else _env_number("SEARCHRL_RETRIEVER_RETRIES", DEFAULT_RETRIES, int)
        backoff = backoff if backoff is not None else DEFAULT_BACKOFF
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError("timeout must be positive, retries and backoff not negative")
        self.url = base_url(url)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._client: Any = None
        self._health: dict | None = None

    # -- HTTP ---------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _request(self, method: str, path: str, payload: Any = None):
        """One call with retries; returns the response (any status that is not retried)."""
        import httpx

        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.client.request(method, self.url + path, json=payload)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout:g} s"
                continue
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                continue
            return response
        raise ToolError(
            f"retrieval server {self.url} failed after {self.retries + 1} attempts ({problem})", hint=START_HINT
        )

    def health(self) -> dict:
        """The server's ``/health`` (``{}`` for a server without one, such as Search-R1's)."""
        if self._health is None:
            response = self._request("GET", "/health")
            if response.status_code == 404:
                self._health = {}
            elif response.status_code != 200:
                raise ToolError(f"retrieval server {self.url}/health: HTTP {response.status_code}: {_error_message(response)}")
            else:
                self._health = _json(response, self.url + "/health")
                if not isinstance(self._health, dict):
                    raise ToolError(f"retrieval server {self.url}/health did not answer a JSON object")
        return self._health

    # -- searching ----------------------------------------------------------------------

    def retrieve(self, queries: Sequence[str], k: int = 10, *, return_scores: bool = True) -> list[list[dict]]:
        """The server's answer items (``{"document": {...}, "score": s}``), one list per query."""
        check_search_args(queries, k)
        queries = list(queries)
        step = int(self._health.get("max_queries") or 0) if self._health else 0
        step = step if step > 0 else max(len(queries), 1)
        results: list[list[dict]] = []
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            payload = {"queries": chunk, "topk": int(k), "return_scores": return_scores}
            response = self._request("POST", "/retrieve", payload)
            if response.status_code != 200:
                raise ToolError(
                    f"retrieval server {self.url} refused the search: HTTP {response.status_code}: {_error_message(response)}"
                )
            answer = _json(response, self.url + "/retrieve")
            lists = answer.get("result") if isinstance(answer, dict) else None
            if not isinstance(lists, list) or len(lists) != len(chunk) or not all(isinstance(x, list) for x in lists):
                raise ToolError(f"retrieval server {self.url} answered a malformed result for {len(chunk)} queries")
            results.extend(lists)
        return results

    def search(self, queries: Sequence[str], k: int = 10, *, show_progress: bool = False) -> list[list[Hit]]:
        """Top-``k`` ``(doc_id, score)`` lists from the server, one per query."""
        hits = []
        for items in self.retrieve(queries, k, return_scores=True):
            ranking = []
            for item in items:
                document = item.get("document") if isinstance(item, dict) else None
                if not isinstance(document, dict) or "id" not in document or "score" not in item:
                    raise ToolError(
                        f"retrieval server {self.url} sent a result without a document id or score",
                        hint="the server must send document ids (Search-R1's BM25 server does not)",
                    )
                ranking.append((str(document["id"]), float(item["score"])))
            hits.append(ranking)
        return hits

    def check(self, corpus: Mapping[str, Document] | None = None, *, k: int | None = None) -> "RemoteRetriever":
        """Reach the server now, and refuse one whose corpus size or ``topk`` limit does not fit.

        Checks what ``/health`` tells (a server without one passes); raises
        :class:`~searchrl.errors.ToolError` when the server cannot be reached.
        """
        health = self.health()
        served, max_topk = health.get("num_documents"), health.get("max_topk")
        if corpus is not None and isinstance(served, int) and served != len(corpus):
            raise ConfigError(
                f"the retrieval server {self.url} serves {served:,} documents but the local corpus has {len(corpus):,}",
                hint="start the server on the same --data the agent reads",
            )
        if k is not None and isinstance(max_topk, int) and k > max_topk:
            raise ConfigError(f"k={k} is above the retrieval server's limit of {max_topk} results per query")
        return self

    # -- what a remote index cannot do ----------------------------------------------------

    def index(self, documents: Iterable[Document], doc_expansions: Mapping[str, str] | None = None, *,
              show_progress: bool = True) -> "RemoteRetriever":
        raise ConfigError("a remote retriever is indexed by its server", hint="searchrl serve retriever --data DIR")

    def save(self, directory: str | Path) -> None:
        raise ConfigError("a remote retriever has no local index to save")

    @classmethod
    def load(cls, directory: str | Path) -> "RemoteRetriever":
        raise ConfigError("a remote retriever is opened by URL", hint="RemoteRetriever('http://HOST:PORT')")

    @property
    def doc_ids(self) -> list[str]:
        raise ConfigError("a remote retriever does not list its documents")

    def __repr__(self) -> str:
        return f"RemoteRetriever({self.url!r})"


def _env_number(name: str, default: float, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"${name} must be a {kind.__name__}, got {raw!r}") from None


def _json(response: Any, where: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ToolError(f"{where} did not answer JSON (is this a retrieval server?)") from None


def _error_message(response: Any) -> str:
    """The message of a JSON error (``{"error": {"message"}}`` or FastAPI's ``{"detail"}``), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "detail" in body:
            return str(body["detail"])[:500]
    return str(body)[:200]
