"""Query/document expansions as JSONL: one ``{"id": ..., "expansion": ...}`` per line.

This is what ``searchrl augment`` writes; other keys on a line (model, timing, parse status)
are ignored when reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from searchrl.data.io import iter_jsonl, string_field, unique_record_id, write_jsonl
from searchrl.errors import DataError


def load_expansions(path: str | Path) -> dict[str, str]:
    """``{id: expansion}`` from an expansions JSONL file (plain or ``.gz``).

    A ``null`` expansion reads as ``""``. Raises :class:`DataError` naming the line for
    malformed JSON, a missing ``id`` or ``expansion`` field, a non-string expansion and a
    duplicate id.
    """
    path = Path(path)
    expansions: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, record in iter_jsonl(path):
        item_id = unique_record_id(record, path, line, lines, hint="keep one expansion per id", keys=("id", "_id"))
        if "expansion" not in record:
            raise DataError(
                "record has no 'expansion' field",
                path=path,
                line=line,
                hint=f'expected {{"id": ..., "expansion": ...}}; fields present: {sorted(record)}',
            )
        expansions[item_id] = string_field(record, "expansion", path, line)
    return expansions


def write_expansions(path: str | Path, mapping: Mapping[str, str]) -> None:
    """Write ``{id: expansion}`` as JSONL (gzip when ``path`` ends in ``.gz``), atomically."""
    write_jsonl(path, ({"id": item_id, "expansion": text} for item_id, text in mapping.items()))
