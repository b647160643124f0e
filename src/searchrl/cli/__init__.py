"""The ``searchrl`` command: one sub-command per job, each a thin shell over the library.

Every sub-command module exposes ``register(app)``. Errors from the library
(:class:`searchrl.errors.SearchRLError`), usage errors (an unknown command or option, a missing
or malformed value) and file-system errors (a permission denied, a folder where a file belongs)
become a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from searchrl import __version__
from searchrl.errors import SearchRLError
from searchrl.progress import stderr_console

app = typer.Typer(
    name="searchrl",
    help="Train LLMs to search: expand queries and documents for BM25/dense retrieval, "
    "and run multi-turn search agents, with RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"searchrl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show the libraries' warnings and deprecation notices.")
    ] = False,
) -> None:
    from searchrl.cli.quiet import configure_library_warnings

    configure_library_warnings(verbose)


def _register_all() -> None:
    from searchrl.cli import agent, augment, demo, export, models, recipe, report, retrieval, serve, train

    for module in (retrieval, models, augment, train, recipe, agent, report, serve, demo, export):
        module.register(app)


_register_all()


def _usage_error_classes() -> tuple[type[BaseException], ...]:
    """The exception classes of command-line parsing: typer's own copy of click's, and click's."""
    classes: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click"):  # typer 0.29 raises its vendored copy
        try:
            classes.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):  # pragma: no cover - depends on the installed typer
            pass
    return tuple(classes)


_USAGE_ERRORS = _usage_error_classes()

_OS_ERROR_HINTS = {
    errno.EACCES: "check the file's permissions",
    errno.EPERM: "check the file's permissions",
    errno.EISDIR: "expected a file, found a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "choose another path",
    errno.ENOSPC: "free some disk space",
    errno.EROFS: "the file system is read-only; choose another path",
}


def _error(message: str) -> None:
    # escaped: messages carry paths and hints such as pip install -e ".[vllm]", not markup
    stderr_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _show_usage_error(err: BaseException) -> None:
    """``error: <what>`` and where to find the right usage: two short lines, no usage block."""
    message = err.format_message() if hasattr(err, "format_message") else str(err)
    if type(err).__name__ == "NoArgsIsHelpError":
        if message.strip():  # rich help is printed while the exception is built, plain help is carried
            sys.stderr.write(message.rstrip() + "\n")
        return
    _error(" ".join(message.split()))
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        stderr_console.print(f"try '{escape(ctx.command_path)} --help'", highlight=False, soft_wrap=True)


def _describe_os_error(err: OSError) -> str:
    where = ""
    if err.filename is not None:
        where = f"{os.fsdecode(err.filename)}: "
        if getattr(err, "filename2", None) is not None:
            where = f"{os.fsdecode(err.filename)} -> {os.fsdecode(err.filename2)}: "
    text = where + (err.strerror or str(err))
    hint = _OS_ERROR_HINTS.get(err.errno)
    return f"{text} ({hint})" if hint else text


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``searchrl`` script."""
    try:
        code = app(args=argv, prog_name="searchrl", standalone_mode=False)
    except SearchRLError as err:
        _error(err.format())
        sys.exit(2)
    except KeyboardInterrupt:
        code = 130
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.Abort:
        sys.exit(1)
    except _USAGE_ERRORS as err:
        _show_usage_error(err)
        sys.exit(2)
    except BrokenPipeError:  # e.g. `searchrl search ... | head -1`: the reader has gone, exit quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout once more at exit
        sys.exit(1)
    except OSError as err:
        # A file the user named is unreadable, a folder, on a full disk...: the message says which.
        _error(_describe_os_error(err))
        sys.exit(2)
    # Without standalone mode, typer returns the code of typer.Exit(code) raised by a command.
    if code == 130:
        stderr_console.print("[yellow]interrupted[/] (rerun the same command to resume)")
    if isinstance(code, int) and code:
        sys.exit(code)
