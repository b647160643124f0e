"""Question-answering sets as JSONL: ``{"id", "question", "answers": [...], "gold_ids": [...]}``.

``gold_ids`` (the documents an answer comes from) is optional; other keys are ignored.
"""

from __future__ import annotations

from pathlib import Path

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


def load_qa(path: str | Path) -> list[QAExample]:
    """Read a QA JSONL file (plain or ``.gz``) into :class:`QAExample` records, in file order.

    Raises :class:`DataError` naming the line for malformed JSON, a missing or duplicate ``id``,
    an empty ``question``, and ``answers`` that is not a non-empty list of strings.
    """
    path = Path(path)
    examples: list[QAExample] = []
    lines: dict[str, int] = {}
    for line, record in iter_jsonl(path):
        example_id = unique_record_id(record, path, line, lines, hint="question ids must be unique", keys=("id", "_id"))
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                "record has no non-empty 'question' string", path=path, line=line, hint=f"fields present: {sorted(record)}"
            )
        if "answers" not in record:
            raise DataError(
                "record has no 'answers' field", path=path, line=line, hint='add "answers": ["..."] with the gold answers'
            )
        answers = tuple(a for a in _string_list(record, "answers", path, line) if a.strip())
        if not answers:
            raise DataError("'answers' is empty", path=path, line=line, hint="give at least one non-empty answer")
        gold_ids = _string_list(record, "gold_ids", path, line) if record.get("gold_ids") is not None else ()
        examples.append(QAExample(id=example_id, question=question.strip(), answers=answers, gold_ids=gold_ids))
    if not examples:
        raise DataError("the file holds no questions", path=path)
    return examples
