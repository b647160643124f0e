"""The agent's search tool: any searchrl retriever plus a corpus, optionally noisy.

A call returns the top-``k`` documents as numbered passages (``[1] title\\ntext``). A failing
retriever raises :class:`~searchrl.errors.ToolError` — never an empty result that would be
scored as if the model had searched badly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from searchrl.agent.noise import NoiseConfig, call_rng, choose_backend, corrupt_results, load_distractors, with_distractors
from searchrl.data.types import Document
from searchrl.errors import ConfigError, SearchRLError, ToolError
from searchrl.retrieval.base import Retriever

NO_RESULTS = "No passages matched the query."
EMPTY_QUERY = "The query was empty: write keywords inside the search tags."


@dataclass(frozen=True)
class SearchResult:
    """One executed search: what was asked, what came back, and how it was perturbed."""

    query: str
    doc_ids: tuple[str, ...]
    backend: str
    text: str
    """The numbered passages the model reads (without the information wrapper)."""
    noise: tuple[str, ...] = field(default=())
    before_noise: tuple[str, ...] | None = None
    """The retriever's ids when noise changed the list (``None`` when it did not): what the query found."""

    def to_dict(self) -> dict:
        record = asdict(self)
        record["doc_ids"], record["noise"] = list(self.doc_ids), list(self.noise)
        if self.before_noise is None:
            del record["before_noise"]
        else:
            record["before_noise"] = list(self.before_noise)
        return record


def format_results(documents: Sequence[Document], *, max_chars: int | None = None) -> str:
    """Number documents for the model: ``[1] title\\ntext``, blank line between passages.

    >>> print(format_results([Document("c1", "Tank two failed.", "Oxygen"), Document("c2", "Crew safe.")]))
    [1] Oxygen
    Tank two failed.
    <BLANKLINE>
    [2] Crew safe.
    """
    if not documents:
        return NO_RESULTS
    passages = []
    for number, doc in enumerate(documents, start=1):
        body = doc.text.strip()
        if max_chars is not None and len(body) > max_chars:
            body = body[:max_chars].rstrip() + " …"
        title = doc.title.strip()
        passages.append(f"[{number}] {title}\n{body}" if title else f"[{number}] {body}")
    return "\n\n".join(passages)


class SearchTool:
    """Search a corpus with one retriever, or with one of several picked at random per call.

    ``retrievers`` is one :class:`Retriever` or a mapping ``{backend name: Retriever}``; the first
    is the default backend. ``noise.backends`` names the backends to pick from at random per call
    (ReZero's "several search engines"); result noise follows ``noise``'s schedules at ``step``.
    """

    def __init__(
        self,
        retrievers: Retriever | Mapping[str, Retriever],
        corpus: Mapping[str, Document],
        *,
        k: int = 5,
        noise: NoiseConfig | None = None,
        seed: int = 0,
        max_chars: int | None = None,
    ) -> None:
        if isinstance(retrievers, Retriever):
            retrievers = {getattr(retrievers, "name", "retriever") or "retriever": retrievers}
        if not retrievers:
            raise ConfigError("the search tool needs at least one retriever")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.retrievers = dict(retrievers)
        self.corpus = corpus
        self.k = k
        self.noise = noise or NoiseConfig()
        self.seed = seed
        self.max_chars = max_chars
        missing = [name for name in self.noise.backends if name not in self.retrievers]
        if missing:
            raise ConfigError(
                f"noise backends {missing} have no retriever", hint=f"available: {sorted(self.retrievers)}"
            )
        self._pool = list(corpus)
        self.default_backend = next(iter(self.retrievers))

    def search(self, query: str, *, step: int = 0, key: str | None = None) -> SearchResult:
        """Run one query (see :meth:`search_batch`)."""
        return self.search_batch([query], step=step, keys=None if key is None else [key])[0]

    def search_batch(
        self, queries: Sequence[str], *, step: int = 0, keys: Sequence[str] | None = None
    ) -> list[SearchResult]:
        """Run many queries, one retriever call per backend used.

        ``keys`` (one per query, e.g. ``"<question id>#<sample>:<turn>"``) seed each call's
        noise; by default a call is keyed by its position and text.
        """
        if isinstance(queries, str):
            raise ConfigError("search_batch() takes a list of queries", hint="wrap it: [query]")
        keys = list(keys) if keys is not None else [f"{i}:{q}" for i, q in enumerate(queries)]
        if len(keys) != len(queries):
            raise ConfigError(f"{len(queries)} queries but {len(keys)} keys")
        rngs = [call_rng(self.seed, step, key) for key in keys]
        backends = [choose_backend(self.noise.backends, rng) if self.noise.backends else self.default_backend for rng in rngs]

        hits: list[list[str]] = [[] for _ in queries]
        for backend in dict.fromkeys(backends):
            positions = [i for i, b in enumerate(backends) if b == backend and queries[i].strip()]
            if not positions:
                continue
            try:
                found = self.retrievers[backend].search([queries[i] for i in positions], k=self.k)
            except SearchRLError as err:
                raise ToolError(f"search backend {backend!r} failed: {err.format()}", hint=err.hint) from err
            except Exception as err:  # any retriever failure must surface, never read as "no results"
                raise ToolError(
                    f"search backend {backend!r} failed: {type(err).__name__}: {err}",
                    hint="check that the index matches the corpus and that the retriever loaded correctly",
                ) from err
            if len(found) != len(positions):
                raise ToolError(f"search backend {backend!r} returned {len(found)} result lists for {len(positions)} queries")
            for i, result in zip(positions, found):
                hits[i] = [doc_id for doc_id, _ in result]

        results = []
        for query, doc_ids, backend, rng in zip(queries, hits, backends, rngs):
            applied: list[str] = []
            found_ids = tuple(doc_ids)
            if not query.strip():
                results.append(SearchResult(query=query, doc_ids=(), backend=backend, text=EMPTY_QUERY))
                continue
            if self.noise.active:
                doc_ids, applied = corrupt_results(doc_ids, self._pool, self.noise, step=step, rng=rng)
            unknown = [d for d in doc_ids if d not in self.corpus]
            if unknown:
                raise ToolError(
                    f"search backend {backend!r} returned ids not in the corpus (e.g. {unknown[0]!r})",
                    hint="the index was built from another corpus: rebuild it or pass the matching --data",
                )
            documents = [self.corpus[d] for d in doc_ids]
            results.append(
                SearchResult(
                    query=query,
                    doc_ids=tuple(doc_ids),
                    backend=backend,
                    text=format_results(documents, max_chars=self.max_chars),
                    noise=tuple(applied),
                    before_noise=found_ids if applied else None,
                )
            )
        return results


class SearchToolConfig(BaseModel):
    """How to build the search tool for training or evaluation."""

    model_config = ConfigDict(extra="forbid")

    retriever: str = Field(
        "bm25", description="bm25, dense or hybrid, or a retrieval server's URL (http://HOST:PORT): the default backend"
    )
    encoder: str | None = Field(None, description="sentence-transformers model for dense/hybrid")
    k: int = Field(5, ge=1)
    max_chars: int | None = Field(None, ge=1, description="truncate each passage to this many characters")
    seed: int = 0
    noise: NoiseConfig = Field(default_factory=NoiseConfig)


def build_search_tool(
    corpus: Mapping[str, Document], config: SearchToolConfig | None = None, *, show_progress: bool = False
) -> SearchTool:
    """Index ``corpus`` (plus any distractors) with every backend the config names.

    A backend given as ``http://HOST:PORT`` is a :class:`~searchrl.retrieval.remote.RemoteRetriever`:
    nothing is indexed here, the server is reached once now (unreachable: :class:`ToolError`), and
    it must serve the same corpus.

    >>> from searchrl.data.types import Document
    >>> tool = build_search_tool({"c1": Document("c1", "oxygen tank exploded"), "c2": Document("c2", "crew landed")})
    >>> tool.search("oxygen tank").doc_ids[0]
    'c1'
    """
    from searchrl.retrieval import build_retriever
    from searchrl.retrieval.remote import RemoteRetriever, is_remote_retriever

    config = config or SearchToolConfig()
    documents: Mapping[str, Document] = corpus
    if config.noise.distractors is not None:
        documents = with_distractors(corpus, load_distractors(Path(config.noise.distractors)))
    retrievers: dict[str, Retriever] = {}
    for kind in dict.fromkeys([config.retriever, *config.noise.backends]):
        if is_remote_retriever(kind):
            retrievers[kind] = RemoteRetriever(kind).check(corpus, k=config.k)
            continue
        retriever = build_retriever(kind, model=config.encoder) if kind != "bm25" else build_retriever(kind)
        retrievers[kind] = retriever.index(list(documents.values()), show_progress=show_progress)
    return SearchTool(retrievers, documents, k=config.k, noise=config.noise, seed=config.seed, max_chars=config.max_chars)
