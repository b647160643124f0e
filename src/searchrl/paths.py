"""Where searchrl looks for data and caches by default; every path can be overridden."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of searchrl's caches (models, embeddings): ``$SEARCHRL_CACHE`` or ``~/.cache/searchrl``."""
    return Path(os.environ.get("SEARCHRL_CACHE", Path.home() / ".cache" / "searchrl")).expanduser()


def shared_data_dir() -> Path:
    """Development data (BEIR SciFact, Apollo 13): ``$SEARCHRL_DATA`` or ``../shared/data``."""
    env = os.environ.get("SEARCHRL_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and candidate.exists():
            return candidate
    return Path.cwd().parent / "shared" / "data"
