"""Run ``corpus.steps`` in order: each step's funnel row, per-document removal records, ``on_error``.

With ``corpus.steps`` unset the pipeline is the foundation's: ``normalize`` (``corpus.normalize``),
``empty``, ``length`` (``corpus.min_chars``/``max_chars``), exact dedup labelled ``dedup`` (if
``corpus.dedup``). ``corpus.select`` always runs first when set.

These functions hold every document in one list: the in-memory reference path. The corpus stage itself
streams shard by shard (:mod:`kiln.corpus.stream`) with results equal to :func:`curate`'s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kiln.atomic import staged_path
from kiln.corpus.executor import Executor, run_block
from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import Removal, StepContext, StepParams
from kiln.corpus.steps.basic import EmptyParams, ExactDedupParams, LengthParams, NormalizeParams
from kiln.corpus.steps.registry import REGISTRY, step_fn
from kiln.progress import log
from kiln.recipe import CorpusConfig


def default_steps(cfg: CorpusConfig) -> list[StepParams]:
    """The foundation pipeline from the legacy ``corpus`` fields."""
    steps: list[StepParams] = [NormalizeParams(form=cfg.normalize), EmptyParams(),
                               LengthParams(min_chars=cfg.min_chars, max_chars=cfg.max_chars)]
    if cfg.dedup:
        steps.append(ExactDedupParams(name="dedup"))
    return steps


def _finish(rep: StepReport, params: StepParams, ctx: StepContext, seconds: float) -> StepReport:
    rep.step = params.label
    rep.seconds = round(seconds, 3)  # type: ignore[attr-defined]
    if ctx.errors.get(params.label):
        rep.errors = ctx.errors[params.label]  # type: ignore[attr-defined]
    log(f"corpus: {params.label}: {rep.docs_in} -> {rep.docs_out} docs ({rep.docs_removed} removed, "
        f"{rep.docs_changed} changed)")
    return rep


def run_steps(docs: list[Doc], steps: list[StepParams], ctx: StepContext, executor: Executor = "local",
              workers: int = 1, executor_args: dict[str, Any] | None = None) -> tuple[list[Doc], list[StepReport]]:
    """Apply ``steps`` in order; the report rows carry each step's label and ``seconds``.

    With ``workers > 1`` or a ray/slurm ``executor``, each run of consecutive per-document steps is one
    sharded block (:mod:`kiln.corpus.executor`); results are identical to the one-process run.
    """
    reports: list[StepReport] = []
    i = 0
    while i < len(steps):
        j = i
        while j < len(steps) and REGISTRY[steps[j].step].per_doc:
            j += 1
        if j > i and (workers > 1 or executor != "local"):
            start = time.perf_counter()
            docs, reps = run_block(docs, steps[i:j], ctx, i, executor, workers, executor_args, ctx.out_dir)
            share = (time.perf_counter() - start) / (j - i)  # wall time of the block, split evenly
            reports += [_finish(rep, p, ctx, share) for rep, p in zip(reps, steps[i:j], strict=True)]
            i = j
            continue
        params = steps[i]
        sctx = ctx.for_step(params.label, i)
        first = len(ctx.removed)
        start = time.perf_counter()
        docs, rep = step_fn(params.step)(docs, params, sctx)
        if rep.step != params.label:
            ctx.removed[first:] = [Removal(r.id, params.label, r.reason) for r in ctx.removed[first:]]
        reports.append(_finish(rep, params, ctx, time.perf_counter() - start))
        i += 1
    return docs, reports


def curate(docs: list[Doc], cfg: CorpusConfig, ctx: StepContext) -> tuple[list[Doc], list[StepReport]]:
    """``corpus.select`` (if set), then ``corpus.steps`` (or the default pipeline)."""
    reports = []
    if cfg.select:
        from kiln.corpus.clean import step_select

        before = docs
        docs, rep = step_select(docs, cfg)
        reports.append(rep)
        kept = {d["id"] for d in docs}
        ctx.removed.extend(Removal(str(d["id"]), "select", "not selected") for d in before if d["id"] not in kept)
    steps = list(cfg.steps) if cfg.steps is not None else default_steps(cfg)
    kept_docs, more = run_steps(docs, steps, ctx, cfg.executor, cfg.workers, cfg.executor_args)
    return kept_docs, reports + more


def write_removed(path: Path, removed: list[Removal]) -> None:
    """``removed.parquet``: one row per removed document (``id``, ``step``, ``reason``), in removal order."""
    table = pa.table({"id": pa.array([r.id for r in removed], pa.string()),
                      "step": pa.array([r.step for r in removed], pa.string()),
                      "reason": pa.array([r.reason for r in removed], pa.string())})
    with staged_path(path) as tmp:
        pq.write_table(table, tmp)
