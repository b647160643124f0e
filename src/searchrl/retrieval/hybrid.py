"""Hybrid retrieval: reciprocal-rank fusion of several retrievers over the same corpus.

Reciprocal-rank fusion (Cormack et al., 2009) scores a document by ``sum 1 / (rrf_k + rank)``
over the rankings it appears in. It needs no score calibration between BM25 and cosine
similarity, which is why it is the usual way to combine them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from searchrl.data.types import Document
from searchrl.errors import ConfigError, IndexFileError
from searchrl.retrieval.base import (
    MANIFEST_NAME,
    REBUILD_HINT,
    Hit,
    Retriever,
    check_search_args,
    path_inside,
    read_manifest,
    verify_payload,
    write_manifest,
)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], rrf_k: int = 60) -> list[Hit]:
    """Fuse ranked lists of document ids (best first) into one ``(doc_id, score)`` list.

    ``score(d) = sum over rankings containing d of 1 / (rrf_k + rank)``, ranks counted from 1.
    Equal scores are ordered by document id, so the result is reproducible.

    >>> [(d, round(s, 4)) for d, s in reciprocal_rank_fusion([["a", "b"], ["b", "c"]], rrf_k=60)]
    [('b', 0.0325), ('a', 0.0164), ('c', 0.0161)]
    """
    rankings = [list(r) for r in rankings if len(r)]
    if not rankings:
        return []
    doc_ids = np.array([doc for ranking in rankings for doc in ranking], dtype=object)
    ranks = np.concatenate([np.arange(1, len(ranking) + 1) for ranking in rankings])
    unique_ids, position = np.unique(doc_ids, return_inverse=True)  # unique_ids sorted by id
    scores = np.bincount(position, weights=1.0 / (rrf_k + ranks), minlength=len(unique_ids))
    order = np.argsort(-scores, kind="stable")  # stable: ties stay in id order
    return [(str(unique_ids[i]), float(scores[i])) for i in order]


class HybridRetriever(Retriever):
    """Reciprocal-rank fusion of two or more retrievers, each searched to ``max(k, depth)``.

    >>> from searchrl.retrieval.bm25 import BM25Retriever
    >>> from searchrl.data import Document
    >>> docs = [Document("d1", "oxygen tank explosion"), Document("d2", "lunar module lifeboat")]
    >>> hybrid = HybridRetriever([BM25Retriever(), BM25Retriever(stemmer=None)]).index(docs, show_progress=False)
    >>> hybrid.search(["tank exploded"], k=1)[0][0][0]
    'd1'
    """

    name = "hybrid"

    def __init__(self, retrievers: Sequence[Retriever], rrf_k: int = 60, depth: int = 100) -> None:
        if len(retrievers) < 2:
            raise ConfigError(f"hybrid retrieval needs at least two retrievers, got {len(retrievers)}")
        if rrf_k < 0 or depth < 1:
            raise ConfigError(f"invalid fusion parameters rrf_k={rrf_k}, depth={depth}", hint="need rrf_k >= 0, depth >= 1")
        self.retrievers = list(retrievers)
        self.rrf_k = int(rrf_k)
        self.depth = int(depth)

    def index(
        self,
        documents: Iterable[Document],
        doc_expansions: Mapping[str, str] | None = None,
        *,
        show_progress: bool = True,
    ) -> "HybridRetriever":
        """Index the same documents (and expansions) in every member retriever."""
        documents = list(documents)
        for retriever in self.retrievers:
            retriever.index(documents, doc_expansions, show_progress=show_progress)
        return self

    @property
    def doc_ids(self) -> list[str]:
        return self.retrievers[0].doc_ids

    def search(self, queries: Sequence[str], k: int = 10, *, show_progress: bool = False) -> list[list[Hit]]:
        """Fused top-``k`` per query; scores are RRF scores, not the members' scores."""
        check_search_args(queries, k)
        depth = max(k, self.depth)
        member_results = [r.search(queries, k=depth, show_progress=show_progress) for r in self.retrievers]
        fused = []
        for per_member in zip(*member_results):
            rankings = [[doc_id for doc_id, _ in hits] for hits in per_member]
            fused.append(reciprocal_rank_fusion(rankings, self.rrf_k)[:k])
        return fused

    def params(self) -> dict[str, Any]:
        return {"rrf_k": self.rrf_k, "depth": self.depth}

    def write_index(self, directory: Path) -> None:
        """``retriever.json`` plus one sub-folder per member (``0-bm25/``, ``1-dense/``...).

        The manifest holds the checksum of each member's manifest, which holds those of its files.
        """
        directory = Path(directory)
        members = []
        for number, retriever in enumerate(self.retrievers):
            folder = f"{number}-{retriever.name}"
            (directory / folder).mkdir()
            retriever.write_index(directory / folder)
            members.append(folder)
        member_manifests = [f"{folder}/{MANIFEST_NAME}" for folder in members]
        write_manifest(directory, self.name, {**self.params(), "members": members}, self.doc_ids, member_manifests)

    @classmethod
    def load(cls, directory: str | Path) -> "HybridRetriever":
        """Read an index written by :meth:`save`, loading every member."""
        from searchrl.retrieval import load_retriever

        directory = Path(directory)
        manifest = read_manifest(directory, expected_kind=cls.name)
        params = dict(manifest["params"])
        members = params.pop("members", None)
        if not isinstance(members, list) or len(members) < 2:
            raise IndexFileError("hybrid manifest lists no member indexes", path=directory, hint=REBUILD_HINT)
        # Members are sub-folders of this one: never a folder elsewhere, nor this folder itself.
        folders = [path_inside(directory, folder, "member index") for folder in members]
        if len({folder.resolve() for folder in folders}) != len(folders):
            raise IndexFileError("hybrid manifest lists a member index twice", path=directory, hint=REBUILD_HINT)
        verify_payload(directory, manifest, [f"{folder}/{MANIFEST_NAME}" for folder in members])
        retrievers = [load_retriever(folder) for folder in folders]
        for folder, retriever in zip(members, retrievers):
            if retriever.doc_ids != manifest["doc_ids"]:
                raise IndexFileError(
                    "member index covers different documents than the hybrid index",
                    path=directory / folder,
                    hint=REBUILD_HINT,
                )
        try:
            return cls(retrievers, **params)
        except (TypeError, ConfigError) as err:
            raise IndexFileError(f"invalid hybrid parameters in the manifest: {err}", path=directory, hint=REBUILD_HINT) from None
