"""Which model produced an output: fingerprints of resolved weights, so a resume never mixes two models.

A model *name* does not say which weights answered: ``RUN/best`` changes as training goes on, a
folder can be replaced, and an OpenAI-compatible name means whatever the server at that address
serves. :func:`generator_identity` records what can be known before generating:

* ``transformers`` / ``vllm``: the SHA-256 fingerprint of the resolved model folder (and of the
  LoRA adapter folder when the model is one), from :func:`folder_fingerprint`;
* ``openai``: the server's API root and the model name it is asked for (its weights are not
  visible from here).

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "adapter_model.safetensors").write_bytes(b"weights")
>>> before = folder_fingerprint(folder)
>>> _ = (folder / "adapter_model.safetensors").write_bytes(b"trained")
>>> folder_fingerprint(folder) == before
False
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from searchrl.errors import ModelError

#: Files up to this size are hashed by content; larger ones (base weights) by name, size and mtime.
CONTENT_HASH_LIMIT = 64 << 20


def folder_fingerprint(folder: str | Path, *, content_limit: int = CONTENT_HASH_LIMIT) -> str:
    """``sha256:<hex>`` over every file under ``folder`` (symlinks followed, hidden files skipped).

    Each file contributes its relative path and size, plus its content when it is at most
    ``content_limit`` bytes (configs, tokenizers, LoRA adapters), else its modification time
    (hashing many gigabytes of base weights on every run would take minutes; rewriting them
    changes the time). A copied folder with new times therefore counts as a different model:
    the safe side for a resume check. A single file is fingerprinted the same way.
    """
    folder = Path(folder)
    if folder.is_file():
        return file_fingerprint(folder, content_limit=content_limit)
    digest = hashlib.sha256()
    try:
        files = sorted(
            path for path in folder.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
    except OSError as err:
        raise ModelError(f"cannot list the model folder: {err.strerror}", path=folder) from None
    for path in files:
        _update(digest, path, path.relative_to(folder).as_posix(), content_limit)
    return "sha256:" + digest.hexdigest()


def file_fingerprint(path: str | Path, *, content_limit: int = CONTENT_HASH_LIMIT) -> str:
    """``sha256:<hex>`` of one file's size and content (or modification time above ``content_limit``).

    The name is left out, so the same file copied elsewhere has the same fingerprint.
    """
    digest = hashlib.sha256()
    _update(digest, Path(path), "", content_limit)
    return "sha256:" + digest.hexdigest()


def _update(digest: Any, path: Path, name: str, content_limit: int) -> None:
    try:
        info = path.stat()
        digest.update(f"{name}\0{info.st_size}\0".encode())
        if info.st_size <= content_limit:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(str(info.st_mtime_ns).encode())
    except OSError as err:
        raise ModelError(f"cannot read a model file: {err.strerror}", path=path) from None
    digest.update(b"\0")


def model_fingerprint(model: str | Path) -> dict[str, str]:
    """``{"base": fingerprint[, "adapter": fingerprint]}`` of what ``model`` resolves to.

    Resolution is :func:`searchrl.resolver.resolve_with_adapter` (the same the engines use), so
    a name that does not resolve raises :class:`~searchrl.errors.ModelError` here, before
    anything is written.
    """
    from searchrl.resolver import resolve_with_adapter

    base, adapter = resolve_with_adapter(model)
    out = {"base": folder_fingerprint(base)}
    if adapter is not None:
        out["adapter"] = folder_fingerprint(adapter)
    return out


def generator_identity(engine: str, model: str, *, base_url: str | None = None) -> dict[str, Any]:
    """What decides the generator's outputs besides the prompts: see the module docstring.

    Raises :class:`~searchrl.errors.ModelError` when a local model does not resolve and
    :class:`~searchrl.errors.EngineError` for a malformed server address.
    """
    if engine == "openai":
        from searchrl.llm.openai_engine import api_root

        url = base_url or os.environ.get("OPENAI_BASE_URL")
        return {"base_url": api_root(url) if url else None, "model": str(model)}
    return {"weights": model_fingerprint(model)}


__all__ = ["CONTENT_HASH_LIMIT", "file_fingerprint", "folder_fingerprint", "generator_identity", "model_fingerprint"]
