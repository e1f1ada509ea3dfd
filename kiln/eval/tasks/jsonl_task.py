"""A user's multiple-choice task: a JSONL file, one question per line.

Each line is a JSON object ``{"context": str, "choices": [str, ...], "gold": int}`` with optional ``"id"``
(default ``line-N``) and ``"label"`` (default: the gold choice, stripped). Blank lines are skipped. The
choices are scored as given (each carries its own leading space or newline), under the single template
``given``. Errors name the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.eval.tasks.templates import Question, Template

GIVEN = Template("given", "{context}", "{choice}")


class JsonlTaskError(ValueError):
    """A task file that cannot be used; the message names the file, line and field."""


def _check(row: Any, where: str) -> tuple[str, list[str], int]:
    if not isinstance(row, dict):
        raise JsonlTaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("context", "choices", "gold"):
        if key not in row:
            raise JsonlTaskError(f"{where}: field '{key}' is missing (need context, choices, gold)")
    context, choices, gold = row["context"], row["choices"], row["gold"]
    if not isinstance(context, str):
        raise JsonlTaskError(f"{where}: field 'context' must be a string, got {type(context).__name__}")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise JsonlTaskError(f"{where}: field 'choices' must be a list of strings")
    if len(choices) < 2:
        raise JsonlTaskError(f"{where}: field 'choices' needs at least 2 choices, got {len(choices)}")
    if len(set(choices)) != len(choices):
        raise JsonlTaskError(f"{where}: field 'choices' has a repeated choice")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise JsonlTaskError(f"{where}: field 'gold' must be an integer in [0, {len(choices) - 1}], got {gold!r}")
    for key in ("id", "label"):
        if key in row and not isinstance(row[key], str | int):
            raise JsonlTaskError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
    return context, choices, gold


def json_rows(raw: str, path: str | Path) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "path:line", parsed value)`` of every non-blank line of a JSONL text; a line that is not
    JSON is a :class:`JsonlTaskError` naming the file, the line and the column."""
    for lineno, line in enumerate(raw.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield lineno, where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonlTaskError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None


def read_questions(path: str | Path) -> list[Question]:
    """The questions of a task file, in file order."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JsonlTaskError(f"{path}: cannot read the task file ({exc})") from exc
    out: list[Question] = []
    seen: dict[str, int] = {}
    for lineno, where, row in json_rows(raw, path):
        context, choices, gold = _check(row, where)
        qid = str(row.get("id", f"line-{lineno}"))
        if qid in seen:
            raise JsonlTaskError(f"{where}: field 'id' {qid!r} repeats line {seen[qid]}")
        seen[qid] = lineno
        label = str(row.get("label", choices[gold].strip()))
        out.append(Question(qid, {"context": context}, tuple({"choice": c} for c in choices), gold, label, ""))
    if not out:
        raise JsonlTaskError(f"{path}: no questions (expected one JSON object per line)")
    return out
