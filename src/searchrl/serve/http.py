"""What the retrieval and agent servers share: errors as JSON, a body-size limit, a batching
queue in front of the model or index, and starting uvicorn (in the foreground or a thread).

Every error a server sends is OpenAI-shaped JSON, which the ``openai`` client also reads::

    {"error": {"message": "...", "type": "invalid_request_error", "code": 422}}
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from searchrl.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


# ----------------------------------------------------------------------------------------
# Errors as JSON


def error_response(status: int, message: str, kind: str | None = None):
    """A JSON error response: ``{"error": {"message", "type", "code"}}``."""
    from fastapi.responses import JSONResponse

    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _validation_message(errors: Sequence[dict]) -> str:
    parts = []
    whole_body = False
    for error in errors:
        location = [str(p) for p in error.get("loc", ()) if p != "body"]
        whole_body = whole_body or not location
        parts.append((".".join(location) + ": " if location else "") + str(error.get("msg", "invalid")))
    hint = " (send a JSON object with Content-Type: application/json)" if whole_body else ""
    return "invalid request: " + "; ".join(parts) + hint


def install_error_handlers(app: Any) -> None:
    """Send validation and HTTP errors (404, 405, ...) in the one JSON error shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):  # noqa: ARG001
        return error_response(422, _validation_message(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):  # noqa: ARG001
        return error_response(exc.status_code, str(exc.detail))


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, before the app parses them.

    A declared ``Content-Length`` is checked up front; a chunked body is read up to the limit and
    handed on only if it fits.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, f"request body is larger than this server's limit of {self.max_bytes:,} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ----------------------------------------------------------------------------------------
# One worker in front of the back-end, merging what concurrent requests ask for


class ServerBusy(Exception):
    """The queue in front of the back-end is full."""


@dataclass
class _Job:
    key: Hashable
    items: list
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Run ``function(key, items) -> results`` on one worker thread, merging concurrent calls.

    Callers :meth:`submit` a list of items under a key (e.g. the ``topk`` of a search); while the
    worker is busy, new jobs queue up, and the next round runs every queued job with the first
    one's key as one call (up to ``max_batch`` items). Nothing waits for a batch to fill: an idle
    server answers a lone request at once. One worker also means the back-end (a model, an index)
    is never used by two threads at a time. A full queue raises :class:`ServerBusy`.

    >>> batcher = MicroBatcher(lambda key, items: [key * x for x in items], max_batch=8)
    >>> batcher.submit(10, [1, 2]).result()
    [10, 20]
    >>> batcher.close()
    """

    def __init__(
        self,
        function: Callable[[Hashable, list], Sequence],
        *,
        max_batch: int,
        max_pending: int = 4096,
        name: str = "searchrl-batcher",
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self.function = function
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.name = name
        self.batches = 0
        """Calls made to ``function`` so far."""
        self._jobs: deque[_Job] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, items: Sequence) -> Future:
        """Queue ``items``; the future's result is the list of their results, in order."""
        job = _Job(key, list(items))
        with self._cond:
            if self._pending + len(job.items) > self.max_pending and self._pending:
                raise ServerBusy(f"{self._pending:,} items are already waiting")
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._jobs.append(job)
            self._pending += len(job.items)
            self._cond.notify()
        return job.future

    async def run(self, key: Hashable, items: Sequence) -> list:
        """:meth:`submit` and await the results from an event loop."""
        return await asyncio.wrap_future(self.submit(key, items))

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch, size, skipped = [first], len(first.items), deque()
            while self._jobs:
                job = self._jobs.popleft()
                if job.key == first.key and size + len(job.items) <= self.max_batch:
                    batch.append(job)
                    size += len(job.items)
                else:
                    skipped.append(job)
            self._jobs = skipped
            self._pending -= size
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            items = [item for job in batch for item in job.items]
            try:
                results = list(self.function(batch[0].key, items))
                if len(results) != len(items):
                    raise RuntimeError(f"the back-end returned {len(results)} results for {len(items)} items")
            except BaseException as err:  # noqa: BLE001 - every caller must hear about it
                for job in batch:
                    job.future.set_exception(err)
                continue
            finally:
                self.batches += 1
            start = 0
            for job in batch:
                job.future.set_result(results[start : start + len(job.items)])
                start += len(job.items)


# ----------------------------------------------------------------------------------------
# Starting uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); a taken port is a ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio turns Nagle off (TCP_NODELAY) only on IPPROTO_TCP sockets, and
    # with it on, a keep-alive client waits ~40 ms (delayed ACK) for every response
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror or err}",
            hint="pick another --port, or stop the process that holds it",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info"), lifespan="on")
    return uvicorn.Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def serve_forever(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_level: str = "info",
                  on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (Ctrl-C stops it cleanly)."""
    sock = bind_socket(host, port)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        _uvicorn_server(app, log_level).run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """Serve an app from a thread of this process, on a free port by default (tests, benchmarks, demos).

    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> @app.get("/ping")
    ... def ping():
    ...     return {"pong": True}
    >>> import httpx
    >>> with BackgroundServer(app) as server:
    ...     httpx.get(server.url + "/ping").json()
    {'pong': True}
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, *, log_level: str = "warning") -> None:
        self.app = app
        self.host, self.port = host, port
        self.log_level = log_level
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._socket = bind_socket(self.host, self.port)
        self.url = url_of(self._socket)
        self._server = _uvicorn_server(self.app, self.log_level)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="searchrl-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
