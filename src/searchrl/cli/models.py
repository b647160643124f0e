"""``searchrl models pull|list``: fetch a model into the local model cache, and show what is there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from searchrl.errors import ConfigError

models_app = typer.Typer(help="Fetch models into the local cache and list them.", no_args_is_help=True)

CacheOption = Annotated[
    Optional[Path], typer.Option("--cache-dir", help="Model cache folder (default: $SEARCHRL_CACHE/models).")
]


def _check_cache_dir(cache_dir: Path | None) -> None:
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError("--cache-dir is a file; it takes a folder", path=cache_dir)


@models_app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="Hugging Face id, alias (smollm2-135m-instruct, all-minilm-l6-v2), folder or .gguf file.")],
    kind: Annotated[
        Optional[str],
        typer.Option("--kind", help="causal-lm or sentence-transformer (default: known for the built-in models, else causal-lm)."),
    ] = None,
    cache_dir: CacheOption = None,
) -> None:
    """Resolve NAME to a local model folder (downloading / converting once) and print the folder."""
    from searchrl.resolver import guess_kind, resolve_model

    _check_cache_dir(cache_dir)
    folder = resolve_model(name, kind=kind or guess_kind(name), cache_dir=cache_dir)  # type: ignore[arg-type]
    typer.echo(str(folder))


@models_app.command("list")
def list_models(
    cache_dir: CacheOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the models in the cache: name, kind, source, size and folder."""
    from searchrl.resolver import list_cached_models, models_dir

    _check_cache_dir(cache_dir)
    models = list_cached_models(cache_dir)
    if as_json:
        for model in models:
            record = {"name": model.name, "kind": model.kind, "source": model.source,
                      "size_bytes": model.size_bytes, "folder": str(model.folder)}
            typer.echo(json.dumps(record))
        return
    if not models:
        typer.echo(f"no models in {models_dir(cache_dir)} (fetch one with `searchrl models pull NAME`)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for header in ("name", "kind", "source", "size", "folder"):
        table.add_column(header, overflow="fold")
    for model in models:
        table.add_row(model.name, model.kind, model.source, f"{model.size_bytes / 1e6:,.0f} MB", str(model.folder))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``models pull|list`` to ``app``."""
    app.add_typer(models_app, name="models")
