"""A retrieval server that speaks Search-R1's ``/retrieve`` protocol (also used by verl and SkyRL).

``POST /retrieve`` takes ``{"queries": [str, ...], "topk": int | null, "return_scores": bool}``
and answers one list per query, best first::

    {"result": [[{"document": {"id", "title", "text", "contents"}, "score": 12.3}, ...], ...]}

``contents`` is Search-R1's ``"\\"Title\\"\\ntext"``; with ``"return_scores": false`` every item is
``{"document": {...}}`` without a score. ``topk`` null means the server's default. ``GET /health``
reports the retriever, the corpus size, the limits and ``batch_searches``, the number of retriever
calls made so far.

The searches of one request are one batch search, and requests arriving while the index is
busy are merged into the next batch (:class:`~searchrl.serve.http.MicroBatcher`; one worker, so
the retriever is never used by two threads at once). Requests over the limits get a 4xx with
a JSON message; a retriever that raises gives a 500, never an empty result.

>>> from searchrl.data import Document
>>> from searchrl.retrieval import build_retriever
>>> corpus = {"d1": Document("d1", "The oxygen tank exploded.", "Apollo 13")}
>>> app = create_app(build_retriever("bm25").index(corpus.values(), show_progress=False), corpus)
>>> from fastapi.testclient import TestClient
>>> TestClient(app).post("/retrieve", json={"queries": ["oxygen"], "topk": 1}).json()["result"][0][0]["document"]
{'id': 'd1', 'title': 'Apollo 13', 'text': 'The oxygen tank exploded.', 'contents': '"Apollo 13"\\nThe oxygen tank exploded.'}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, StrictBool, StrictInt, StrictStr

from searchrl.data.types import Document
from searchrl.errors import ConfigError
from searchrl.retrieval.base import Retriever
from searchrl.serve.http import BodySizeLimit, MicroBatcher, ServerBusy, error_response, install_error_handlers

DEFAULT_TOPK = 3
"""Search-R1's default ``--topk``."""


class RetrieverLimits(BaseModel):
    """What one request may ask for; beyond it the server answers 413 or 422."""

    max_queries: int = 1024
    max_topk: int = 1000
    max_query_chars: int = 4096
    max_body_bytes: int = 1_048_576
    max_batch: int = 1024
    """Queries searched together when concurrent requests are merged."""


class RetrieveRequest(BaseModel):
    """Search-R1's request body (``topk`` null means the server's default)."""

    queries: list[StrictStr]
    topk: StrictInt | None = None
    return_scores: StrictBool = False


def search_r1_document(doc: Document) -> dict[str, str]:
    """A corpus document as Search-R1 serves it: ``id``, ``title``, ``text`` and ``contents``.

    >>> search_r1_document(Document("d1", "Tank two failed.", "Oxygen"))["contents"]
    '"Oxygen"\\nTank two failed.'
    """
    return {"id": doc.id, "title": doc.title, "text": doc.text, "contents": f'"{doc.title}"\n{doc.text}'}


def create_app(
    retriever: Retriever,
    corpus: Mapping[str, Document],
    *,
    default_topk: int = DEFAULT_TOPK,
    limits: RetrieverLimits | None = None,
    info: Mapping[str, Any] | None = None,
) -> Any:
    """The FastAPI app serving ``retriever`` over ``corpus`` (the documents it was indexed from).

    ``info`` adds fields to ``GET /health`` (e.g. the data folder and index the server loaded).
    """
    from fastapi import FastAPI
    from fastapi.responses import Response

    limits = limits or RetrieverLimits()
    if not 1 <= default_topk <= limits.max_topk:
        raise ConfigError(f"the default topk must be between 1 and {limits.max_topk}, got {default_topk}")
    _check_corpus(retriever, corpus)
    documents = {doc_id: search_r1_document(doc) for doc_id, doc in corpus.items()}

    def search(topk: int, queries: list[str]) -> list:
        return retriever.search(queries, k=topk)

    batcher = MicroBatcher(search, max_batch=limits.max_batch, max_pending=max(limits.max_batch, limits.max_queries) * 8,
                           name="searchrl-retriever")

    @asynccontextmanager
    async def lifespan(app):  # noqa: ARG001
        yield
        batcher.close()

    app = FastAPI(title="searchrl retrieval server", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    install_error_handlers(app)
    app.state.batcher = batcher
    health = {
        "status": "ok",
        "retriever": getattr(retriever, "name", type(retriever).__name__),
        "num_documents": len(corpus),
        "default_topk": default_topk,
        **limits.model_dump(),
        **dict(info or {}),
    }

    @app.get("/health")
    def get_health() -> dict:
        """Liveness, the retriever, the corpus size, the request limits and the searches run so far."""
        return {**health, "batch_searches": batcher.batches}

    @app.post("/retrieve")
    async def retrieve(request: RetrieveRequest):
        """Search-R1's retrieval call: the top-``topk`` documents of every query, best first."""
        topk = default_topk if request.topk is None else request.topk
        if not 1 <= topk <= limits.max_topk:
            return error_response(422, f"topk must be between 1 and {limits.max_topk}, got {topk}")
        if len(request.queries) > limits.max_queries:
            return error_response(
                413, f"{len(request.queries):,} queries in one request; this server takes at most {limits.max_queries:,}"
            )
        long = next((i for i, q in enumerate(request.queries) if len(q) > limits.max_query_chars), None)
        if long is not None:
            return error_response(
                413, f"query {long} has {len(request.queries[long]):,} characters; the limit is {limits.max_query_chars:,}"
            )
        if not request.queries:
            return {"result": []}
        try:
            hits = await batcher.run(topk, request.queries)
        except ServerBusy as err:
            return error_response(503, f"server busy: {err}; retry later")
        except Exception as err:  # noqa: BLE001 - a failing back-end is a 5xx, never an empty result
            return error_response(500, f"retrieval failed: {type(err).__name__}: {err}")
        result = []
        for ranking in hits:
            items = []
            for doc_id, score in ranking:
                document = documents.get(doc_id)
                if document is None:
                    return error_response(500, f"retrieval failed: the index returned {doc_id!r}, which is not in the corpus")
                items.append({"document": document, "score": float(score)} if request.return_scores else {"document": document})
            result.append(items)
        return Response(json.dumps({"result": result}, ensure_ascii=False), media_type="application/json")

    return app


def _check_corpus(retriever: Retriever, corpus: Mapping[str, Document]) -> None:
    """Refuse an index that holds documents the corpus lacks (their results could not be served)."""
    try:
        indexed = retriever.doc_ids
    except (AttributeError, NotImplementedError, ConfigError):
        return
    outside = next((doc_id for doc_id in indexed if doc_id not in corpus), None)
    if outside is not None:
        raise ConfigError(
            f"the index holds documents that are not in the corpus (e.g. {outside!r})",
            hint="serve the corpus the index was built from (--data), or rebuild the index",
        )
