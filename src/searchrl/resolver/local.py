"""Local paths: a model folder as it is, a ``.gguf`` file (or a folder holding one) converted once."""

from __future__ import annotations

from pathlib import Path

from searchrl.errors import ModelError
from searchrl.resolver.gguf import convert_local_gguf
from searchrl.resolver.names import ModelKind


def resolve_local(path: Path, kind: ModelKind, root: Path) -> Path:
    """The loadable folder for a local ``path``; ``.gguf`` conversions go under ``root``."""
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
