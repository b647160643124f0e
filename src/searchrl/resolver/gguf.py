"""GGUF files into ordinary safetensors model folders (transformers reads GGUF; we save the result)."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

from searchrl.errors import ModelError
from searchrl.resolver.cache import build_atomically, is_complete, write_provenance


def convert_local_gguf(gguf_path: Path, root: Path) -> Path:
    """Convert a local ``.gguf`` file once into ``root/<stem>-<key>`` and return that folder.

    The key depends on the file's path, size and modification time, so an edited file is
    converted again.
    """
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = root / f"{gguf_path.stem.lower()}-{key}"
    if is_complete(target):
        return target
    provenance = {"name": gguf_path.stem, "kind": "causal-lm", "source": {"type": "gguf", "path": str(gguf_path)}}
    return build_atomically(target, lambda tmp: convert_gguf_into(gguf_path, tmp, provenance, end_of_turn=None))


def convert_gguf_into(
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
    marker gives an ordinary model. ``scratch`` (a folder holding the .gguf copy) is deleted as
    soon as the weights are in memory.
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
    write_provenance(out_dir, provenance)


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
