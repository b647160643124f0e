"""Question-answering sets as JSONL: ``{"id", "question", "answers": [...], "gold_ids": [...]}``.

``gold_ids`` (the documents an answer comes from) is optional; other keys are ignored.
FlashRAG and Search-R1 rows, which call the answers ``golden_answers``, are read as they are,
from JSONL or from Parquet files (Search-R1 ships ``train.parquet`` / ``test.parquet``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from collections.abc import Iterator

from searchrl.data.io import iter_jsonl, unique_record_id
from searchrl.data.types import QAExample
from searchrl.errors import DataError


def _string_list(record: dict, key: str, path: Path, line: int) -> tuple[str, ...]:
    value = record[key]
    if not isinstance(value, list):
        raise DataError(
            f"{key!r} must be a list of strings, found {type(value).__name__}",
            path=path,
            line=line,
            hint=f'write e.g. "{key}": ["..."] even for a single value',
        )
    items = []
    for position, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise DataError(
                f"{key!r}[{position}] must be a string, found {type(item).__name__}", path=path, line=line
            )
        items.append(str(item))
    return tuple(items)


ANSWER_KEYS = ("answers", "golden_answers")
"""searchrl's own key, and FlashRAG / Search-R1's."""


def _answers_key(record: dict, path: Path, line: int) -> str:
    present = [key for key in ANSWER_KEYS if key in record]
    if not present:
        raise DataError(
            "record has no 'answers' field", path=path, line=line, hint='add "answers": ["..."] with the gold answers'
        )
    if len(present) > 1 and record["answers"] != record["golden_answers"]:
        raise DataError(
            "record has both 'answers' and 'golden_answers', and they differ",
            path=path,
            line=line,
            hint="keep one of them",
        )
    return present[0]


def _iter_parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(row number, row)`` of a Parquet file, counted from 1 like lines."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a data error
        raise DataError(f"not a readable Parquet file: {err}", path=path) from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def load_qa(path: str | Path) -> list[QAExample]:
    """Read a QA file into :class:`QAExample` records, in file order.

    JSONL (plain or ``.gz``) or Parquet. The answers are ``answers`` (searchrl) or
    ``golden_answers`` (FlashRAG, Search-R1). Raises :class:`DataError` naming the line (row)
    for malformed JSON, a missing or duplicate ``id``, an empty ``question``, and answers that
    are not a non-empty list of strings.
    """
    path = Path(path)
    examples: list[QAExample] = []
    lines: dict[str, int] = {}
    rows = _iter_parquet_rows(path) if path.suffix == ".parquet" and path.is_file() else iter_jsonl(path)
    for line, record in rows:
        example_id = unique_record_id(record, path, line, lines, hint="question ids must be unique", keys=("id", "_id"))
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                "record has no non-empty 'question' string", path=path, line=line, hint=f"fields present: {sorted(record)}"
            )
        answers_key = _answers_key(record, path, line)
        answers = tuple(a for a in _string_list(record, answers_key, path, line) if a.strip())
        if not answers:
            raise DataError(f"{answers_key!r} is empty", path=path, line=line, hint="give at least one non-empty answer")
        gold_ids = _string_list(record, "gold_ids", path, line) if record.get("gold_ids") is not None else ()
        examples.append(QAExample(id=example_id, question=question.strip(), answers=answers, gold_ids=gold_ids))
    if not examples:
        raise DataError("the file holds no questions", path=path)
    return examples


def check_gold_ids(examples: Sequence[QAExample], doc_ids: Collection[str], path: str | Path) -> None:
    """Raise :class:`DataError` when a question's ``gold_ids`` name a document ``doc_ids`` does not hold.

    A gold id outside the corpus can never be retrieved, so every retrieval reward and hit rate
    for that question would silently be 0. ``path`` is the QA file, named in the message.
    """
    known = doc_ids if isinstance(doc_ids, (set, frozenset, dict)) else set(doc_ids)
    missing = [(example.id, gold_id) for example in examples for gold_id in example.gold_ids if gold_id not in known]
    if missing:
        question_id, gold_id = missing[0]
        questions = len({question for question, _ in missing})
        raise DataError(
            f"question {question_id!r} names gold document {gold_id!r}, which is not in the corpus "
            f"({len(missing)} unknown gold ids in {questions} of {len(examples)} questions)",
            path=path,
            hint="gold_ids must be ids of the corpus searched: fix them, or pass the corpus the questions were written for",
        )
