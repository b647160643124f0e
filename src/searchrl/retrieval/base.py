"""The one interface every retriever implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from searchrl.data.types import Document, Run

Hit = tuple[str, float]
"""``(doc_id, score)``; a search returns one list of hits per query, best first."""


class Retriever(ABC):
    """Index a corpus once, then batch-search it.

    Subclasses implement :meth:`index`, :meth:`search`, :meth:`save` and :meth:`load`.
    ``doc_expansions`` appends an expansion string to each document's text before
    indexing (see :func:`searchrl.data.document_text`); query expansions are applied by the
    caller with :func:`searchrl.data.query_text` so every retriever sees the same strings.
    """

    name: str = "retriever"

    @abstractmethod
    def index(
        self,
        documents: Iterable[Document],
        doc_expansions: Mapping[str, str] | None = None,
        *,
        show_progress: bool = True,
    ) -> "Retriever":
        """Build the index; returns ``self`` so ``Retriever(...).index(docs)`` reads naturally."""

    @abstractmethod
    def search(self, queries: Sequence[str], k: int = 10, *, show_progress: bool = False) -> list[list[Hit]]:
        """Top-``k`` ``(doc_id, score)`` lists, best first, one per query."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` in safe formats (JSON, .npy, safetensors; never pickle)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> "Retriever":
        """Read an index written by :meth:`save`."""

    @property
    @abstractmethod
    def doc_ids(self) -> list[str]:
        """Ids of the indexed documents, in index order."""

    def run(self, queries: Mapping[str, str], k: int = 100, *, show_progress: bool = False) -> Run:
        """Search ``{query_id: text}`` and return a TREC-style run ``{query_id: {doc_id: score}}``."""
        ids = list(queries)
        results = self.search([queries[i] for i in ids], k=k, show_progress=show_progress)
        return {qid: dict(hits) for qid, hits in zip(ids, results)}
