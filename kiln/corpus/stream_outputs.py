"""The streaming corpus stage's outputs (:mod:`kiln.corpus.stream`, step 3): the Parquet schema of the kept
documents, ``removed.parquet`` streamed from the per-shard removal files, and the train/val split into parts
(:mod:`kiln.corpus.stream_split`), each a task per shard through ``corpus.executor``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kiln.atomic import staged_path
from kiln.corpus import spill
from kiln.corpus import stream_split as ss
from kiln.corpus.schema import SchemaSummary
from kiln.corpus.steps.base import Removal

if TYPE_CHECKING:
    from kiln.corpus.stream import Plan


def summary_task(path: Path) -> SchemaSummary:
    """The metadata kinds of one shard of kept documents."""
    summary = SchemaSummary()
    for doc in spill.load_docs(path):
        summary.add(doc)
    return summary


def write_removed_stream(plan: Plan, path: Path, n_steps: int) -> int:
    """``removed.parquet`` from the per-step, per-shard removal files: by step, then corpus order."""
    schema = pa.schema([("id", pa.string()), ("step", pa.string()), ("reason", pa.string())])
    n = 0
    with staged_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for k in range(n_steps + 1):
            for f in sorted((plan.work / "removed").glob(f"{k:03d}-*.pkl")):
                rows: list[Removal] = spill.load_obj(f)  # type: ignore[assignment]
                if rows:
                    writer.write_table(pa.table({"id": [r.id for r in rows], "step": [r.step for r in rows],
                                                 "reason": [r.reason for r in rows]}, schema=schema))
                    n += len(rows)
    return n


def split_streaming(plan: Plan, shards: list[Path], schema: pa.Schema) -> tuple[ss.PartsWritten, dict[str, Any]]:
    """Train/val parts of the kept shards and the split's funnel entry (as :mod:`kiln.corpus.clean`)."""
    cfg = plan.cfg
    job = ss.SplitJob(cfg.val_fraction, cfg.split_seed, list(cfg.split_order_by), schema, plan.work / "split",
                      cfg.shard_docs or 0, cfg.shard_bytes or 0)
    job.work.mkdir()
    written = ss.PartsWritten()
    if cfg.split == "tail":
        chars = plan.tasks(ss.tail_chars_task, [(job, s, p, len(shards)) for s, p in enumerate(shards)])
        total = sum(chars)
        n_val = round(cfg.val_fraction * total)
        cut = total - n_val
        if job.order_by:
            written = ss.tail_merge_write(job, len(shards), cut)
        else:
            offsets = np.concatenate([[0], np.cumsum(chars, dtype=np.int64)])[:-1].tolist() if chars else []
            for r in plan.tasks(ss.tail_write_task, [(job, s, p, off, cut) for s, (p, off) in
                                                     enumerate(zip(shards, offsets, strict=True))]):
                written.add(r)
        info: dict[str, Any] = {
            "rule": "tail", "val_fraction": cfg.val_fraction, "order_by": list(cfg.split_order_by),
            "total_chars": total, "cut_char": cut, "val_chars": n_val, "split_document": written.straddler,
            "first_val_id": written.first_val_id,
        }  # fmt: skip
    else:
        results = plan.tasks(ss.hash_write_task, [(job, s, p, ss.NO_FORCE) for s, p in enumerate(shards)])
        forced = ss.hash_forced(job, [r[1] for r in results])
        parts = [r[0] for r in results]
        for p in (forced["val_pos"], forced["train_pos"]):
            if p is not None:
                s = spill.shard_of(p)
                parts[s] = ss.hash_write_task((job, s, shards[s], forced))[0]
        for r in parts:
            written.add(r)
        info = {"val_fraction": cfg.val_fraction, "seed": cfg.split_seed,
                "rule": "sha256(f'{seed}:{id}') < val_fraction", "forced_val": forced["forced_val"],
                "forced_train": forced["forced_train"]}
    info.update(train_docs=written.docs["train"], val_docs=written.docs["val"],
                train_bytes=written.nbytes["train"], val_bytes=written.nbytes["val"])
    return written, info
