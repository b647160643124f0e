"""The demo's back-end: a corpus, BM25 with and without expansions, a BEIR split's judgments, and an agent.

:class:`Demo` does the work (plain Python, testable without a server); :func:`create_app` puts it
behind a small FastAPI app that serves one page (``static/index.html``, plain HTML and JavaScript)
and its JSON/event-stream API:

* ``GET /api/info`` — the corpus, split, which expansions are loaded, whether an agent is there;
* ``GET /api/queries`` — the split's queries, to pick one;
* ``GET /api/compare?q=TEXT&query_id=ID&k=10`` — BM25 on the query vs BM25 on the expanded query
  over the expanded documents: both top-k lists, each document's rank in the other list and the
  places it gained with expansions, its relevance from the qrels, nDCG@10 / recall@100 of both
  when the query is judged;
* ``GET /api/ask?question=TEXT`` — the agent's episode as server-sent events: ``start``, one
  ``turn`` per assistant turn (``think``, ``searches``, ``answer``) or search result, then ``done``
  (answer, finish reason, searches with their document ids, sources) or ``error``.

Example (no server needed):

>>> from searchrl.data.types import Document
>>> docs = {"d1": Document("d1", "The oxygen tank exploded."), "d2": Document("d2", "The crew landed.")}
>>> demo = Demo(docs, queries={"q1": "what blew up"}, qrels={"q1": {"d1": 1}}, doc_expansions={"d1": "blew up"})
>>> result = demo.compare(query_id="q1")
>>> [row["id"] for row in result["columns"]["bm25"]], [row["id"] for row in result["columns"]["expanded"]]
([], ['d1'])
>>> result["columns"]["expanded"][0]["relevance"], result["metrics"]["expanded"]["ndcg@10"]
(1, 1.0)
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from searchrl.data.types import Document, Qrels, query_text
from searchrl.errors import ConfigError, DataError, SearchRLError

STATIC_DIR = Path(__file__).parent / "static"
DEPTH = 100
"""How deep each ranking is searched to tell where a document went in the other column."""
MAX_K = 50
MAX_TEXT = 2000
"""Longest query or question accepted (characters)."""
MEASURES = ("ndcg@10", "recall@100")


def _snippet(doc: Document, size: int = 280) -> str:
    text = " ".join(doc.text.split())
    return text if len(text) <= size else text[:size].rstrip() + " …"


def _check_text(text: str | None, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ConfigError(f"the {what} is empty", hint=f"type a {what}")
    if len(text) > MAX_TEXT:
        raise ConfigError(f"the {what} is {len(text)} characters long", hint=f"at most {MAX_TEXT}")
    return text


class Demo:
    """What the page shows.

    ``corpus`` is indexed twice with BM25: as it is, and with ``doc_expansions`` appended (the
    same index when there are none). ``queries``/``qrels`` are a BEIR split's (optional): they
    fill the query picker and mark relevant documents. ``query_expansions`` are appended to the
    split's queries on the expanded side. ``agent`` is a :class:`searchrl.agent.api.Agent`, or
    ``None`` for a retrieval-only page.
    """

    def __init__(
        self,
        corpus: Mapping[str, Document],
        *,
        queries: Mapping[str, str] | None = None,
        qrels: Qrels | None = None,
        split: str | None = None,
        doc_expansions: Mapping[str, str] | None = None,
        query_expansions: Mapping[str, str] | None = None,
        agent: Any = None,
        name: str = "",
    ) -> None:
        from searchrl.retrieval.bm25 import BM25Retriever

        self.corpus = dict(corpus)
        self.queries = dict(queries or {})
        self.qrels = dict(qrels or {})
        self.split = split
        self.doc_expansions = dict(doc_expansions or {})
        self.query_expansions = dict(query_expansions or {})
        self.agent = agent
        self.name = name
        self.plain = BM25Retriever().index(self.corpus.values(), show_progress=False)
        self.expanded = (
            BM25Retriever().index(self.corpus.values(), self.doc_expansions, show_progress=False)
            if self.doc_expansions else self.plain
        )
        self._id_by_text = {text.strip().lower(): qid for qid, text in self.queries.items()}
        self._agent_lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        data: str | Path,
        *,
        split: str | None = None,
        doc_expansions: str | Path | None = None,
        query_expansions: str | Path | None = None,
        model: str | Path | None = None,
        device: str | None = None,
        seed: int = 0,
    ) -> "Demo":
        """Read a BEIR folder (or a bare corpus), expansion files, and load the agent's model if given.

        ``split`` defaults to ``dev`` when the folder has it, else its first split, else none (a
        corpus without queries: the comparison then takes typed queries only). The agent searches
        and limits its turns the way the training run of ``model`` did, if it is a run's checkpoint.
        """
        from searchrl.data.beir import available_splits, load_beir, load_corpus
        from searchrl.data.expansions import load_expansions

        data = Path(data)
        if not data.exists():
            raise DataError("data not found", path=data, hint="point --data at a BEIR folder or a corpus.jsonl")
        splits = available_splits(data) if data.is_dir() else []
        if split is None and splits:
            split = "dev" if "dev" in splits else splits[0]
        queries: dict[str, str] = {}
        qrels: Qrels = {}
        if split is not None:
            dataset = load_beir(data, split)
            corpus, queries, qrels = dataset.corpus, dataset.queries, dataset.qrels
        else:
            corpus = load_corpus(data)
        doc_map = _load_checked(load_expansions, doc_expansions, corpus, "documents")
        if query_expansions is not None and not queries:
            raise ConfigError(
                "--query-expansions needs queries, and this data has no qrels split",
                path=data, hint="use a BEIR folder with queries.jsonl and qrels/<split>.tsv",
            )
        query_map = _load_checked(load_expansions, query_expansions, queries, f"{split} queries")
        demo = cls(
            corpus, queries=queries, qrels=qrels, split=split, doc_expansions=doc_map, query_expansions=query_map,
            name=data.resolve().name,
        )
        if model is not None:
            demo.agent = _load_agent(model, demo, device=device, seed=seed)
        return demo

    # -- what the page asks for ---------------------------------------------------------
    def info(self) -> dict[str, Any]:
        agent = self.agent
        return {
            "name": self.name,
            "documents": len(self.corpus),
            "split": self.split,
            "queries": len(self.queries),
            "doc_expansions": len(self.doc_expansions),
            "query_expansions": len(self.query_expansions),
            "agent": None if agent is None else {"model": getattr(agent, "model_name", None),
                                                 "settings": _jsonable(getattr(agent, "settings", {}))},
        }

    def query_list(self) -> list[dict[str, Any]]:
        return [
            {"id": qid, "text": text, "relevant": sum(1 for g in self.qrels.get(qid, {}).values() if g > 0),
             "expanded": qid in self.query_expansions}
            for qid, text in self.queries.items()
        ]

    def compare(self, query: str | None = None, *, query_id: str | None = None, k: int = 10) -> dict[str, Any]:
        """BM25 vs BM25 + expansions for a typed query or a split query (by id)."""
        if not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}")
        if query_id:
            if query_id not in self.queries:
                raise DataError(f"no query {query_id!r} in the {self.split or 'loaded'} split")
            query = query if query and query.strip() else self.queries[query_id]
        query = _check_text(query, "query")
        if not query_id:
            query_id = self._id_by_text.get(query.lower())
        expansion = self.query_expansions.get(query_id) if query_id else None
        expanded_query = query_text(query, expansion)
        depth = min(DEPTH, len(self.corpus))
        plain_hits = self.plain.search([query], k=depth)[0]
        expanded_hits = self.expanded.search([expanded_query], k=depth)[0]
        judged = self.qrels.get(query_id, {}) if query_id else {}
        plain_rank = {doc_id: rank for rank, (doc_id, _) in enumerate(plain_hits, start=1)}
        expanded_rank = {doc_id: rank for rank, (doc_id, _) in enumerate(expanded_hits, start=1)}

        def rows(hits, other_rank, *, expanded: bool) -> list[dict[str, Any]]:
            out = []
            for rank, (doc_id, score) in enumerate(hits[:k], start=1):
                doc = self.corpus[doc_id]
                other = other_rank.get(doc_id)
                out.append({
                    "rank": rank, "id": doc_id, "title": doc.title, "snippet": _snippet(doc), "score": float(score),
                    "relevance": judged.get(doc_id), "other_rank": other,
                    # places gained with expansions (negative: lost), seen from either column
                    "change": None if other is None else (other - rank if expanded else rank - other),
                    "expansion": self.doc_expansions.get(doc_id) if expanded else None,
                })
            return out

        shown = {doc_id for doc_id, _ in plain_hits[:k]} | {doc_id for doc_id, _ in expanded_hits[:k]}
        missed = [
            {"id": doc_id, "title": self.corpus[doc_id].title, "relevance": grade,
             "rank_bm25": plain_rank.get(doc_id), "rank_expanded": expanded_rank.get(doc_id)}
            for doc_id, grade in judged.items() if grade > 0 and doc_id not in shown and doc_id in self.corpus
        ]
        metrics = None
        if any(grade > 0 for grade in judged.values()):
            from searchrl.metrics import evaluate_run

            metrics = {
                side: evaluate_run({query_id: judged}, {query_id: dict(hits)}, MEASURES)[0]
                for side, hits in (("bm25", plain_hits), ("expanded", expanded_hits))
            }
        return {
            "query": query, "query_id": query_id, "query_expansion": expansion, "expanded_query": expanded_query,
            "k": k, "depth": depth, "judged": bool(judged), "doc_expansions": bool(self.doc_expansions),
            "columns": {"bm25": rows(plain_hits, expanded_rank, expanded=False),
                        "expanded": rows(expanded_hits, plain_rank, expanded=True)},
            "missed": missed, "metrics": metrics,
        }

    def ask_events(self, question: str, *, cancel: threading.Event | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """The agent's episode as ``(event, data)`` pairs, each yielded as soon as it happens.

        The question and the agent are checked now; the episode starts when iteration does.
        Setting ``cancel`` (or closing the iterator) ends the episode at its next message, so the
        model is free for the next question; the iterator then stops.
        """
        if self.agent is None:
            raise ConfigError("no agent loaded", hint="start the demo with --model RUN/best")
        return self._episode_events(_check_text(question, "question"), cancel or threading.Event())

    def _episode_events(self, question: str, abandoned: threading.Event) -> Iterator[tuple[str, dict[str, Any]]]:
        events: queue.Queue = queue.Queue()
        started = time.perf_counter()

        def on_message(message: Mapping[str, str]) -> None:
            if abandoned.is_set():
                raise _Abandoned
            events.put(("message", message))

        def work() -> None:
            try:
                if not self._agent_lock.acquire(blocking=False):
                    events.put(("status", {"text": "waiting: the model is answering another question"}))
                    self._agent_lock.acquire()
                try:
                    if abandoned.is_set():
                        raise _Abandoned
                    events.put(("status", {"text": "generating"}))
                    answer = self.agent.ask(question, on_message=on_message)
                finally:
                    self._agent_lock.release()
                events.put(("done", answer))
            except _Abandoned:
                events.put(("abandoned", {}))
            except Exception as err:  # noqa: BLE001 - shown on the page, the server keeps serving
                message = err.format() if isinstance(err, SearchRLError) else f"{type(err).__name__}: {err}"
                events.put(("error", {"message": message}))

        threading.Thread(target=work, name="demo-agent", daemon=True).start()
        try:
            yield "start", {"question": question, "model": getattr(self.agent, "model_name", None)}
            while True:
                kind, payload = events.get()
                if kind == "message":
                    turn = turn_event(payload)
                    if turn is not None:
                        yield "turn", turn
                elif kind == "done":
                    yield "done", self._done_event(payload, time.perf_counter() - started)
                    return
                elif kind == "abandoned":
                    return
                else:
                    yield kind, payload
                    if kind == "error":
                        return
        finally:
            abandoned.set()

    def _done_event(self, answer: Any, seconds: float) -> dict[str, Any]:
        searches = [{"query": s["query"], "doc_ids": list(s["doc_ids"])} for s in answer.episode.searches]
        return {
            "answer": answer.text, "finish_reason": answer.finish_reason, "error": answer.error,
            "turns": answer.episode.num_turns, "seconds": round(seconds, 2), "searches": searches,
            "sources": [{"id": d.id, "title": d.title, "snippet": _snippet(d, 200)} for d in answer.sources],
        }


class _Abandoned(Exception):
    """Raised inside an episode whose page went away, to end it early."""


def turn_event(message: Mapping[str, str]) -> dict[str, Any] | None:
    """What the page shows of one conversation message (``None`` for the system prompt and the question)."""
    from searchrl.agent.protocol import INFORMATION, blocks, extract_answer

    role, content = message["role"], message["content"]
    if role == "assistant":
        return {"kind": "assistant", "text": content, "think": blocks(content, "think"),
                "searches": blocks(content, "search"), "answer": extract_answer(content)}
    if role == "user" and content.lstrip().startswith(f"<{INFORMATION}>"):
        inner = blocks(content, INFORMATION)
        return {"kind": "results", "text": inner[0] if inner else content}
    return None


def _load_checked(load, path: str | Path | None, items: Mapping[str, Any], what: str) -> dict[str, str]:
    """An expansions file that matches at least one of ``items`` (else a DataError naming the file)."""
    if path is None:
        return {}
    expansions = load(path)
    if expansions and not any(item_id in expansions for item_id in items):
        raise DataError(
            f"none of the {len(items)} {what} has an expansion here (ids look like {next(iter(expansions))!r})",
            path=path, hint=f"is this the expansions file for the {what}?",
        )
    return expansions


def _load_agent(model: str | Path, demo: Demo, *, device: str | None, seed: int):
    """The agent over the demo's corpus, with the settings of ``model``'s training run when it has one."""
    from searchrl.agent.api import Agent, agent_settings

    settings, _ = agent_settings(str(model))
    kind = settings.pop("retriever")
    retriever = demo.plain if kind == "bm25" else kind  # BM25 reuses the index the comparison built
    if kind == "bm25":
        settings["encoder"] = None
    return Agent(str(model), retriever, corpus=demo.corpus, device=device, seed=seed, **settings)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------------------
# the web app


def create_app(demo: Demo):
    """A FastAPI app serving the page and its API for ``demo``."""
    app = FastAPI(title="searchrl demo", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(SearchRLError)
    async def _user_error(request, err: SearchRLError):
        return JSONResponse({"error": err.format()}, status_code=400)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info():
        return demo.info()

    @app.get("/api/queries")
    def queries():
        return demo.query_list()

    @app.get("/api/compare")
    def compare(q: str = "", query_id: str = "", k: int = Query(10)):
        return demo.compare(q or None, query_id=query_id or None, k=k)

    @app.get("/api/ask")
    async def ask(request: Request, question: str = ""):
        cancel = threading.Event()  # set when the page goes away: the episode stops, the model is free
        try:  # the question and the agent are checked before streaming; a problem is the one event sent
            events = demo.ask_events(question, cancel=cancel)
        except SearchRLError as err:
            events = iter([("error", {"message": err.format()})])

        async def watch_disconnect() -> None:
            while not cancel.is_set():
                if await request.is_disconnected():
                    cancel.set()
                await asyncio.sleep(0.2)

        async def stream():
            watcher = asyncio.create_task(watch_disconnect())
            try:
                while (item := await run_in_threadpool(next, events, None)) is not None:
                    name, data = item
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
            finally:
                cancel.set()
                watcher.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def bind(host: str, port: int):
    """A listening socket on ``host:port`` (0: any free port); a port already taken is a ConfigError."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}", hint="pick another --port") from None
    sock.listen(128)
    return sock


def serve(app: Any, sock: Any, *, log_level: str = "warning") -> None:
    """Serve ``app`` on the bound socket ``sock`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])


__all__ = ["Demo", "bind", "create_app", "serve", "turn_event"]
