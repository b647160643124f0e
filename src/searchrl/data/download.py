"""BEIR data sets from their public mirror, and a dev split derived from a training split.

Nothing here writes into a user's data folder: a derived split goes wherever the caller says
(a run directory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from searchrl.errors import DataError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def download_beir_dataset(name: str, *, cache: str | Path | None = None, url: str | None = None) -> Path:
    """Download and unzip a BEIR data set into ``$SEARCHRL_CACHE/data/<name>`` (once), return its folder.

    Offline, or when the server cannot be reached, raises :class:`DataError` saying to pass a
    local copy with ``--data``.
    """
    import shutil
    import tempfile
    import zipfile

    import httpx

    from searchrl.paths import cache_dir

    root = Path(cache) if cache is not None else cache_dir() / "data"
    target = root / name
    if (target / "corpus.jsonl").exists() or (target / "corpus.jsonl.gz").exists():
        return target
    url = url or BEIR_URL.format(name=name)
    root.mkdir(parents=True, exist_ok=True)
    hint = f"check the network, or download {url} yourself, unzip it and pass --data DIR"
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
                response.raise_for_status()
                with archive.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
        except httpx.HTTPError as err:
            raise DataError(f"cannot download BEIR {name} from {url}: {err}", hint=hint) from None
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    resolved = (Path(tmp) / member).resolve()
                    if not resolved.is_relative_to(Path(tmp).resolve()):
                        raise DataError(f"unsafe path {member!r} in the archive", path=archive, hint=hint)
                zipped.extractall(tmp)
        except zipfile.BadZipFile:
            raise DataError("the download is not a zip archive", path=archive, hint=hint) from None
        extracted = next((p.parent for p in Path(tmp).rglob("corpus.jsonl")), None)
        if extracted is None:
            raise DataError("the archive holds no corpus.jsonl", path=archive, hint=hint)
        shutil.move(str(extracted), str(target))
    return target


def derive_dev_split(directory: str | Path, out_dir: str | Path, *, dev_queries: int = 100, seed: int = 0) -> Path | None:
    """When the BEIR folder has no dev split, write one derived from its train split into ``out_dir``.

    ``dev_queries`` training queries (seeded) become ``out_dir/dev.tsv``; ``out_dir/train.tsv``
    holds the rest. The data folder itself is never written to. Returns ``out_dir`` (to load
    the splits from, e.g. as ``CoAugConfig.qrels_dir``), or ``None`` when the folder already has
    a dev split.
    """
    from searchrl.data.beir import available_splits, load_qrels, qrels_path

    directory = Path(directory)
    splits = available_splits(directory)
    if "dev" in splits:
        return None
    if "train" not in splits:
        raise DataError(
            "no dev split and no train split to make one from", path=directory / "qrels",
            hint="the quickstart needs qrels/train.tsv (and optionally qrels/dev.tsv)",
        )
    qrels = load_qrels(qrels_path(directory, "train"))
    query_ids = sorted(qrels)
    if len(query_ids) < 2 * dev_queries:
        dev_queries = max(2, len(query_ids) // 5)  # two at least: one chooses the checkpoint, one reports
    rng = np.random.default_rng(seed)
    dev = {query_ids[i] for i in rng.choice(len(query_ids), size=dev_queries, replace=False)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in (("dev", [q for q in query_ids if q in dev]), ("train", [q for q in query_ids if q not in dev])):
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{r}" for q in ids for d, r in qrels[q].items())]
        temporary = out_dir / f".{name}.tsv.tmp"
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
        temporary.replace(out_dir / f"{name}.tsv")
    return out_dir


__all__ = ["BEIR_URL", "derive_dev_split", "download_beir_dataset"]
