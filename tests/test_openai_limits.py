"""The OpenAI-compatible engine against hostile or broken servers: a total deadline per request, a
cap on the response body and on each completion, and a warning before a key goes out over plain http."""

from __future__ import annotations

import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from searchrl.errors import EngineError
from searchrl.llm.engine import SamplingParams

CHAT = [[{"role": "user", "content": "hi"}]]
GREEDY = SamplingParams(max_new_tokens=8)


def _reply(text: str) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return json.dumps({"choices": [choice]}).encode()


class HostileServer:
    """``mode`` decides how the next POST is answered (see :meth:`Handler.do_POST`)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.payload = _reply("fine")
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    self._answer(server)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _answer(self, server):
                if server.mode == "dribble-body":  # headers at once, then one byte every 0.2 s
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.flush()
                    for _ in range(25):  # 5 s, then the connection closes
                        if server.stop.wait(0.2):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                elif server.mode == "dribble-headers":  # the status line and headers, one byte at a time
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 25:
                        if server.stop.wait(0.2):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                elif server.mode == "huge-chunked":  # no Content-Length: the size shows only while reading
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    block = b"x" * (1 << 16)
                    for _ in range(1000):  # 64 MiB
                        if server.stop.is_set():
                            return
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                    self.wfile.write(b"0\r\n\r\n")
                else:  # "ok" / "huge-declared": the payload with its Content-Length
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    length = 300 << 20 if server.mode == "huge-declared" else len(server.payload)
                    self.send_header("Content-Length", str(length))
                    self.end_headers()
                    self.wfile.write(server.payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def hostile():
    server = HostileServer()
    yield server
    server.stop.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def _engine(server, **options):
    from searchrl.llm.openai_engine import OpenAIEngine

    options.setdefault("max_retries", 0)
    options.setdefault("concurrency", 1)
    return OpenAIEngine("m", base_url=server.url, **options)


@pytest.mark.parametrize("mode", ["dribble-body", "dribble-headers"])
def test_a_dribbling_server_fails_at_the_total_deadline(hostile, mode):
    hostile.mode = mode
    engine = _engine(hostile, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(EngineError, match="1 s deadline"):
        engine.generate(CHAT, GREEDY)
    assert time.monotonic() - started < 2.5


def test_retries_each_get_the_deadline_and_the_total_stays_bounded(hostile):
    hostile.mode = "dribble-body"
    engine = _engine(hostile, timeout=0.5, max_retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(EngineError, match="after 3 attempts"):
        engine.generate(CHAT, GREEDY)
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("mode", ["huge-declared", "huge-chunked"])
def test_a_body_over_the_size_cap_is_refused_without_reading_it_all(hostile, mode):
    hostile.mode = mode
    engine = _engine(hostile, max_response_bytes=1 << 20, max_retries=3, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(EngineError, match="larger than"):
        engine.generate(CHAT, GREEDY)
    assert time.monotonic() - started < 5  # refused at once, and not retried


def test_a_completion_far_longer_than_max_new_tokens_is_an_error(hostile):
    hostile.payload = _reply("word " * 20000)  # 100 000 characters for 8 tokens
    with pytest.raises(EngineError, match="100000 characters") as caught:
        _engine(hostile).generate(CHAT, GREEDY)
    assert "max_chars_per_token" in caught.value.format()
    hostile.payload = _reply("a normal answer")
    assert _engine(hostile).generate(CHAT, GREEDY) == [["a normal answer"]]


def test_an_api_key_over_plain_http_to_another_host_warns_once(monkeypatch):
    from searchrl.llm import openai_engine
    from searchrl.llm.openai_engine import OpenAIEngine

    monkeypatch.setattr(openai_engine, "_WARNED_HOSTS", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OpenAIEngine("m", base_url="http://10.1.2.3:8000", api_key="secret")
        OpenAIEngine("m", base_url="http://10.1.2.3:8000/v1", api_key="secret")
        OpenAIEngine("m", base_url="https://api.example.com", api_key="secret")
        OpenAIEngine("m", base_url="http://127.0.0.1:8000", api_key="secret")
        OpenAIEngine("m", base_url="http://localhost:8000", api_key="secret")
        OpenAIEngine("m", base_url="http://[::1]:8000", api_key="secret")
        OpenAIEngine("m", base_url="http://10.9.9.9:8000")  # no key, nothing to leak
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "10.1.2.3" in messages[0] and "plain http" in messages[0]
    assert "secret" not in messages[0]
