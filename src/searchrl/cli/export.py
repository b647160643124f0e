"""``searchrl export RUN``: the run's best policy as a Hub-ready folder with a model card, optionally pushed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from searchrl.progress import stderr_console


def export_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run directory written by `searchrl train coaug|agent`.")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Folder to write (default RUN/export, or RUN/export-merged).")
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Merge the LoRA adapter into the base model (loads with transformers alone).")
    ] = False,
    results: Annotated[
        Optional[Path],
        typer.Option(
            "--results",
            help="JSON of held-out figures for the card (e.g. the output of `searchrl eval --json`); "
            "default: RUN/recipe.json when `searchrl recipe coaug` wrote one.",
        ),
    ] = None,
    base_model: Annotated[
        Optional[str],
        typer.Option("--base-model", help="Hub id of the base model, written into the card and adapter_config.json."),
    ] = None,
    push: Annotated[
        Optional[str], typer.Option("--push", help="Upload the folder to this Hub model repo (OWNER/NAME).")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the --push repo as private.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object describing the export.")] = False,
) -> None:
    """Write RUN/best (LoRA adapter or merged model) with a model card; --push uploads it to the Hub."""
    from searchrl.errors import ConfigError
    from searchrl.export import export_run, push_export

    if push is not None and (push.count("/") != 1 or not all(push.split("/"))):
        raise ConfigError(f"not a Hub repository id: {push!r}", hint="write --push OWNER/NAME")
    result = export_run(
        run, out, merge=merge, results=results, base_model=base_model, hub_base=push is not None, repo_id=push
    )
    summary = result.to_dict()
    stderr_console.print(f"exported {run} -> {result.folder}", highlight=False)
    if push is not None:
        summary["url"] = push_export(result.folder, push, private=private)
        stderr_console.print(f"pushed to {summary['url']}", highlight=False)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(str(result.folder))


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""
    app.command("export")(export_command)
