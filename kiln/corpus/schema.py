"""The corpus Parquet schema, decided from the documents read (see kiln/corpus/stage.py's docstring).

The type of a metadata column depends only on the *kinds* of its non-null values, so the streaming stage
keeps one small set of kinds per key (:class:`SchemaSummary`, merged across shards) instead of the values:
all bool -> bool, all int (int64 range) -> int64, all int/float -> float64, anything else -> string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kiln.atomic import staged_path
from kiln.corpus.report import Doc

BASE_COLUMNS = ("id", "text", "source")
_INT64 = (-(2**63), 2**63 - 1)


def value_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if _INT64[0] <= v <= _INT64[1] else "bigint"
    if isinstance(v, float):
        return "float"
    return "other"


def kinds_type(kinds: set[str]) -> pa.DataType:
    """The column type for a column whose non-null values have these kinds."""
    if kinds == {"bool"}:
        return pa.bool_()
    if not kinds or "bool" in kinds:
        return pa.string()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "bigint", "float"}:
        return pa.float64()
    return pa.string()


class SchemaSummary:
    """Per metadata key, the kinds of its non-null values seen so far."""

    def __init__(self) -> None:
        self.kinds: dict[str, set[str]] = {}

    def add(self, doc: Doc) -> None:
        for k, v in doc.items():
            if k in BASE_COLUMNS:
                continue
            seen = self.kinds.setdefault(k, set())
            if v is not None:
                seen.add(value_kind(v))

    def update(self, other: SchemaSummary) -> None:
        for k, kinds in other.kinds.items():
            self.kinds.setdefault(k, set()).update(kinds)

    def schema(self) -> pa.Schema:
        fields = [pa.field(name, pa.string(), nullable=False) for name in BASE_COLUMNS]
        fields += [pa.field(k, kinds_type(self.kinds[k])) for k in sorted(self.kinds)]
        return pa.schema(fields)


def corpus_schema(docs: list[Doc]) -> pa.Schema:
    """The deterministic schema for ``docs``."""
    summary = SchemaSummary()
    for d in docs:
        summary.add(d)
    return summary.schema()


def _cast(value: Any, kind: pa.DataType) -> Any:
    if value is None or not pa.types.is_string(kind):
        return float(value) if value is not None and pa.types.is_floating(kind) else value
    return value if isinstance(value, str) else str(value)


def _column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """``values`` as a column of type ``kind`` (the cast of :func:`_cast`; skipped when nothing needs it)."""
    string = pa.types.is_string(kind)
    if (string and all(v is None or type(v) is str for v in values)) or pa.types.is_boolean(kind) or \
            pa.types.is_integer(kind):
        return pa.array(values, type=kind)
    return pa.array([_cast(v, kind) for v in values], type=kind)


def write_parquet(path: Path, docs: list[Doc], schema: pa.Schema) -> None:
    """Write ``docs`` with ``schema`` atomically."""
    columns = {f.name: _column([d.get(f.name) for d in docs], f.type) for f in schema}
    table = pa.table(columns, schema=schema)
    with staged_path(path) as tmp:
        pq.write_table(table, tmp)
