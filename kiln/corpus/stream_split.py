"""The train/validation split of the streaming corpus stage, shard by shard, equal to kiln/corpus/clean.py's.

- ``hash``: one task per shard writes its train and val part and returns its count of documents scoring
  into val and its lowest and highest score; the tiny-corpus rule of :func:`kiln.corpus.clean.split_docs`
  (no document or every one in val) rewrites the one shard holding the forced document. Held in the
  parent: a few numbers per shard.
- ``tail`` in read order: pass 1 sums each shard's characters, the parent places the cut, pass 2 writes
  each shard's parts (the shard holding the cut splits that document). Held: one number per shard.
- ``tail`` with ``split_order_by``: an external merge sort. Pass 1 sorts each shard by (order key,
  corpus position) and writes it as a run of small pickled chunks (about ``shard_bytes / shards`` bytes
  each); the parent merges the runs lazily (``heapq.merge``: one chunk per run in memory, so about one
  shard's worth of text in all) and writes parts of at most ``shard_docs`` documents / ``shard_bytes``
  bytes as it goes. Held besides: one number per shard.

Parts are written under temporary names; :func:`place_parts` renames them to ``{split}-NNNNN.parquet``
in order, skipping empty ones (a split with no document gets one empty part).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from kiln.corpus import spill
from kiln.corpus.clean import TAIL_SUFFIX, _order_key, split_score
from kiln.corpus.files import part_name
from kiln.corpus.mix import base_id
from kiln.corpus.report import Doc, nbytes
from kiln.corpus.schema import write_parquet


@dataclass
class SplitJob:
    fraction: float
    seed: int
    order_by: list[str]
    schema: pa.Schema
    work: Path
    shard_docs: int = 0
    shard_bytes: int = 0


@dataclass
class PartsWritten:
    """What a split task wrote: ``(split, temporary path, documents)`` per part, and its counts."""

    parts: list[tuple[str, Path, int]] = field(default_factory=list)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    docs: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    nbytes: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    straddler: str | None = None
    first_val_id: str | None = None

    def add(self, other: PartsWritten) -> None:
        self.parts += other.parts
        for src, counts in other.by_source.items():
            mine = self.by_source.setdefault(src, {"train_docs": 0, "val_docs": 0})
            for k, n in counts.items():
                mine[k] += n
        for split in ("train", "val"):
            self.docs[split] += other.docs[split]
            self.nbytes[split] += other.nbytes[split]
        self.straddler = self.straddler or other.straddler
        self.first_val_id = self.first_val_id or other.first_val_id


def _write(job: SplitJob, name: str, split: str, docs: list[Doc], out: PartsWritten) -> None:
    path = job.work / f"{name}-{split}.parquet"
    write_parquet(path, docs, job.schema)
    out.parts.append((split, path, len(docs)))
    out.docs[split] += len(docs)
    out.nbytes[split] += sum(nbytes(d["text"]) for d in docs)
    for d in docs:
        counts = out.by_source.setdefault(d["source"], {"train_docs": 0, "val_docs": 0})
        counts[f"{split}_docs"] += 1
    if split == "val" and docs and out.first_val_id is None:
        out.first_val_id = docs[0]["id"]


# ----------------------------------------------------------------------------- hash


Scores = tuple[int, int, tuple | None, tuple | None]


def hash_forced(job: SplitJob, scores: list[Scores]) -> dict[str, Any]:
    """``forced_val`` / ``forced_train`` (id and position) of :func:`kiln.corpus.clean.split_docs`' rule, from
    each shard's ``(docs scoring into val, docs, (min score, pos, id), (max score, -pos, id))``."""
    n_val, n = sum(s[0] for s in scores), sum(s[1] for s in scores)
    forced: dict[str, Any] = {"forced_val": None, "forced_train": None, "val_pos": None, "train_pos": None}
    if job.fraction > 0 and n >= 2:
        if n_val == 0:
            lo = min(s[2] for s in scores if s[2] is not None)
            forced.update(forced_val=lo[2], val_pos=lo[1])
        elif n_val == n:
            hi = max(s[3] for s in scores if s[3] is not None)
            forced.update(forced_train=hi[2], train_pos=-hi[1])
    return forced


NO_FORCE = {"val_pos": None, "train_pos": None}


def hash_write_task(arg: tuple[SplitJob, int, Path, dict[str, Any]]) -> tuple[PartsWritten, Scores]:
    """One shard's train and val parts by score (``forced`` positions overriding), and its scores summary.

    The stage writes every shard with no forcing first; only in the rare tiny-corpus case (no document, or
    every document, scored into val) is the one shard holding the forced document written again."""
    job, shard, path, forced = arg
    docs = spill.load_docs(path)
    parts: dict[str, list[Doc]] = {"train": [], "val": []}
    lo = hi = None
    n_val = 0
    for i, d in enumerate(docs):
        p = spill.pos(shard, i)
        score = split_score(base_id(d["id"]), job.seed)
        in_val = score < job.fraction
        n_val += in_val
        if lo is None or (score, p) < lo[:2]:
            lo = (score, p, d["id"])
        if hi is None or (score, -p) > hi[:2]:
            hi = (score, -p, d["id"])
        in_val = True if p == forced["val_pos"] else False if p == forced["train_pos"] else in_val
        parts["val" if in_val else "train"].append(d)
    out = PartsWritten()
    for split in ("train", "val"):
        _write(job, f"s{shard:05d}", split, parts[split], out)
    return out, (n_val, len(docs), lo, hi)


# ----------------------------------------------------------------------------- tail


def tail_chars_task(arg: tuple[SplitJob, int, Path, int]) -> int:
    """Characters of one shard; with ``order_by``, also writes the shard sorted as a run, in chunks of
    about ``shard_bytes / n_shards`` bytes (so the merge holds about one shard's worth in all)."""
    job, shard, path, n_shards = arg
    docs = spill.load_docs(path)
    if job.order_by:
        keyed = sorted(((_order_key(d, job.order_by), spill.pos(shard, i), d) for i, d in enumerate(docs)),
                       key=lambda t: (t[0], t[1]))
        budget = (job.shard_bytes or 64 * 2**20) // max(1, n_shards)
        spill.save_runs(job.work / f"run-{shard:05d}.pkl", keyed, chunk_bytes=max(budget, 1))
    return sum(len(d["text"]) for d in docs)


def _cut(docs: Iterable[Doc], offset: int, cut: int) -> Iterator[tuple[str, Doc, bool]]:
    """``(split, doc, straddles)`` for documents laid end to end from character ``offset``."""
    for doc in docs:
        end = offset + len(doc["text"])
        if end <= cut:
            yield "train", doc, False
        elif offset >= cut:
            yield "val", doc, False
        else:
            k = cut - offset
            yield "train", {**doc, "text": doc["text"][:k]}, True
            yield "val", {**doc, "id": doc["id"] + TAIL_SUFFIX, "text": doc["text"][k:]}, False
        offset = end


def tail_write_task(arg: tuple[SplitJob, int, Path, int, int]) -> PartsWritten:
    """Read order: shard ``shard`` starting at character ``offset`` of the concatenation."""
    job, shard, path, offset, cut = arg
    parts: dict[str, list[Doc]] = {"train": [], "val": []}
    out = PartsWritten()
    for split, doc, straddles in _cut(spill.load_docs(path), offset, cut):
        parts[split].append(doc)
        if straddles:
            out.straddler = doc["id"]
    for split in ("train", "val"):
        _write(job, f"s{shard:05d}", split, parts[split], out)
    return out


def tail_merge_write(job: SplitJob, n_shards: int, cut: int) -> PartsWritten:
    """``order_by``: merge the sorted runs and write parts sequentially (one chunk per run in memory)."""
    runs = [spill.iter_runs(job.work / f"run-{s:05d}.pkl") for s in range(n_shards)]
    merged = (t[2] for t in heapq.merge(*runs, key=lambda t: (t[0], t[1])))  # type: ignore[index]
    out = PartsWritten()
    buf: dict[str, list[Doc]] = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    count = {"train": 0, "val": 0}

    def flush(split: str) -> None:
        _write(job, f"m{count[split]:05d}", split, buf[split], out)
        count[split] += 1
        buf[split], size[split] = [], 0

    for split, doc, straddles in _cut(merged, 0, cut):
        if straddles:
            out.straddler = doc["id"]
        buf[split].append(spill.watch([doc])[0])
        size[split] += nbytes(doc["text"])
        if (job.shard_docs and len(buf[split]) >= job.shard_docs) or (job.shard_bytes and
                                                                     size[split] >= job.shard_bytes):
            flush(split)
    for split in ("train", "val"):
        if buf[split] or not count[split]:
            flush(split)
    return out


# ----------------------------------------------------------------------------- parts


def place_parts(written: PartsWritten, out_dir: Path, schema: pa.Schema) -> dict[str, int]:
    """Rename the written parts to ``{split}-NNNNN.parquet`` in order (empty parts dropped; a split with
    no documents keeps one empty part). Returns the number of parts per split."""
    n = {"train": 0, "val": 0}
    for split in ("train", "val"):
        mine = [(p, k) for s, p, k in written.parts if s == split]
        for path, k in mine:
            if k == 0:
                path.unlink()
                continue
            os.replace(path, out_dir / part_name(split, n[split]))
            n[split] += 1
        if n[split] == 0:
            write_parquet(out_dir / part_name(split, 0), [], schema)
            n[split] = 1
    return n
