"""The corpus stage: read every source, clean, split; write train/val Parquet and the funnel.

Parquet columns: ``id``, ``text``, ``source`` (strings, not null), then every metadata key seen in
any document read, sorted by name, nullable. A metadata column's type is decided from its non-null
values over all documents read (so filter settings never change the schema): all bool -> bool,
all int -> int64, all int/float -> float64, anything else (or no values) -> string (``str(v)``).
Rows keep the read order: sources in recipe order, each source in its reader's order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kiln.atomic import staged_path, write_json
from kiln.corpus.clean import nbytes, split_docs, split_tail
from kiln.corpus.pipeline import curate, write_removed
from kiln.corpus.sources import Doc, SourceError, cache_dir_for, read_source, source_label
from kiln.corpus.steps.base import StepContext
from kiln.progress import log, track
from kiln.recipe import CorpusConfig

BASE_COLUMNS = ("id", "text", "source")
_INT64 = (-(2**63), 2**63 - 1)


def _column_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if any(isinstance(v, bool) for v in present):
        return pa.string()
    if present and all(isinstance(v, int) and _INT64[0] <= v <= _INT64[1] for v in present):
        return pa.int64()
    if present and all(isinstance(v, int | float) for v in present):
        return pa.float64()
    return pa.string()


def corpus_schema(docs: list[Doc]) -> pa.Schema:
    """The deterministic schema for ``docs`` (see the module docstring)."""
    keys = sorted({k for d in docs for k in d} - set(BASE_COLUMNS))
    fields = [pa.field(name, pa.string(), nullable=False) for name in BASE_COLUMNS]
    fields += [pa.field(k, _column_type([d.get(k) for d in docs])) for k in keys]
    return pa.schema(fields)


def _cast(value: Any, kind: pa.DataType) -> Any:
    if value is None or not pa.types.is_string(kind):
        return float(value) if value is not None and pa.types.is_floating(kind) else value
    return value if isinstance(value, str) else str(value)


def write_parquet(path: Path, docs: list[Doc], schema: pa.Schema) -> None:
    """Write ``docs`` with ``schema`` atomically."""
    columns = {f.name: pa.array([_cast(d.get(f.name), f.type) for d in docs], type=f.type) for f in schema}
    table = pa.table(columns, schema=schema)
    with staged_path(path) as tmp:
        pq.write_table(table, tmp)


def read_all(cfg: CorpusConfig) -> tuple[list[Doc], dict[str, dict[str, Any]]]:
    """Every document of every source, in order; per-source stats. Duplicate ids are an error."""
    cache = cache_dir_for(cfg)
    docs: list[Doc] = []
    owner: dict[str, str] = {}
    stats: dict[str, dict[str, Any]] = {}
    for src in cfg.sources:
        label = source_label(src)
        start = time.perf_counter()
        n = size = 0
        for doc in track(read_source(src, cache), f"corpus: read {label}", total=src.max_docs):
            if doc["id"] in owner:
                raise SourceError(
                    f"duplicate document id '{doc['id']}' (sources '{owner[doc['id']]}' and '{label}'); "
                    "give sources distinct `name`s or fix `id_field`"
                )
            owner[doc["id"]] = label
            docs.append(doc)
            n += 1
            size += nbytes(doc["text"])
        secs = time.perf_counter() - start
        entry = stats.setdefault(label, {"kind": src.kind, "docs_read": 0, "bytes_read": 0, "seconds": 0.0})
        entry["docs_read"] += n
        entry["bytes_read"] += size
        entry["seconds"] = round(entry["seconds"] + secs, 3)
        log(f"corpus: {label} ({src.kind}): {n} docs, {size / 1e6:.2f} MB in {secs:.1f} s")
    return docs, stats


def build_corpus(cfg: CorpusConfig, out_dir: Path) -> dict:
    """Read every source, clean, split; write out_dir/train.parquet, out_dir/val.parquet, out_dir/funnel.json.

    Returns ``{"train_docs", "val_docs", "train_bytes", "val_bytes", "sources": {name: docs read}}``.
    """
    out_dir = Path(out_dir)
    docs, stats = read_all(cfg)
    schema = corpus_schema(docs)
    ctx = StepContext(cache_dir=cache_dir_for(cfg), run_dir=out_dir.parent, out_dir=out_dir, seed=cfg.split_seed,
                      on_error=cfg.on_error)
    kept, steps = curate(docs, cfg, ctx)
    write_removed(out_dir / "removed.parquet", ctx.removed)
    if cfg.split == "tail":
        train, val, split = split_tail(kept, cfg.val_fraction, cfg.split_order_by)
    else:
        train, val, split = split_docs(kept, cfg.val_fraction, cfg.split_seed)
    for name, part in (("train", train), ("val", val)):
        for doc in part:
            stats[doc["source"]][f"{name}_docs"] = stats[doc["source"]].get(f"{name}_docs", 0) + 1
    for entry in stats.values():
        entry.setdefault("train_docs", 0)
        entry.setdefault("val_docs", 0)
    write_parquet(out_dir / "train.parquet", train, schema)
    write_parquet(out_dir / "val.parquet", val, schema)
    funnel = {
        "steps": [s.to_json() for s in steps],
        "sources": stats,
        "split": split,
        "schema": [f"{f.name}: {f.type}" for f in schema],
    }
    write_json(out_dir / "funnel.json", funnel)
    log(
        f"corpus: {len(docs)} read -> {len(kept)} kept -> train {len(train)} docs "
        f"({split['train_bytes'] / 1e6:.2f} MB), val {len(val)} docs ({split['val_bytes'] / 1e6:.2f} MB)"
    )
    return {
        "train_docs": split["train_docs"],
        "val_docs": split["val_docs"],
        "train_bytes": split["train_bytes"],
        "val_bytes": split["val_bytes"],
        "sources": {name: entry["docs_read"] for name, entry in stats.items()},
    }
