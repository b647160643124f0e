"""``searchrl report RUN [RUN...]``: (re)build a run's report.html with training curves, or overlay several runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    runs: Annotated[list[Path], typer.Argument(help="Training run directories (each holds metrics.jsonl).")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Folder for report.html and plots/ (default: the run directory; required for several runs)."),
    ] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="Heading of the page.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: the report path and each plot.")] = False,
) -> None:
    """Plot reward per term, zero-std groups, dev metric, expansion length / searches and step time; prints report.html."""
    from searchrl.report import build_report

    built = build_report(runs, out, title=title)
    if as_json:
        plots = [{"key": p.key, "png": str(p.png), "data": str(p.data), "runs": sorted(p.series)} for p in built.plots]
        typer.echo(json.dumps({"report": str(built.html), "runs": [str(r.path) for r in built.runs], "plots": plots}))
        return
    typer.echo(str(built.html))


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)
