"""Data sets on the Hugging Face Hub in BEIR layout, as ``--data hf:OWNER/NAME``.

BEIR publishes each data set as two Hub data sets: ``BeIR/scifact`` with the configurations
``corpus`` and ``queries`` (columns ``_id``, ``title``, ``text``), and ``BeIR/scifact-qrels``
whose splits (``train``, ``test``, ...) hold ``query-id``, ``corpus-id``, ``score``. Any data set
laid out that way works: ``hf:OWNER/NAME`` or ``hf:OWNER/NAME@REVISION``. MTEB's copies
(``mteb/scifact``), which keep the qrels in the same repository's ``default`` configuration,
work too.

The data is loaded with :func:`datasets.load_dataset` (so it lands in, and is reused from, the
``datasets`` cache; offline, ``HF_HUB_OFFLINE=1`` reads that cache) and then written once as a
plain BEIR folder under ``$SEARCHRL_CACHE/hub/OWNER--NAME``, which every loader reads like a
local ``--data DIR``. Later runs use that folder without touching the network.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from searchrl.errors import DataError

HUB_PREFIX = "hf:"
SOURCE_FILE = "source.json"

_ID_COLUMNS = ("_id", "id", "doc_id", "docid", "query_id", "qid")
_QRELS_COLUMNS = {
    "query": ("query-id", "query_id", "qid"),
    "document": ("corpus-id", "corpus_id", "doc_id", "docid", "doc-id"),
    "score": ("score", "relevance", "label", "rel"),
}


def is_hub_reference(data: str | Path | None) -> bool:
    """True for ``hf:OWNER/NAME`` (a Hub data set) rather than a local path."""
    return data is not None and str(data).startswith(HUB_PREFIX)


def parse_hub_reference(reference: str | Path) -> tuple[str, str | None]:
    """``("OWNER/NAME", revision or None)`` from ``hf:OWNER/NAME[@REVISION]``."""
    text = str(reference)[len(HUB_PREFIX):].strip().strip("/")
    repo, _, revision = text.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise DataError(
            f"not a Hub data set name: {reference!s}",
            hint="write hf:OWNER/NAME, e.g. --data hf:BeIR/scifact (optionally hf:OWNER/NAME@REVISION)",
        )
    return repo, revision or None


def resolve_data_path(data: str | Path) -> Path:
    """``data`` as a local path: ``hf:`` references are fetched into a BEIR folder first."""
    if is_hub_reference(data):
        return hub_beir_folder(data)
    return Path(data).expanduser()


def hub_folder(reference: str | Path) -> Path:
    """Where the BEIR folder for ``reference`` is (or will be) kept."""
    from searchrl.paths import cache_dir

    repo, revision = parse_hub_reference(reference)
    name = repo.replace("/", "--") + (f"@{revision.replace('/', '-')}" if revision else "")
    return cache_dir() / "hub" / name


def hub_beir_folder(reference: str | Path, *, refresh: bool = False) -> Path:
    """A local BEIR folder holding the Hub data set ``reference`` (fetched once, then reused)."""
    repo, revision = parse_hub_reference(reference)
    folder = hub_folder(reference)
    if (folder / SOURCE_FILE).is_file() and not refresh:
        return folder
    corpus = _load_split(repo, "corpus", revision)
    queries = _load_split(repo, "queries", revision)
    qrels_repo = f"{repo}-qrels"
    try:
        qrels = _load_all_splits(qrels_repo, None, None)
    except DataError as no_qrels_repo:
        try:  # MTEB layout: the qrels are the `default` configuration of the same repository
            qrels = _load_all_splits(repo, "default", revision)
        except DataError:
            raise no_qrels_repo from None
        qrels_repo = f"{repo} (default)"
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_beir_folder(staging, corpus, queries, qrels, repo, qrels_repo)
        _write_json(staging / SOURCE_FILE, {
            "repo": repo, "qrels_repo": qrels_repo, "revision": revision,
            "documents": corpus.num_rows, "queries": queries.num_rows,
            "splits": {name: split.num_rows for name, split in qrels.items()},
            "fingerprints": {"corpus": corpus._fingerprint, "queries": queries._fingerprint},
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# --- loading through `datasets` ------------------------------------------------------------------


def _load_all_splits(repo: str, config: str | None, revision: str | None):
    """``datasets.load_dataset(repo, config)`` as a DatasetDict, with errors a user can act on."""
    import datasets

    try:
        return datasets.load_dataset(repo, config, revision=revision)
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        # Script-based repos (BeIR's own) are served from the Hub's Parquet conversion.
        try:
            return datasets.load_dataset(repo, revision="refs/convert/parquet", data_dir=config)
        except Exception as err2:  # noqa: BLE001 - reported with the hint below
            raise _hub_error(repo, config, err2) from None
    except (ConnectionError, FileNotFoundError, ValueError, OSError) as err:
        raise _hub_error(repo, config, err) from None
    except Exception as err:
        if type(err).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
            raise _hub_error(repo, config, err) from None
        raise


def _hub_error(repo: str, config: str | None, err: Exception) -> DataError:
    what = f"{repo} ({config})" if config else repo
    return DataError(
        f"cannot load the Hugging Face data set {what}: {err}",
        hint="check the name (a BEIR-layout data set has configs corpus/queries and a NAME-qrels data set); "
        "offline, only data sets loaded once before are available; or pass --data DIR with a local BEIR folder",
    )


def _load_split(repo: str, config: str, revision: str | None):
    loaded = _load_all_splits(repo, config, revision)
    if config in loaded:
        return loaded[config]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise DataError(
        f"{repo} ({config}) has several splits and none is called {config!r}: {', '.join(loaded)}",
        hint="a BEIR-layout data set has one split per configuration",
    )


def _column(dataset: Any, candidates: tuple[str, ...], repo: str, what: str) -> str:
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise DataError(
        f"{repo}: no {what} column (looked for {', '.join(candidates)}; found {', '.join(dataset.column_names)})",
        hint="the data set is not in BEIR layout",
    )


def _rows(dataset: Any, columns: dict[str, str | None], batch_size: int = 10_000):
    """Rows of ``dataset`` as dicts ``{our name: value}``, read in batches (no per-row overhead)."""
    for batch in dataset.iter(batch_size=batch_size):
        size = len(next(iter(batch.values())))
        for i in range(size):
            yield {ours: (batch[theirs][i] if theirs else None) for ours, theirs in columns.items()}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _write_beir_folder(folder: Path, corpus: Any, queries: Any, qrels: Any, repo: str, qrels_repo: str) -> None:
    from searchrl.data.io import write_jsonl

    folder.mkdir(parents=True)
    columns = {
        "id": _column(corpus, _ID_COLUMNS, repo, "document id"),
        "title": "title" if "title" in corpus.column_names else None,
        "text": _column(corpus, ("text", "contents"), repo, "document text"),
    }
    write_jsonl(folder / "corpus.jsonl", (
        {"_id": _text(r["id"]), "title": _text(r["title"]), "text": _text(r["text"])} for r in _rows(corpus, columns)
    ))
    columns = {"id": _column(queries, _ID_COLUMNS, repo, "query id"), "text": _column(queries, ("text",), repo, "query text")}
    write_jsonl(folder / "queries.jsonl", ({"_id": _text(r["id"]), "text": _text(r["text"])} for r in _rows(queries, columns)))
    (folder / "qrels").mkdir()
    for split, dataset in qrels.items():
        columns = {key: _column(dataset, names, qrels_repo, f"qrels {key}") for key, names in _QRELS_COLUMNS.items()}
        lines = ["query-id\tcorpus-id\tscore\n"]
        lines += [f"{_text(r['query'])}\t{_text(r['document'])}\t{int(r['score'])}\n" for r in _rows(dataset, columns)]
        (folder / "qrels" / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
