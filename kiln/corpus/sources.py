"""Source readers: each yields document dicts ``{"id", "text", "source", **metadata}``.

Ids are prefixed with the source label (``{source}/...``) so they stay unique across sources.
Metadata values are scalars (str, int, float, bool or None); dates and decimals become strings,
lists, dicts and bytes are dropped, and fields named ``id``, ``text`` or ``source`` never become
metadata (the reader's own columns win).
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.recipe import CorpusConfig, SourceConfig

RESERVED = frozenset({"id", "text", "source"})
Doc = dict[str, Any]


class SourceError(ValueError):
    """Input that cannot be read; the message names the file (and line or row)."""


def cache_dir_for(cfg: CorpusConfig) -> Path:
    """``cfg.cache_dir``, else ``$KILN_CACHE``, else ``~/.cache/kiln``."""
    return Path(cfg.cache_dir or os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln").expanduser()


def source_label(src: SourceConfig) -> str:
    """The ``source`` column value: ``name``, else the file stem (folder name) or the kind."""
    if src.name:
        return src.name
    if src.path:
        p = Path(src.path)
        return p.stem if p.suffix else p.name
    return src.kind


def scalar(value: Any) -> tuple[bool, Any]:
    """``(keep, value)`` for a metadata value: scalars pass, dates/decimals become strings."""
    if value is None or isinstance(value, str | int | float | bool):
        return True, value
    if isinstance(value, dt.date | dt.time | dt.timedelta | decimal.Decimal):
        return True, str(value)
    return False, None


def _doc(doc_id: str, text: str, source: str, row: dict[str, Any], skip: set[str]) -> Doc:
    doc: Doc = {"id": doc_id, "text": text, "source": source}
    for key, value in row.items():
        if key in RESERVED or key in skip:
            continue
        keep, value = scalar(value)
        if keep:
            doc[str(key)] = value
    return doc


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"source path not found: {p}")
    return p


def _open(p: Path):  # noqa: ANN202 - a binary file object
    try:
        return open(p, "rb")  # noqa: SIM115 - the caller's with-block closes it
    except OSError as exc:
        raise SourceError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _row_doc(row: Any, where: str, source: str, default_id: str, text_field: str, id_field: str | None) -> Doc:
    if not isinstance(row, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if text_field not in row or row[text_field] is None:
        raise SourceError(f"{where}: missing text field '{text_field}' (fields: {', '.join(map(str, row)) or 'none'})")
    text = row[text_field]
    if not isinstance(text, str):
        raise SourceError(f"{where}: text field '{text_field}' must be a string, got {type(text).__name__}")
    doc_id = default_id
    if id_field is not None:
        if row.get(id_field) is None:
            raise SourceError(f"{where}: missing id field '{id_field}'")
        doc_id = f"{source}/{row[id_field]}"
    return _doc(doc_id, text, source, row, {text_field, id_field or text_field})


def read_jsonl(path: str, source: str, text_field: str = "text", id_field: str | None = None) -> Iterator[Doc]:
    """One document per non-blank line; default id ``{source}/{line_no}`` (1-based)."""
    p = _existing(path)
    with _open(p) as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{p}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            yield _row_doc(row, where, source, f"{source}/{line_no}", text_field, id_field)


def read_parquet(path: str, source: str, text_field: str = "text", id_field: str | None = None) -> Iterator[Doc]:
    """One document per row; default id ``{source}/{row}`` (0-based); list/struct columns are dropped."""
    import pyarrow.parquet as pq

    p = _existing(path)
    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise SourceError(f"{p}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    for col in (text_field, id_field):
        if col is not None and col not in names:
            raise SourceError(f"{p}: missing column '{col}' (available: {', '.join(names)})")
    row_no = 0
    batches = pf.iter_batches(batch_size=4096)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # noqa: BLE001 - a corrupt page: pyarrow raises several types
            raise SourceError(f"{p}: unreadable Parquet data after row {row_no} ({exc})") from None
        if batch is None:
            break
        try:
            rows = batch.to_pylist()
        except Exception as exc:  # noqa: BLE001 - a corrupt value, e.g. invalid UTF-8 in a string column
            bad = row_no + _first_unreadable_row(batch)
            raise SourceError(f"{p}: row {bad}: unreadable value ({type(exc).__name__}: {exc})") from None
        for row in rows:
            yield _row_doc(row, f"{p}: row {row_no}", source, f"{source}/{row_no}", text_field, id_field)
            row_no += 1


def _first_unreadable_row(batch: Any) -> int:
    """Index of the first row of a pyarrow record batch that cannot be converted to Python (0 if none)."""
    for i in range(batch.num_rows):
        try:
            batch.slice(i, 1).to_pylist()
        except Exception:  # noqa: BLE001 - whatever the conversion raised, this is the row
            return i
    return 0


def read_txt(path: str, source: str, skipped: list[str] | None = None) -> Iterator[Doc]:
    """A ``.txt`` file, or every ``.txt`` under a folder (recursive, sorted): one document per file.

    Id ``{source}/{relative path}`` (the file name for a single file); metadata ``file``. A file that cannot
    be read (or is not UTF-8) is a :class:`SourceError`, or, with a ``skipped`` list (``corpus.on_error:
    skip``), its error message is appended there and the file skipped."""
    p = _existing(path)
    if p.is_dir():
        files = sorted((f for f in p.rglob("*.txt") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise SourceError(f"{p}: no .txt files in this folder")
        rels = [f.relative_to(p).as_posix() for f in files]
    else:
        files, rels = [p], [p.name]
    for f, rel in zip(files, rels, strict=True):
        try:
            try:
                text = f.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise SourceError(f"{f}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            except OSError as exc:
                raise SourceError(f"{f}: cannot read ({exc.strerror or exc})") from None
        except SourceError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
            continue
        yield {"id": f"{source}/{rel}", "text": text, "source": source, "file": rel}


def skip_list(cfg: CorpusConfig) -> list[str] | None:
    """A list collecting unreadable files under ``corpus.on_error: skip``; None (raise) under ``stop``."""
    return [] if cfg.on_error == "skip" else None


def record_source(stats: dict[str, dict[str, Any]], src: SourceConfig, n: int, size: int, seconds: float,
                  skipped: list[str] | None) -> dict[str, Any]:
    """Add one read of ``src`` (``n`` documents, ``size`` bytes, ``seconds``, skipped files) to its funnel entry."""
    label = source_label(src)
    entry = stats.setdefault(label, {"kind": src.kind, "docs_read": 0, "bytes_read": 0, "seconds": 0.0})
    entry["docs_read"] += n
    entry["bytes_read"] += size
    entry["seconds"] = round(entry["seconds"] + seconds, 3)
    count_skipped(entry, label, skipped)
    return entry


def source_entry(stats: dict[str, dict[str, Any]], label: str) -> dict[str, Any]:
    """The funnel entry of source ``label``; one with nothing read for documents a step added (``plant``'s junk)."""
    return stats.setdefault(label, {"kind": "step", "docs_read": 0, "bytes_read": 0, "seconds": 0.0})


def count_skipped(entry: dict[str, Any], label: str, skipped: list[str] | None) -> None:
    """Record a source's skipped files in its funnel entry (``files_skipped``, the first few errors) and log them."""
    if not skipped:
        return
    entry["files_skipped"] = entry.get("files_skipped", 0) + len(skipped)
    entry.setdefault("skipped_examples", []).extend(skipped[:3 - len(entry.get("skipped_examples", []))])
    from kiln.progress import log

    log(f"corpus: {label}: skipped {len(skipped)} unreadable file(s) (corpus.on_error: skip), e.g. {skipped[0]}")


def read_source(src: SourceConfig, cache_dir: Path, skipped: list[str] | None = None) -> Iterator[Doc]:
    """Documents of one source, truncated to ``max_docs``; with a ``skipped`` list, unreadable files of a
    ``txt`` folder are recorded there and skipped (``corpus.on_error: skip``) instead of raising."""
    label = source_label(src)
    docs: Iterator[Doc]
    if src.kind == "jsonl":
        docs = read_jsonl(str(src.path), label, src.text_field, src.id_field)
    elif src.kind == "parquet":
        docs = read_parquet(str(src.path), label, src.text_field, src.id_field)
    elif src.kind == "txt":
        docs = read_txt(str(src.path), label, skipped)
    elif src.kind == "shakespeare":
        from kiln.corpus.shakespeare import read_shakespeare

        docs = read_shakespeare(cache_dir, list(src.editions), label)
    elif src.kind == "pydocs":
        from kiln.corpus.pydocs import read_pydocs

        docs = read_pydocs(label)
    else:  # pragma: no cover - the recipe's Literal forbids it
        raise SourceError(f"unknown source kind '{src.kind}'")
    return itertools.islice(docs, src.max_docs) if src.max_docs else docs
