"""Cross-shard dedup for the streaming corpus stage, datatrove-style: per-shard records -> buckets -> removal.

Each dedup step runs in three phases, every phase a list of independent tasks (``corpus.executor``):

1. *records*, one task per shard: hash keys with global positions (``kiln.corpus.spill``), written by
   bucket (key modulo the number of buckets) to the work folder, plus the shard's document ids;
2. *buckets*, one task per bucket: all shards' records of that bucket sorted by (key, position); a key's
   first position wins. MinHash buckets are (band, key range) and yield candidate pairs, joined by
   union-find in the parent over the pairs only (as datatrove's cluster step): each cluster keeps its
   earliest document;
3. *apply*, one task per shard: the shard's documents with its removals (or, for ``subdoc_dedup``, the
   repeated units to delete), through the same ``StepContext`` calls as the in-memory step.

So kept documents, funnel rows, examples and ``removed.parquet`` rows equal the in-memory steps'
(``exact_dedup``: first in corpus order; ``minhash``: the cluster's earliest; ``subdoc_dedup``: a unit
whose text appeared in an earlier document). Memory per task: one shard, or one bucket (~one shard's
records, since there are as many buckets as shards). The parent holds only MinHash's union-find over
documents that have a candidate pair. Keys: exact 128 bits of sha256 / blake2b (collisions ~2^-128);
MinHash bands compare the exact band values (packed two 31-bit values per word).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.corpus import spill
from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import Removal, StepContext

KEY = np.dtype([("k1", "<u8"), ("k2", "<u8"), ("pos", "<i8")])
REM = np.dtype([("pos", "<i8"), ("kept", "<i8"), ("k1", "<u8"), ("k2", "<u8")])
PAIR = np.dtype([("u", "<i8"), ("v", "<i8")])


@dataclass(frozen=True)
class DedupJob:
    """One dedup step over one generation of shards: where its files go and what it needs."""

    step: str  # registry name: exact_dedup | minhash | subdoc_dedup
    label: str
    params: Any
    work: Path  # this step's folder in the stage's work folder
    n_shards: int

    @property
    def n_buckets(self) -> int:
        """Buckets per key space: as many as shards (so a bucket holds about one shard's records); MinHash
        has one key space per band, so ``ceil(shards / bands)`` per band (about ``bands`` shards' worth)."""
        if self.step == "minhash":
            return max(1, -(-self.n_shards // self.params.buckets))
        return max(1, self.n_shards)

    @property
    def n_tasks(self) -> int:
        return self.n_buckets * (self.params.buckets if self.step == "minhash" else 1)

    def records(self, shard: int) -> Path:
        return self.work / f"rec-{shard:05d}.npy"

    def ids(self, shard: int) -> Path:
        return self.work / f"ids-{shard:05d}.pkl"

    def sig(self, shard: int) -> Path:
        return self.work / f"sig-{shard:05d}.npy"

    def bucket_out(self, bucket: int) -> Path:
        return self.work / f"out-{bucket:05d}.npy"


def _key128(digest: bytes) -> tuple[int, int]:
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")


def _unit_key(unit: str) -> bytes:
    return hashlib.blake2b(unit.strip().encode(), digest_size=16).digest()


def _units(text: str, unit: str) -> list[str]:
    from kiln.corpus.steps.subdoc import _PARA

    return text.split("\n") if unit == "line" else _PARA.split(text)


# ----------------------------------------------------------------------------- phase 1: records


def records_task(arg: tuple[DedupJob, int, Path]) -> int:
    """Write shard ``shard``'s records (by bucket) and ids; returns its number of documents."""
    job, shard, path = arg
    docs = spill.load_docs(path)
    spill.save_obj(job.ids(shard), [str(d["id"]) for d in docs])
    if job.step == "minhash":
        _minhash_records(job, shard, docs)
        return len(docs)
    rows: list[tuple[int, int, int]] = []
    for i, doc in enumerate(docs):
        p = spill.pos(shard, i)
        if job.step == "exact_dedup":
            rows.append((*_key128(hashlib.sha256(doc["text"].encode("utf-8")).digest()), p))
            continue
        keys = {_unit_key(u) for u in _units(doc["text"], job.params.unit) if len(u.strip()) >= job.params.min_chars}
        rows.extend((*_key128(k), p) for k in sorted(keys))
    rec = np.array(rows, dtype=KEY) if rows else np.empty(0, dtype=KEY)
    spill.write_parts(job.records(shard), rec, (rec["k1"] % np.uint64(job.n_buckets)).astype(np.int64),
                      job.n_buckets)
    return len(docs)


def _band_words(sig: np.ndarray, band: int, r: int) -> np.ndarray:
    """The exact values of one band (each < 2^31) packed two per uint64: shape ``(n, ceil(r / 2))``."""
    vals = sig[:, band * r:(band + 1) * r].astype(np.uint64)
    if r % 2:
        vals = np.concatenate([vals, np.zeros((len(vals), 1), dtype=np.uint64)], axis=1)
    return (vals[:, 0::2] << np.uint64(31)) | vals[:, 1::2]


def _band_dtype(r: int) -> np.dtype:
    return np.dtype([("w", "<u8", ((r + 1) // 2,)), ("pos", "<i8")])


def _minhash_records(job: DedupJob, shard: int, docs: list[Doc]) -> None:
    from kiln.corpus.steps.minhash import signatures

    prm = job.params
    r, n = prm.hashes_per_bucket, len(docs)
    sig = signatures(docs, prm) if n else np.empty((0, prm.buckets * r), dtype=np.uint64)
    if prm.verify_threshold is not None:
        np.save(job.sig(shard), sig.astype(np.uint32))
    dtype = _band_dtype(r)
    rec = np.empty(n * prm.buckets, dtype=dtype)
    part = np.empty(n * prm.buckets, dtype=np.int64)
    positions = spill.pos(shard, np.arange(n, dtype=np.int64))
    for b in range(prm.buckets):
        words = _band_words(sig, b, r)
        rec["w"][b * n:(b + 1) * n] = words.reshape(n, (r + 1) // 2)
        rec["pos"][b * n:(b + 1) * n] = positions
        mix = (words[:, 0] * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33) if n else np.empty(0, np.uint64)
        part[b * n:(b + 1) * n] = b * job.n_buckets + (mix % np.uint64(job.n_buckets)).astype(np.int64)
    spill.write_parts(job.records(shard), rec, part, prm.buckets * job.n_buckets)


# ----------------------------------------------------------------------------- phase 2: buckets


def bucket_task(arg: tuple[DedupJob, int]) -> int:
    """Bucket ``bucket`` across all shards -> this bucket's removals (or MinHash pairs); returns their number."""
    job, bucket = arg
    paths = [job.records(s) for s in range(job.n_shards)]
    if job.step == "minhash":
        return _minhash_pairs(job, bucket, paths)
    rec = spill.read_part(paths, bucket, KEY)
    later, first = spill.first_occurrences([rec["k1"], rec["k2"]], rec["pos"])
    out = np.empty(len(later), dtype=REM)
    out["pos"], out["kept"] = rec["pos"][later], first
    out["k1"], out["k2"] = rec["k1"][later], rec["k2"][later]
    spill.write_parts(job.bucket_out(bucket), out, spill.shard_of(out["pos"]), job.n_shards)
    return len(out)


def _minhash_pairs(job: DedupJob, bucket: int, paths: list[Path]) -> int:
    prm = job.params
    rec = spill.read_part(paths, bucket, _band_dtype(prm.hashes_per_bucket))
    words = rec["w"].reshape(len(rec), (prm.hashes_per_bucket + 1) // 2)
    order = np.lexsort((rec["pos"], *[words[:, j] for j in reversed(range(words.shape[1]))]))
    sw = words[order]
    same = np.flatnonzero(np.all(sw[1:] == sw[:-1], axis=1)) if len(order) > 1 else np.empty(0, dtype=np.int64)
    pairs = np.empty(len(same), dtype=PAIR)
    pairs["u"], pairs["v"] = rec["pos"][order[same]], rec["pos"][order[same + 1]]
    if prm.verify_threshold is not None and len(pairs):
        pairs = pairs[[_agreement(job, int(u), int(v)) >= prm.verify_threshold for u, v in pairs]]
    np.save(job.bucket_out(bucket), pairs)
    return len(pairs)


def _agreement(job: DedupJob, u: int, v: int) -> float:
    a = np.load(job.sig(spill.shard_of(u)), mmap_mode="r")[spill.index_of(u)]
    b = np.load(job.sig(spill.shard_of(v)), mmap_mode="r")[spill.index_of(v)]
    return float(np.mean(a == b))


def minhash_clusters(job: DedupJob) -> int:
    """Union-find over every bucket's pairs (parent process); writes each removed document with its
    cluster's earliest member to ``out-clusters.npy`` by shard. Returns the number removed."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for b in range(job.n_tasks):
        for u, v in np.load(job.bucket_out(b)).tolist():
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    gone = sorted((x, find(x)) for x in parent if find(x) != x)
    out = np.zeros(len(gone), dtype=REM)
    if gone:
        out["pos"], out["kept"] = np.array(gone, dtype=np.int64).T
    spill.write_parts(job.work / "out-clusters.npy", out, spill.shard_of(out["pos"]), job.n_shards)
    return len(out)


def removal_files(job: DedupJob) -> list[Path]:
    if job.step == "minhash":
        return [job.work / "out-clusters.npy"]
    return [job.bucket_out(b) for b in range(job.n_buckets)]


# ----------------------------------------------------------------------------- phase 3: apply


@dataclass
class ApplyResult:
    report: StepReport
    removed: list[Removal]


def apply_task(arg: tuple[DedupJob, int, Path, Path]) -> ApplyResult:
    """Shard ``shard`` after the step: written to ``out``; its funnel part and removal rows returned."""
    job, shard, src, out = arg
    docs = spill.load_docs(src)
    rem = spill.read_part(removal_files(job), shard, REM)
    ctx = StepContext(step=job.label)
    rep = StepReport(job.label, docs_in=len(docs))
    if job.step == "subdoc_dedup":
        kept = _apply_subdoc(job, docs, rem, ctx, rep)
    else:
        kept = _apply_removals(job, docs, rem, ctx, rep)
    rep.docs_out = len(kept)
    spill.save_docs(out, kept)
    return ApplyResult(rep, ctx.removed)


def _apply_removals(job: DedupJob, docs: list[Doc], rem: np.ndarray, ctx: StepContext,
                    rep: StepReport) -> list[Doc]:
    kept_pos = dict(zip(spill.index_of(rem["pos"]).tolist(), rem["kept"].tolist(), strict=True))
    ids: dict[int, list[str]] = {}
    what = "exact duplicate" if job.step == "exact_dedup" else "near duplicate"
    out = []
    for i, doc in enumerate(docs):
        if i not in kept_pos:
            out.append(doc)
            continue
        k = kept_pos[i]
        s = spill.shard_of(k)
        if s not in ids:
            ids[s] = spill.load_obj(job.ids(s))  # type: ignore[assignment]
        kept = ids[s][spill.index_of(k)]
        ctx.remove(rep, doc, f"{what} of {kept}", duplicate_of=kept)
    return out


def _apply_subdoc(job: DedupJob, docs: list[Doc], rem: np.ndarray, ctx: StepContext,
                  rep: StepReport) -> list[Doc]:
    prm = job.params
    drop: dict[int, set[tuple[int, int]]] = {}
    for p, k1, k2 in zip(spill.index_of(rem["pos"]).tolist(), rem["k1"].tolist(), rem["k2"].tolist(), strict=True):
        drop.setdefault(p, set()).add((k1, k2))
    sep = "\n" if prm.unit == "line" else "\n\n"
    out = []
    for i, doc in enumerate(docs):
        mine = drop.get(i, set())
        keep = [u for u in _units(doc["text"], prm.unit)
                if not (mine and len(u.strip()) >= prm.min_chars and _key128(_unit_key(u)) in mine)]
        text = sep.join(keep).strip("\n")
        if len(text) < prm.min_doc_chars:
            ctx.remove(rep, doc, f"nothing left after removing repeated {prm.unit}s")
            continue
        out.append(ctx.change(rep, doc, text, f"repeated {prm.unit}s removed"))
    return out
