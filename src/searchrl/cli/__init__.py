"""The ``searchrl`` command: one sub-command per job, each a thin shell over the library.

Every sub-command module exposes ``register(app)``. Errors from the library
(:class:`searchrl.errors.SearchRLError`) become a one-line message and exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from searchrl.errors import SearchRLError
from searchrl.progress import stderr_console

app = typer.Typer(
    name="searchrl",
    help="Train LLMs to search: expand queries and documents for BM25/dense retrieval, "
    "and run multi-turn search agents, with RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    from searchrl.cli import agent, augment, models, report, retrieval, train

    for module in (retrieval, models, augment, train, agent, report):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``searchrl`` script."""
    try:
        app(args=argv, standalone_mode=False)
    except SearchRLError as err:
        # escaped: messages carry paths and hints such as pip install -e ".[vllm]", not markup
        stderr_console.print(f"[bold red]error:[/] {escape(err.format())}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        stderr_console.print("[yellow]interrupted[/] (rerun the same command to resume)")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
