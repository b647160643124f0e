"""The Hugging Face cache, then the Hub (skipped when ``HF_HUB_OFFLINE=1`` or ``SEARCHRL_OFFLINE=1``)."""

from __future__ import annotations

from pathlib import Path

from searchrl.errors import ModelError
from searchrl.resolver.local import resolve_local
from searchrl.resolver.names import ModelKind, downloads_disabled, hub_offline

# Files fetched from the Hub: configs, tokenizers and safetensors weights. Pickled ``*.bin``
# checkpoints, ONNX/OpenVINO exports and GGUF variants are left out on purpose.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.md"]


def from_hugging_face(repo_id: str, kind: ModelKind, tried: list[str]) -> Path | None:
    """The Hugging Face cache, then (when allowed) the Hub; ``None`` with notes in ``tried`` if neither has it."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover - a dependency of transformers
        tried.append("Hugging Face: huggingface_hub is not installed")
        return None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except HFValidationError:
        tried.append(f"Hugging Face: {repo_id!r} is not a valid repository id")
        return None
    except Exception as err:  # noqa: BLE001 - every failure here means "not in the cache"
        tried.append(f"Hugging Face cache: not there ({type(err).__name__})")
    else:
        found = _usable_snapshot(folder, kind, "Hugging Face cache", tried)
        if found is not None:
            return found

    if hub_offline():
        tried.append("Hugging Face Hub: skipped because HF_HUB_OFFLINE=1")
        return None
    if downloads_disabled():
        tried.append("Hugging Face Hub: skipped because SEARCHRL_OFFLINE=1")
        return None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all reported the same way
        message = str(err).strip()
        first_line = message.splitlines()[0] if message else ""
        tried.append(f"Hugging Face Hub: {type(err).__name__}: {first_line[:200]}")
        return None
    return _usable_snapshot(folder, kind, "Hugging Face Hub", tried)


def _usable_snapshot(folder: Path, kind: ModelKind, where: str, tried: list[str]) -> Path | None:
    if not any(folder.rglob("*.safetensors")):
        tried.append(f"{where}: {folder} has no safetensors weights (pickled checkpoints are not loaded)")
        return None
    try:
        return resolve_local(folder, kind, folder)
    except ModelError as err:
        tried.append(f"{where}: {err.format()}")
        return None
