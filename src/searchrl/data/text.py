"""Plain-text and Markdown files cut into overlapping chunks that become retrievable documents."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from searchrl.data.io import read_text
from searchrl.data.types import Document
from searchrl.errors import ConfigError, DataError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text", ".rst")
"""File types picked up when a directory is given to :func:`load_text_corpus` (``.gz`` also accepted)."""

# Boundaries in order of preference; a match's end is where a chunk may be cut.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")
_WHITESPACE = re.compile(r"\s+")


def _last_boundary(pattern: re.Pattern, text: str, lowest: int, highest: int) -> int | None:
    """End of the last match of ``pattern`` that ends within ``(lowest, highest]``, or None."""
    best = None
    for match in pattern.finditer(text, lowest, highest):
        if match.end() > lowest:
            best = match.end()
    return best


def chunk_text(text: str, size: int = 1000, overlap: int = 100) -> list[str]:
    """Cut ``text`` into chunks of at most ``size`` characters; consecutive chunks share up to ``overlap``.

    Each cut is made at the last paragraph break in the window if there is one in its second
    half, else at the last sentence end, else at the last whitespace, and only inside a word
    when the window has no whitespace at all. The overlap starts at a word boundary.
    Whitespace at the ends of chunks is trimmed and empty chunks are dropped.

    >>> chunk_text("One two. Three four. Five six.", size=20, overlap=0)
    ['One two. Three four.', 'Five six.']
    """
    if size <= 0:
        raise ConfigError(f"chunk size must be positive, got {size}")
    if overlap < 0 or overlap >= size:
        raise ConfigError(
            f"chunk overlap must be at least 0 and smaller than the chunk size ({size}), got {overlap}",
            hint="e.g. size=1000, overlap=100",
        )
    chunks: list[str] = []
    length = len(text)
    start = _skip_whitespace(text, 0)
    while start < length:
        window_end = min(start + size, length)
        if window_end == length:
            cut = length
        else:
            # Cuts must land past the overlap so the next chunk starts after this one did,
            # and boundaries are only worth using when they keep at least half a window.
            # Searching one character past the window lets a sentence that ends exactly at
            # the window's edge count (its trailing whitespace is trimmed anyway).
            earliest = start + max(size // 2, overlap + 1) - 1
            search_end = window_end + 1
            cut = (
                _last_boundary(_PARAGRAPH_BREAK, text, earliest, search_end)
                or _last_boundary(_SENTENCE_END, text, earliest, search_end)
                or _last_boundary(_WHITESPACE, text, start, search_end)
                or window_end
            )
            cut = min(cut, window_end)
        chunk = text[start:cut].strip()
        if chunk:
            chunks.append(chunk)
        if cut >= length:
            break
        start = _next_start(text, start, cut, overlap)
    return chunks


def _skip_whitespace(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def _next_start(text: str, start: int, cut: int, overlap: int) -> int:
    """Where the chunk after ``text[start:cut]`` begins: ``overlap`` characters back, at a word start."""
    if overlap == 0:
        return _skip_whitespace(text, cut)
    begin = max(cut - overlap, start + 1)
    if begin > 0 and not text[begin - 1].isspace():
        gap = _WHITESPACE.search(text, begin, cut)
        begin = gap.end() if gap else cut
    return _skip_whitespace(text, begin)


def _expand_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.name.removesuffix(".gz").endswith(TEXT_SUFFIXES)
            )
            if not found:
                raise DataError(
                    "no text files found", path=path, hint=f"expected files ending in {', '.join(TEXT_SUFFIXES)}"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError("file not found", path=path, hint="check the path")
    return files


def _file_stem(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return Path(name).stem


def load_text_corpus(
    paths: str | Path | Iterable[str | Path], size: int = 1000, overlap: int = 100
) -> list[Document]:
    """Chunk text/Markdown files (or the text files under directories) into documents.

    Ids are ``<file stem>-<n>`` with ``n`` counting chunks from 1 within each file; two files
    with the same stem raise :class:`DataError`, since their ids would collide. Files with no
    text are reported with a warning and contribute no documents.
    """
    documents: list[Document] = []
    owners: dict[str, Path] = {}
    empty_files: list[str] = []
    for path in _expand_paths(paths):
        stem = _file_stem(path)
        if stem in owners:
            raise DataError(
                f"two files share the name {stem!r} (also {owners[stem]}); chunk ids would collide",
                path=path,
                hint="rename one of the files",
            )
        owners[stem] = path
        chunks = chunk_text(read_text(path), size=size, overlap=overlap)
        if not chunks:
            empty_files.append(str(path))
        documents.extend(Document(id=f"{stem}-{n}", text=chunk) for n, chunk in enumerate(chunks, start=1))
    if empty_files:
        warnings.warn(f"{len(empty_files)} text files without text skipped: {', '.join(empty_files[:5])}", stacklevel=2)
    if not documents:
        raise DataError("no text to index in the given files", path=", ".join(str(p) for p in owners.values()))
    return documents
