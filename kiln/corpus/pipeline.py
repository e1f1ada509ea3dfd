"""Run ``corpus.steps`` in order: each step's funnel row, per-document removal records, ``on_error``.

With ``corpus.steps`` unset the pipeline is the foundation's: ``normalize`` (``corpus.normalize``),
``empty``, ``length`` (``corpus.min_chars``/``max_chars``), exact dedup labelled ``dedup`` (if
``corpus.dedup``). ``corpus.select`` always runs first when set.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kiln.atomic import staged_path
from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import Removal, StepContext, StepParams
from kiln.corpus.steps.basic import EmptyParams, ExactDedupParams, LengthParams, NormalizeParams
from kiln.corpus.steps.registry import step_fn
from kiln.progress import log
from kiln.recipe import CorpusConfig


def default_steps(cfg: CorpusConfig) -> list[StepParams]:
    """The foundation pipeline from the legacy ``corpus`` fields."""
    steps: list[StepParams] = [NormalizeParams(form=cfg.normalize), EmptyParams(),
                               LengthParams(min_chars=cfg.min_chars, max_chars=cfg.max_chars)]
    if cfg.dedup:
        steps.append(ExactDedupParams(name="dedup"))
    return steps


def run_steps(docs: list[Doc], steps: list[StepParams], ctx: StepContext) -> tuple[list[Doc], list[StepReport]]:
    """Apply ``steps`` in order; the report rows carry each step's label and ``seconds``."""
    reports = []
    for i, params in enumerate(steps):
        sctx = ctx.for_step(params.label, i)
        first = len(ctx.removed)
        start = time.perf_counter()
        docs, rep = step_fn(params.step)(docs, params, sctx)
        if rep.step != params.label:
            rep.step = params.label
            ctx.removed[first:] = [Removal(r.id, params.label, r.reason) for r in ctx.removed[first:]]
        rep.seconds = round(time.perf_counter() - start, 3)  # type: ignore[attr-defined]
        if ctx.errors.get(params.label):
            rep.errors = ctx.errors[params.label]  # type: ignore[attr-defined]
        log(f"corpus: {params.label}: {rep.docs_in} -> {rep.docs_out} docs ({rep.docs_removed} removed, "
            f"{rep.docs_changed} changed)")
        reports.append(rep)
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
    kept_docs, more = run_steps(docs, list(cfg.steps) if cfg.steps is not None else default_steps(cfg), ctx)
    return kept_docs, reports + more


def write_removed(path: Path, removed: list[Removal]) -> None:
    """``removed.parquet``: one row per removed document (``id``, ``step``, ``reason``), in removal order."""
    table = pa.table({"id": pa.array([r.id for r in removed], pa.string()),
                      "step": pa.array([r.step for r in removed], pa.string()),
                      "reason": pa.array([r.reason for r in removed], pa.string())})
    with staged_path(path) as tmp:
        pq.write_table(table, tmp)
