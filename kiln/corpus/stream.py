"""The streaming corpus stage: sources -> document shards on disk -> steps shard by shard -> Parquet parts.

1. *Read* (parent): every source as a stream, in recipe order, cut into shards of at most
   ``corpus.shard_docs`` documents / ``corpus.shard_bytes`` bytes of text, pickled to the work folder.
   While reading, the parent keeps per-source counts and the kinds of each metadata key's values (the
   Parquet schema, :mod:`kiln.corpus.schema`), and applies ``corpus.select`` to each shard. Document ids
   are checked unique across the corpus by hashed buckets on disk (as exact dedup below).
2. *Steps*, in order, each over all shards before the next: a run of per-document steps is one task per
   shard; ``exact_dedup``, ``minhash`` and ``subdoc_dedup`` run as records -> buckets -> apply
   (:mod:`kiln.corpus.stream_dedup`); any other whole-corpus step (learned filters, ProX, mixing) loads
   the documents still in the pipeline into memory, runs as in the in-memory path, and is re-sharded:
   those steps are not bounded in memory.
   With the local executor and several workers, the leading per-document block runs on each shard as
   soon as it is read (:class:`EarlyBlock`), overlapping the sequential read.
3. *Split* and write ``{split}-NNNNN.parquet`` parts (:mod:`kiln.corpus.stream_split`), then
   ``removed.parquet`` (streamed from per-shard files, in the in-memory order: by step, then corpus
   order) and ``funnel.json``; these outputs are in :mod:`kiln.corpus.stream_outputs`.

Tasks run through :func:`kiln.corpus.executor.run_tasks` (``corpus.executor``, ``corpus.workers``).
Results equal the in-memory path (:func:`kiln.corpus.pipeline.curate` + :mod:`kiln.corpus.clean`):
kept documents and their order, funnel rows (``seconds`` aside), ``removed.parquet`` and the split.
In memory at once: one shard per worker (or one bucket of records), plus a few numbers per shard.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.corpus import spill
from kiln.corpus import stream_dedup as dd
from kiln.corpus import stream_split as ss
from kiln.corpus.executor import run_tasks
from kiln.corpus.report import Doc, StepReport, merge_rows, nbytes
from kiln.corpus.schema import SchemaSummary
from kiln.corpus.sources import (
    SourceError,
    cache_dir_for,
    read_source,
    record_source,
    skip_list,
    source_entry,
    source_label,
)
from kiln.corpus.steps.base import Removal, StepContext, StepParams
from kiln.corpus.stream_outputs import split_streaming, summary_task, write_removed_stream
from kiln.progress import enabled, log, track
from kiln.recipe import CorpusConfig

STREAMED_DEDUP = ("exact_dedup", "minhash", "subdoc_dedup")


@dataclass
class Plan:
    """The stage's fixed inputs: recipe, folders, and the context fields every step task needs."""

    cfg: CorpusConfig
    out_dir: Path
    work: Path
    cache_dir: Path

    def ctx(self) -> StepContext:
        return StepContext(cache_dir=self.cache_dir, run_dir=self.out_dir.parent, out_dir=self.out_dir,
                           seed=self.cfg.split_seed, on_error=self.cfg.on_error)

    def tasks(self, fn: Any, args: list[Any]) -> list[Any]:
        return run_tasks(fn, args, self.cfg.executor, self.cfg.workers, self.cfg.executor_args, self.work)

    def gen(self, k: int) -> Path:
        path = self.work / f"g{k:03d}"
        path.mkdir(exist_ok=True)
        return path

    def removed_file(self, k: int, shard: int) -> Path:
        return self.work / "removed" / f"{k:03d}-{shard:05d}.pkl"


@dataclass
class ReadResult:
    shards: list[Path]
    stats: dict[str, dict[str, Any]]
    summary: SchemaSummary
    docs_read: int
    select: StepReport | None = None


def cut_shards(docs: Any, shard_docs: int | None, shard_bytes: int | None) -> Any:
    """Group a document stream into lists of at most ``shard_docs`` documents / ``shard_bytes`` bytes."""
    buf: list[Doc] = []
    size = 0
    for doc in docs:
        buf.append(doc)
        size += nbytes(doc["text"])
        if (shard_docs and len(buf) >= shard_docs) or (shard_bytes and size >= shard_bytes):
            yield spill.watch(buf)
            buf, size = [], 0
    if buf:
        yield spill.watch(buf)


# ----------------------------------------------------------------------------- read


def _sourced(plan: Plan, stats: dict[str, dict[str, Any]]) -> Any:
    for src in plan.cfg.sources:
        label = source_label(src)
        start = time.perf_counter()
        n = size = 0
        skipped = skip_list(plan.cfg)
        docs = read_source(src, plan.cache_dir, skipped)
        for doc in track(docs, f"corpus: read {label}", total=src.max_docs) if enabled() else docs:
            n += 1
            size += nbytes(doc["text"])
            yield doc
        secs = time.perf_counter() - start
        record_source(stats, src, n, size, secs, skipped)
        log(f"corpus: {label} ({src.kind}): {n} docs, {size / 1e6:.2f} MB in {secs:.1f} s")


def read_shards(plan: Plan, on_shard: Any = None) -> ReadResult:
    """Stage 1: read every source into shards (``select`` applied); ids checked unique. ``on_shard(path)``
    (if given) is called with each shard file as soon as it is written."""
    from kiln.corpus.clean import step_select

    cfg = plan.cfg
    stats: dict[str, dict[str, Any]] = {}
    summary = SchemaSummary()
    gen, ids_dir = plan.gen(0), plan.work / "ids"
    ids_dir.mkdir()
    shards: list[Path] = []
    selects: list[StepReport] = []
    n = 0
    for k, docs in enumerate(cut_shards(_sourced(plan, stats), cfg.shard_docs, cfg.shard_bytes)):
        n += len(docs)
        for d in docs:
            summary.add(d)
        ids = [(str(d["id"]), str(d["source"])) for d in docs]
        spill.save_obj(ids_dir / f"{k:05d}.pkl", ids)
        keys = np.array([(*dd._key128(_id_digest(i)), spill.pos(k, j)) for j, (i, _) in enumerate(ids)], dtype=dd.KEY)
        np.save(ids_dir / f"{k:05d}.raw.npy", keys)
        if cfg.select:
            kept, rep = step_select(docs, cfg)
            selects.append(rep)
            names = {d["id"] for d in kept}
            spill.save_obj(plan.removed_file(0, k), [Removal(str(d["id"]), "select", "not selected")
                                                     for d in docs if d["id"] not in names])
            docs = kept
        path = gen / f"{k:05d}.pkl"
        spill.save_docs(path, docs)
        shards.append(path)
        if on_shard is not None:
            on_shard(path)
    _check_ids(ids_dir, len(shards))
    select = merge_rows("select", selects) if cfg.select else None
    return ReadResult(shards, stats, summary, n, select)


def _id_digest(doc_id: str) -> bytes:
    import hashlib

    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=16).digest()


def _check_ids(ids_dir: Path, n_shards: int) -> None:
    """Duplicate ids across the whole corpus, bucket by bucket (buckets = shards); the error names the
    first repeated id in corpus order and both sources."""
    buckets = max(1, n_shards)
    files = [ids_dir / f"{k:05d}.npy" for k in range(n_shards)]
    for path in files:  # bucket each shard's id keys, now that the number of buckets is known
        rec = np.load(path.with_name(path.name.replace(".npy", ".raw.npy")))
        spill.write_parts(path, rec, (rec["k1"] % np.uint64(buckets)).astype(np.int64), buckets)
    worst: tuple[int, int] | None = None
    for b in range(buckets):
        rec = spill.read_part(files, b, dd.KEY)
        later, first = spill.first_occurrences([rec["k1"], rec["k2"]], rec["pos"])
        for i, f in zip(rec["pos"][later].tolist(), first.tolist(), strict=True):
            if worst is None or i < worst[0]:
                worst = (i, f)
    if worst is not None:
        (doc_id, src), (_, first_src) = (spill.load_obj(ids_dir / f"{spill.shard_of(p):05d}.pkl")[spill.index_of(p)]
                                         for p in worst)  # type: ignore[index]
        raise SourceError(f"duplicate document id '{doc_id}' (sources '{first_src}' and '{src}'); "
                          "give sources distinct `name`s or fix `id_field`")


# ----------------------------------------------------------------------------- steps


@dataclass
class BlockResult:
    reports: list[StepReport]
    errors: dict[str, int] = field(default_factory=dict)
    n_out: int = 0


def block_task(arg: tuple[Plan, list[StepParams], int, Path, Path]) -> BlockResult:
    """A run of per-document steps over one shard (steps ``first``, ``first + 1``, ... of the pipeline)."""
    from kiln.corpus.steps.registry import step_fn

    plan, steps, first, src, out = arg
    docs = spill.load_docs(src)
    base = plan.ctx()
    reports = []
    shard = int(src.stem)
    for k, params in enumerate(steps):
        sctx = base.for_step(params.label, first + k)
        start = len(base.removed)
        docs, rep = step_fn(params.step)(docs, params, sctx)
        spill.watch(docs)
        removed = [Removal(r.id, params.label, r.reason) for r in base.removed[start:]]
        spill.save_obj(plan.removed_file(first + k + 1, shard), removed)
        rep.step = params.label
        reports.append(rep)
    spill.save_docs(out, docs)
    return BlockResult(reports, dict(base.errors), len(docs))


def _run_block(plan: Plan, steps: list[StepParams], first: int, shards: list[Path]) -> tuple[list[Path],
                                                                                             list[StepReport]]:
    gen = plan.gen(first + len(steps))
    outs = [gen / p.name for p in shards]
    results = plan.tasks(block_task, [(plan, steps, first, src, out) for src, out in zip(shards, outs, strict=True)])
    return outs, _merge_block(steps, results)


def _merge_block(steps: list[StepParams], results: list[BlockResult]) -> list[StepReport]:
    reps = []
    for k, params in enumerate(steps):
        rep = merge_rows(params.label, [r.reports[k] for r in results])
        errors = sum(r.errors.get(params.label, 0) for r in results)
        if errors:
            rep.errors = errors  # type: ignore[attr-defined]
        reps.append(rep)
    return reps


class EarlyBlock:
    """The pipeline's leading per-document steps, run on each shard as soon as the parent has read it
    (local pool of ``corpus.workers``): the sequential read overlaps the block instead of preceding it.
    The workers are forked before reading starts, so they do not inherit a read buffer."""

    def __init__(self, plan: Plan, steps: list[StepParams]) -> None:
        self.plan, self.steps, self.gen = plan, steps, plan.gen(len(steps))
        self.pool = ProcessPoolExecutor(plan.cfg.workers, mp_context=mp.get_context("fork"))
        self.pool.submit(int).result()  # fork context: every worker starts now
        self.futures: list[Any] = []
        self.outs: list[Path] = []

    def __call__(self, path: Path) -> None:
        self.outs.append(self.gen / path.name)
        self.futures.append(self.pool.submit(block_task, (self.plan, self.steps, 0, path, self.outs[-1])))

    def finish(self) -> tuple[list[Path], list[StepReport]]:
        try:
            return self.outs, _merge_block(self.steps, [f.result() for f in self.futures])
        finally:
            self.close()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _run_dedup(plan: Plan, params: StepParams, index: int, shards: list[Path]) -> tuple[list[Path], StepReport]:
    job = dd.DedupJob(params.step, params.label, params, plan.work / f"dedup-{index:03d}", len(shards))
    job.work.mkdir()
    plan.tasks(dd.records_task, [(job, s, p) for s, p in enumerate(shards)])
    plan.tasks(dd.bucket_task, [(job, b) for b in range(job.n_tasks)])
    if params.step == "minhash":
        dd.minhash_clusters(job)
    gen = plan.gen(index + 1)
    outs = [gen / p.name for p in shards]
    results = plan.tasks(dd.apply_task, [(job, s, src, out) for s, (src, out) in enumerate(zip(shards, outs,
                                                                                              strict=True))])
    for s, r in enumerate(results):
        spill.save_obj(plan.removed_file(index + 1, s), r.removed)
    shutil.rmtree(job.work)
    return outs, merge_rows(params.label, [r.report for r in results])


def _run_whole(plan: Plan, params: StepParams, index: int, shards: list[Path]) -> tuple[list[Path], StepReport]:
    """A whole-corpus step without a streaming form: all remaining documents in memory, as in-memory."""
    from kiln.corpus.steps.registry import step_fn

    docs = [d for p in shards for d in spill.load_docs(p)]
    ctx = plan.ctx()
    sctx = ctx.for_step(params.label, index)
    docs, rep = step_fn(params.step)(docs, params, sctx)
    spill.save_obj(plan.removed_file(index + 1, 0), [Removal(r.id, params.label, r.reason) for r in ctx.removed])
    if ctx.errors.get(params.label):
        rep.errors = ctx.errors[params.label]  # type: ignore[attr-defined]
    rep.step = params.label
    gen = plan.gen(index + 1)
    outs = []
    for s, part in enumerate(cut_shards(docs, plan.cfg.shard_docs, plan.cfg.shard_bytes)):
        outs.append(gen / f"{s:05d}.pkl")
        spill.save_docs(outs[-1], part)
    return outs, rep


def gather_task(arg: tuple[StepParams, Path]) -> Any:
    from kiln.corpus.steps.registry import REGISTRY

    params, src = arg
    docs = spill.load_docs(src)
    return len(docs), REGISTRY[params.step].two_pass.gather(docs, params)  # type: ignore[union-attr]


def apply_task(arg: tuple[Plan, StepParams, int, Any, Path, Path, int]) -> BlockResult:
    from kiln.corpus.steps.registry import REGISTRY

    plan, params, index, decision, src, out, offset = arg
    ctx = plan.ctx()
    docs, rep = REGISTRY[params.step].two_pass.apply(spill.load_docs(src), params, decision,  # type: ignore[union-attr]
                                                     ctx.for_step(params.label, index), offset)
    spill.save_obj(plan.removed_file(index + 1, int(src.stem)), [Removal(r.id, params.label, r.reason)
                                                                 for r in ctx.removed])
    spill.save_docs(out, docs)
    rep.step = params.label
    return BlockResult([rep], dict(ctx.errors), len(docs))


def _run_two_pass(plan: Plan, params: StepParams, index: int, shards: list[Path]) -> tuple[list[Path], StepReport]:
    """A :class:`~kiln.corpus.steps.base.TwoPass` step: gather per shard, decide once, apply per shard."""
    from kiln.corpus.steps.registry import REGISTRY

    two = REGISTRY[params.step].two_pass
    gathered = plan.tasks(gather_task, [(params, p) for p in shards])
    decision = two.decide([records for _, records in gathered], params)  # type: ignore[union-attr]
    sizes = [n for n, _ in gathered]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])[:-1].tolist() if sizes else []
    gen = plan.gen(index + 1)
    outs = [gen / p.name for p in shards]
    results = plan.tasks(apply_task, [(plan, params, index, decision, src, out, off)
                                      for src, out, off in zip(shards, outs, offsets, strict=True)])
    return outs, _merge_block([params], results)[0]


def leading_per_doc(steps: list[StepParams]) -> int:
    """How many steps at the start of ``steps`` are per-document (one block)."""
    from kiln.corpus.steps.registry import REGISTRY

    j = 0
    while j < len(steps) and REGISTRY[steps[j].step].per_doc:
        j += 1
    return j


def _finish_reports(reps: list[StepReport], seconds: float) -> None:
    for rep in reps:
        rep.seconds = round(seconds / len(reps), 3)  # type: ignore[attr-defined]
        log(f"corpus: {rep.step}: {rep.docs_in} -> {rep.docs_out} docs ({rep.docs_removed} removed, "
            f"{rep.docs_changed} changed)")


def run_steps_streaming(plan: Plan, steps: list[StepParams], shards: list[Path], start_at: int = 0,
                        reports: list[StepReport] | None = None) -> tuple[list[Path], list[StepReport]]:
    """Every step from ``start_at`` over every shard, in order; per-document runs as one block."""
    from kiln.corpus.steps.registry import REGISTRY

    reports = list(reports or [])
    i = start_at
    while i < len(steps):
        start = time.perf_counter()
        j = i
        while j < len(steps) and REGISTRY[steps[j].step].per_doc:
            j += 1
        old = shards[0].parent if shards else None
        if j > i:
            shards, reps = _run_block(plan, steps[i:j], i, shards)
        else:
            params = steps[i]
            streamed = params.step in STREAMED_DEDUP and getattr(params, "backend", "numpy") == "numpy"
            runner = _run_two_pass if REGISTRY[params.step].two_pass else _run_dedup if streamed else _run_whole
            shards, rep = runner(plan, params, i, shards)
            reps, j = [rep], i + 1
        _finish_reports(reps, time.perf_counter() - start)
        reports += reps
        if old is not None and old != (shards[0].parent if shards else None):
            shutil.rmtree(old, ignore_errors=True)
        i = j
    return shards, reports


def build_streaming(cfg: CorpusConfig, out_dir: Path) -> tuple[dict[str, Any], ReadResult, int]:
    """Run the whole stage into ``out_dir`` (parts, removed.parquet); returns (funnel, read result, kept)."""
    from kiln.corpus.pipeline import default_steps

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".corpus-work-", suffix=".tmp", dir=out_dir.parent))
    try:
        plan = Plan(cfg, out_dir, work, cache_dir_for(cfg))
        (work / "removed").mkdir()
        steps = list(cfg.steps) if cfg.steps is not None else default_steps(cfg)
        t0 = time.perf_counter()
        first = leading_per_doc(steps)
        early = EarlyBlock(plan, steps[:first]) if first and cfg.executor == "local" and cfg.workers > 1 else None
        try:
            read = read_shards(plan, early)
        except BaseException:
            if early is not None:
                early.close()
            raise
        t1 = time.perf_counter()
        log(f"corpus: read {read.docs_read} docs into {len(read.shards)} shards in {t1 - t0:.1f} s")
        if early is not None:  # the leading per-document block ran while reading
            shards, reports = early.finish()
            _finish_reports(reports, time.perf_counter() - t0)
            shutil.rmtree(plan.work / "g000", ignore_errors=True)
            shards, reports = run_steps_streaming(plan, steps, shards, first, reports)
        else:
            shards, reports = run_steps_streaming(plan, steps, read.shards)
        write_removed_stream(plan, out_dir / "removed.parquet", len(steps))
        for part in plan.tasks(summary_task, shards) if steps else []:  # fields the steps added (scores)
            read.summary.update(part)
        schema = read.summary.schema()
        t2 = time.perf_counter()
        written, split = split_streaming(plan, shards, schema)
        n_parts = ss.place_parts(written, out_dir, schema)
        log(f"corpus: steps {t2 - t1:.1f} s after reading, split and {n_parts['train']} + {n_parts['val']} parts "
            f"{time.perf_counter() - t2:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats = read.stats
    for src, counts in written.by_source.items():
        source_entry(stats, src).update(counts)
    for entry in stats.values():
        entry.setdefault("train_docs", 0)
        entry.setdefault("val_docs", 0)
    rows = ([read.select] if read.select is not None else []) + reports
    funnel = {"steps": [s.to_json() for s in rows], "sources": stats, "split": split,
              "schema": [f"{f.name}: {f.type}" for f in schema]}
    kept = reports[-1].docs_out if reports else (read.select.docs_out if read.select else read.docs_read)
    return funnel, read, kept
