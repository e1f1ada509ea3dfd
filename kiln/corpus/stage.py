"""The corpus stage: read every source, clean, split; write train/val Parquet parts and the funnel.

Outputs (in the stage folder): ``train-NNNNN.parquet`` and ``val-NNNNN.parquet`` parts (names from
:func:`kiln.corpus.files.part_name`; readers go through :mod:`kiln.corpus.files`), ``removed.parquet``
(one row per removed document: ``id``, ``step``, ``reason``, by step then corpus order) and ``funnel.json``.

Parquet columns: ``id``, ``text``, ``source`` (strings, not null), then every metadata key seen in
any document read or added by a step to a kept document (a scorer's column), sorted by name, nullable. A
metadata column's type is decided from its non-null values over those documents (every part of every split
has the same schema): all bool -> bool, all int -> int64, all int/float -> float64, anything else (or no
values) -> string (``str(v)``). Rows keep the read order: sources in recipe order, each source in
its reader's order (``split: tail`` with ``split_order_by``: that order).

The stage streams (:mod:`kiln.corpus.stream`): memory is bounded by the shard size
(``corpus.shard_docs`` / ``corpus.shard_bytes``), not the corpus. :func:`reference_corpus` is the
in-memory path (every document in one list): the reference the streaming stage is tested against.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kiln.atomic import write_json
from kiln.corpus.clean import split_docs, split_tail
from kiln.corpus.pipeline import curate
from kiln.corpus.report import nbytes
from kiln.corpus.schema import BASE_COLUMNS, SchemaSummary, corpus_schema, write_parquet
from kiln.corpus.sources import (
    Doc,
    SourceError,
    cache_dir_for,
    read_source,
    record_source,
    skip_list,
    source_entry,
    source_label,
)
from kiln.corpus.steps.base import Removal, StepContext
from kiln.progress import log, track
from kiln.recipe import CorpusConfig

__all__ = ["BASE_COLUMNS", "build_corpus", "corpus_schema", "read_all", "reference_corpus", "write_parquet"]


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
        skipped = skip_list(cfg)
        for doc in track(read_source(src, cache, skipped), f"corpus: read {label}", total=src.max_docs):
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
        record_source(stats, src, n, size, secs, skipped)
    return docs, stats


def reference_corpus(cfg: CorpusConfig, out_dir: Path | None = None) -> tuple[list[Doc], list[Doc], dict,
                                                                             list[Removal]]:
    """The in-memory corpus stage: ``(train, val, funnel, removed)`` with every document in one list.

    Writes nothing; equal to what :func:`build_corpus` writes (funnel ``seconds`` aside)."""
    docs, stats = read_all(cfg)
    ctx = StepContext(cache_dir=cache_dir_for(cfg), run_dir=out_dir.parent if out_dir else None, out_dir=out_dir,
                      seed=cfg.split_seed, on_error=cfg.on_error)
    kept, steps = curate(docs, cfg, ctx)
    summary = SchemaSummary()
    for doc in docs + kept:  # metadata of every document read, and the fields steps added (scores)
        summary.add(doc)
    schema = summary.schema()
    if cfg.split == "tail":
        train, val, split = split_tail(kept, cfg.val_fraction, cfg.split_order_by)
    else:
        train, val, split = split_docs(kept, cfg.val_fraction, cfg.split_seed)
    for name, part in (("train", train), ("val", val)):
        for doc in part:
            entry = source_entry(stats, doc["source"])
            entry[f"{name}_docs"] = entry.get(f"{name}_docs", 0) + 1
    for entry in stats.values():
        entry.setdefault("train_docs", 0)
        entry.setdefault("val_docs", 0)
    funnel = {"steps": [s.to_json() for s in steps], "sources": stats, "split": split,
              "schema": [f"{f.name}: {f.type}" for f in schema]}
    return train, val, funnel, ctx.removed


def refuse_empty(cfg: CorpusConfig, funnel: dict) -> None:
    """A corpus with no training document is an error naming the sources (and the step that emptied it)."""
    if funnel["split"]["train_docs"] > 0:
        return
    read = {name: entry["docs_read"] for name, entry in funnel["sources"].items()}
    where = ", ".join(f"'{source_label(s)}' ({s.kind}{': ' + str(s.path) if s.path else ''}): "
                      f"{read.get(source_label(s), 0)} documents" for s in cfg.sources)
    if not any(read.values()):
        raise SourceError(f"corpus: no documents read from any source ({where}); check the paths and "
                          "that the files are not empty")
    emptied = next((r["step"] for r in funnel["steps"] if r["docs_in"] and not r["docs_out"]), None)
    raise SourceError(f"corpus: no document left for training ({where}"
                      f"{f'; step {emptied!r} removed the last ones' if emptied else ''}); see funnel.json "
                      "and loosen the filters (e.g. corpus.min_chars)")


def build_corpus(cfg: CorpusConfig, out_dir: Path) -> dict:
    """Read every source, clean, split; write the parts, removed.parquet and funnel.json into ``out_dir``.

    Returns ``{"train_docs", "val_docs", "train_bytes", "val_bytes", "sources": {name: docs read}}``.
    """
    from kiln.corpus.stream import build_streaming

    out_dir = Path(out_dir)
    funnel, read, kept = build_streaming(cfg, out_dir)
    write_json(out_dir / "funnel.json", funnel)
    split = funnel["split"]
    refuse_empty(cfg, funnel)
    if split["val_docs"] == 1:
        log(f"corpus: warning: the validation split holds a single document ({split['val_bytes']} bytes): "
            "validation numbers will be noisy; raise corpus.val_fraction or add documents")
    log(
        f"corpus: {read.docs_read} read -> {kept} kept -> train {split['train_docs']} docs "
        f"({split['train_bytes'] / 1e6:.2f} MB), val {split['val_docs']} docs ({split['val_bytes'] / 1e6:.2f} MB)"
    )
    return {
        "train_docs": split["train_docs"],
        "val_docs": split["val_docs"],
        "train_bytes": split["train_bytes"],
        "val_bytes": split["val_bytes"],
        "sources": {name: entry["docs_read"] for name, entry in funnel["sources"].items()},
    }
