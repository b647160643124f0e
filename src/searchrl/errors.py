"""One exception family for everything a user can get wrong.

Library code raises these; only the CLI turns them into a message and an exit code.
Each message says *where* (file, line or record) and *what to do*.
"""

from __future__ import annotations

from pathlib import Path


class SearchRLError(Exception):
    """Base class of every user-facing error in searchrl."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        text = where + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class DataError(SearchRLError):
    """A data file is malformed or inconsistent."""


class ConfigError(SearchRLError):
    """A configuration file or option is invalid."""


class ModelError(SearchRLError):
    """A model cannot be found, fetched or loaded."""


class EngineError(SearchRLError):
    """A generation engine or server failed (unreachable, timed out, answered garbage)."""


class IndexFileError(SearchRLError):
    """A saved index is missing, incomplete or from an incompatible version."""


class ToolError(SearchRLError):
    """The search tool or an LLM judge failed during an episode."""
