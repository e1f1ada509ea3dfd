"""The scorer interface: a corpus step that writes one score per document into a metadata column.

A scorer never removes a document by itself; ``select`` (:mod:`kiln.corpus.scoring.select`) keeps documents
by the column afterwards, so scores and selection rules combine freely and every score lands in the corpus
Parquet (a float64 column named ``field``, default: the step's label) and, as a histogram, in the report.

Write a scorer as two functions and a params model, registered with :func:`scorer_step`:

.. code-block:: python

    class MyScoreParams(ScorerParams):
        step: Literal["my_score"] = "my_score"
        checkpoint: str

    def setup(params, ctx, docs) -> State: ...      # load models / fit once per task; errors always raise
    def score(state, docs, params, ctx) -> ndarray:  # one float per document (NaN = no score)

    STEPS = [scorer_step(MyScoreParams, setup, score, per_doc=True)]

- ``per_doc=True``: a document's score depends on that document alone (the model is fixed), so the step runs
  shard by shard through ``corpus.executor`` (local processes, Ray, Slurm) like any per-document step, each
  task calling ``setup`` once. ``per_doc=False``: the score needs the whole corpus (a classifier trained on
  corpus documents, optimal transport against the pool); ``setup`` sees every remaining document (``docs``,
  including those outside ``apply_to``) and fits what ``score`` then applies batch by batch.
- ``score`` gets documents in batches of ``batch_docs``. If a batch raises, its documents are scored one by
  one under ``corpus.on_error`` (``stop``: a :class:`StepError` naming the document; ``skip``: the failing
  document is removed with the error as its reason), so one bad document never costs the others.
- ``apply_to`` limits scoring to some sources; other documents get no value (null in Parquet).

The funnel row of a scorer carries ``scores``: counts, min, max and a sample of at most
:data:`kiln.corpus.report.SAMPLE` scores (every score when there are fewer), which the report draws as a histogram.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from kiln.corpus.report import score_summary
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport

Setup = Callable[[Any, StepContext, list[Doc]], Any]
Score = Callable[[Any, list[Doc], Any, StepContext], np.ndarray]


class ScorerParams(StepParams):
    """Fields every scorer has."""

    field: str | None = Field(None, description="metadata column the score goes to (default: the step's label)")
    apply_to: list[str] = Field(default_factory=list, description="source labels to score; [] = every document")
    batch_docs: int = Field(256, ge=1, description="documents per call of the scorer (one model batch or more)")

    @property
    def column(self) -> str:
        return self.field or self.label


def _checked(scores: Any, n: int, step: str) -> np.ndarray:
    out = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(out) != n:
        raise ValueError(f"scorer '{step}' returned {len(out)} scores for {n} documents")
    return out


def run_scorer(docs: list[Doc], params: ScorerParams, ctx: StepContext, setup: Setup, score: Score
               ) -> tuple[list[Doc], StepReport]:
    """Score the documents of ``apply_to`` in batches and write ``params.column`` (see the module docstring)."""
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    targets = [i for i, d in enumerate(docs) if not params.apply_to or d.get("source") in params.apply_to]
    values = np.full(len(docs), np.nan)
    failed: set[int] = set()
    state = setup(params, ctx, docs) if targets else None
    for start in range(0, len(targets), params.batch_docs):
        idx = targets[start : start + params.batch_docs]
        try:
            values[idx] = _checked(score(state, [docs[i] for i in idx], params, ctx), len(idx), rep.step)
        except Exception:  # noqa: BLE001 - find the document that fails, under on_error
            for i in idx:
                ok, got = ctx.guard(rep, docs[i], lambda d: _checked(score(state, [d], params, ctx), 1, rep.step))
                if ok:
                    values[i] = got[0]  # type: ignore[index]
                else:
                    failed.add(i)
    column = params.column
    scored = set(targets)
    out = [{**d, column: (None if np.isnan(values[i]) else float(values[i])) if i in scored else d.get(column)}
           for i, d in enumerate(docs) if i not in failed]
    rep.docs_out = len(out)
    rep.scores = score_summary(values[[i for i in targets if i not in failed]], column)  # type: ignore[attr-defined]
    return out, rep


def scorer_step(params: type[ScorerParams], setup: Setup, score: Score, per_doc: bool = True) -> StepDef:
    """The :class:`StepDef` of a scorer (its ``run`` is :func:`run_scorer` over ``setup`` and ``score``)."""

    def run(docs: list[Doc], p: ScorerParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
        return run_scorer(docs, p, ctx, setup, score)

    run.__name__ = f"run_{params.model_fields['step'].default}"
    return StepDef(params, run, per_doc=per_doc)


def no_setup(params: StepParams, ctx: StepContext, docs: list[Doc]) -> None:
    """``setup`` of a scorer that needs nothing loaded."""
    return None
