"""Reading UTF-8 text and JSONL files, plain or gzip-compressed, with errors that name file and line.

Lines are read as bytes and decoded one at a time, so an undecodable byte or a broken JSON
record is reported with its exact line number, and a file of any size is streamed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from searchrl.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"


def is_gzip(path: str | Path) -> bool:
    """True when ``path`` ends in ``.gz`` or starts with the gzip magic bytes."""
    path = Path(path)
    if path.suffix == ".gz":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise DataError("file not found", path=path, hint="check the path")
    if path.is_dir():
        raise DataError("expected a file but found a directory", path=path)


def open_binary(path: str | Path):
    """Open ``path`` for reading bytes, decompressing gzip transparently."""
    path = Path(path)
    _check_readable_file(path)
    if is_gzip(path):
        return gzip.open(path, "rb")
    return open(path, "rb")


def open_text(path: str | Path) -> TextIO:
    """Open ``path`` as UTF-8 text (``.gz`` decompressed transparently); a leading BOM is skipped.

    Decoding errors surface while reading as :class:`UnicodeDecodeError`; use :func:`read_text`
    or :func:`iter_lines` to get a :class:`DataError` with the line number instead.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline=None)


def _decode_error(path: Path, line: int, data: bytes, offset: int) -> DataError:
    """``data[offset]`` is the first undecodable byte of ``line``, whose first byte is ``data[0]``."""
    return DataError(
        f"not valid UTF-8 (byte {data[offset:offset + 1]!r} at column {offset + 1})",
        path=path,
        line=line,
        hint="re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
    )


def _compression_error(path: Path, err: Exception) -> DataError:
    return DataError(f"cannot decompress: {err}", path=path, hint="the .gz file is truncated or not gzip; re-create it")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of ``path`` (1-based, without the newline).

    Streams the file; undecodable bytes raise :class:`DataError` naming the line.
    """
    path = Path(path)
    with open_binary(path) as handle:
        line_number = 0
        try:
            for raw in handle:
                line_number += 1
                if line_number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _decode_error(path, line_number, raw, err.start) from None
                yield line_number, text.rstrip("\r\n")
        except (OSError, EOFError, zlib.error) as err:
            raise _compression_error(path, err) from None


def read_text(path: str | Path) -> str:
    """The whole of ``path`` as a string (UTF-8, ``.gz`` transparent); bad bytes raise :class:`DataError`."""
    path = Path(path)
    try:
        with open_binary(path) as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise _compression_error(path, err) from None
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        raise _decode_error(path, line, data[line_start:], err.start - line_start) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each JSON object in a JSONL file; blank lines are skipped.

    Malformed JSON, a line that is not a JSON object, or undecodable bytes raise
    :class:`DataError` with the file and line.
    """
    path = Path(path)
    for line_number, text in iter_lines(path):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"malformed JSON: {err.msg} (column {err.colno})",
                path=path,
                line=line_number,
                hint="each line of a JSONL file must be one complete JSON object",
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"expected a JSON object, found {type(record).__name__}",
                path=path,
                line=line_number,
                hint='each line must look like {"_id": ..., ...}',
            )
        yield line_number, record


def record_id(record: dict, path: Path, line: int, keys: tuple[str, ...] = ("_id", "id")) -> str:
    """The id of a JSONL record, taken from the first of ``keys`` present, as a non-empty string."""
    for key in keys:
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(
                    f"{key!r} must be a string or an integer, found {type(value).__name__}", path=path, line=line
                )
            value = str(value)
            if not value.strip():
                raise DataError(f"{key!r} is empty", path=path, line=line, hint="every record needs a non-empty id")
            return value
    raise DataError(
        f"record has no {' or '.join(repr(k) for k in keys)} field",
        path=path,
        line=line,
        hint=f"every record needs an id; fields present: {sorted(record)}",
    )


def unique_record_id(
    record: dict,
    path: Path,
    line: int,
    first_seen: dict[str, int],
    *,
    label: str = "id",
    hint: str,
    keys: tuple[str, ...] = ("_id", "id"),
) -> str:
    """:func:`record_id`, raising :class:`DataError` when the id already appeared in the file.

    ``first_seen`` maps each id read so far to its line and is updated here.
    """
    value = record_id(record, path, line, keys)
    if value in first_seen:
        raise DataError(
            f"duplicate {label} {value!r} (first seen on line {first_seen[value]})", path=path, line=line, hint=hint
        )
    first_seen[value] = line
    return value


def string_field(record: dict, key: str, path: Path, line: int, *, default: str | None = "") -> str:
    """``record[key]`` as a string; ``null`` or absent gives ``default`` (absent with ``default=None`` raises)."""
    value = record.get(key)
    if value is None:
        if default is None:
            raise DataError(f"record has no {key!r} field", path=path, line=line)
        return default
    if not isinstance(value, str):
        raise DataError(f"{key!r} must be a string, found {type(value).__name__}", path=path, line=line)
    return value


def resolve_data_file(directory: str | Path, stem: str) -> Path:
    """The file ``stem`` inside ``directory``, plain or with ``.gz`` appended.

    ``stem`` is a file name such as ``"corpus.jsonl"`` or ``"qrels/dev.tsv"``; a bare name
    without a suffix (``"corpus"``) means ``.jsonl``. Raises :class:`DataError` listing what
    the directory holds when neither form exists. ``directory`` may be ``hf:OWNER/NAME``
    (see :mod:`searchrl.data.hub`).
    """
    from searchrl.data.hub import resolve_data_path

    directory = resolve_data_path(directory)
    if not directory.exists():
        raise DataError("data directory not found", path=directory, hint="check the path")
    if not directory.is_dir():
        raise DataError("expected a directory", path=directory)
    name = stem if Path(stem).suffix else stem + ".jsonl"
    candidates = [directory / name, directory / (name + ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in directory.iterdir())
    raise DataError(
        f"neither {name} nor {name}.gz found",
        path=directory,
        hint=f"files present: {', '.join(present[:20]) or 'none'}",
    )


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's entries to disk (directories: so a rename survives a crash).

    Best effort where the platform cannot open a directory (Windows).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a kill or crash leaves either the old or the new file.

    Written to a temporary file beside it, fsync'ed, renamed over ``path``, then the directory
    is fsync'ed; never a truncated file.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write ``records`` as JSONL (gzip when ``path`` ends in ``.gz``) atomically; returns the count.

    The data goes to a temporary file in the same directory first, is fsync'ed and renamed into
    place, so an interrupted write (or a crash soon after) never leaves a truncated file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = gzip.GzipFile(fileobj=raw, mode="wb") if path.suffix == ".gz" else raw
            try:
                for record in records:
                    sink.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
                    count += 1
            finally:
                if sink is not raw:
                    sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return count
