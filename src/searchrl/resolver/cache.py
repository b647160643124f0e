"""The model cache (``$SEARCHRL_CACHE/models``): folders built atomically, each with its provenance, and their listing.

A converted or pulled folder is written to a temporary sibling and renamed into place when
complete, so an interrupted pull never leaves a half folder behind. Each holds
:data:`PROVENANCE_FILE` saying where it came from; a folder without it is incomplete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from searchrl.errors import ModelError

PROVENANCE_FILE = "searchrl-model.json"
_STALE_TEMP_SECONDS = 3600


def models_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder holding converted and pulled models: ``cache_dir`` or ``$SEARCHRL_CACHE/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from searchrl.paths import cache_dir as searchrl_cache_dir

    return searchrl_cache_dir() / "models"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished model folder (its provenance file is written last)."""
    return (folder / PROVENANCE_FILE).is_file()


# --------------------------------------------------------------------------------------------
# Building a folder


def build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a hidden sibling folder of ``target`` and rename it into place.

    ``build`` must write :data:`PROVENANCE_FILE` last (see :func:`write_provenance`). If another
    process finished the same folder first, its result is kept and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        if not is_complete(tmp):
            raise ModelError(f"conversion did not finish (no {PROVENANCE_FILE})", path=tmp)
        _make_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):
                raise ModelError(
                    "cannot move the converted model into place", path=target,
                    hint="remove the folder (it is incomplete) and retry",
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_provenance(folder: Path, provenance: dict) -> None:
    """Write :data:`PROVENANCE_FILE`: where the model came from, its format, when and by which versions."""
    import searchrl

    record = {
        **provenance,
        "format": "sentence-transformers" if provenance.get("kind") == "sentence-transformer" else "transformers",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "searchrl_version": searchrl.__version__,
    }
    try:
        import transformers

        record["transformers_version"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    (folder / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a (possibly large) file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_readable(folder: Path) -> None:
    """Give every file the permissions the umask allows (some writers create files as 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temp folders that interrupted conversions of ``target`` left behind (over an hour old)."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TEMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


# --------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class CachedModel:
    """One complete folder in the model cache."""

    folder: Path
    name: str
    kind: str
    source: str
    size_bytes: int


def list_cached_models(cache_dir: str | Path | None = None) -> list[CachedModel]:
    """Every complete model folder in the model cache (incomplete temporaries are skipped)."""
    root = models_dir(cache_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not is_complete(folder):
            continue
        try:
            record = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        source = record.get("source", {}) if isinstance(record.get("source"), dict) else {}
        found.append(
            CachedModel(
                folder=folder,
                name=str(record.get("name", folder.name)),
                kind=str(record.get("kind", "?")),
                source=str(source.get("requirement") or source.get("path") or source.get("type") or "?"),
                size_bytes=sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
            )
        )
    return found
