"""``select``: keep documents by a score column, by character mass, threshold or percentile band.

The one selection step behind every scorer (:mod:`kiln.corpus.scoring.base`). On the documents of
``apply_to`` (all by default), globally or within each source (``per_source``):

- ``keep_fraction: f``: the highest-scoring documents (``keep: low``: the lowest) until they hold a share ``f``
  of the group's characters: the smallest such prefix, so the kept mass is ``f`` of the total to within one
  document. This is PreSelect's threshold finder (``find_threshold.py``: the score at which the top documents
  reach 10% of all characters; Shum et al. 2025, "Predictive Data Selection: The Data That Predicts Is the
  Data That Teaches") and the kept-fraction filters of A Pretrainer's Guide (Longpre et al. 2023);
- ``keep_docs: k``: the ``k`` highest-scoring documents (GOT-D's and ORCA-ICL's top-k);
- ``threshold: t``: keep iff ``score >= t`` (``keep: low``: ``<= t``);
- ``band: [lo, hi]``: keep scores between the ``lo``-th and ``hi``-th percentiles of the group's documents
  (CCNet's perplexity buckets, Wenzek et al. 2020; Marion et al. 2023).

Equal scores are ordered by ``sha256("{seed}:select:{field}:{id}")``, not by position, so no source wins a
tie by its place in the corpus. ``inverse`` keeps exactly the complement of what the rule keeps among the
scored documents. A document of ``apply_to`` without a score (null / NaN) is kept or removed by ``missing``.
The funnel row records the rule and the cut score of each group (``selection``).

The step streams (:class:`kiln.corpus.steps.base.TwoPass`): per shard it gathers (score, characters, source,
tie-break draw) per document, the cut is decided once for the corpus, and each shard is filtered.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport, TwoPass, run_two_pass


class SelectParams(StepParams):
    step: Literal["select"] = "select"
    field: str = Field(description="the score column to select by (a scorer's `field`, or any numeric metadata)")
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0, description="keep this share of characters")
    keep_docs: int | None = Field(None, ge=1, description="keep this many documents (per group)")
    threshold: float | None = Field(None, description="keep iff score >= threshold (keep: low: <=)")
    band: tuple[float, float] | None = Field(None, description="keep the [lo, hi] percentile band of documents")
    keep: Literal["high", "low"] = Field("high", description="which end of the scores keep_fraction/threshold keep")
    per_source: bool = Field(False, description="apply the rule within each source instead of over the corpus")
    apply_to: list[str] = Field(default_factory=list, description="source labels to select; [] = every document")
    missing: Literal["keep", "remove"] = Field("keep", description="a document of apply_to without a score")
    inverse: bool = Field(False, description="keep exactly the complement of what the rule keeps")
    seed: int = Field(0, description="seed of the tie-breaking draw")

    @model_validator(mode="after")
    def _one_rule(self) -> SelectParams:
        if sum(x is not None for x in (self.keep_fraction, self.keep_docs, self.threshold, self.band)) != 1:
            raise ValueError("give exactly one of `keep_fraction`, `keep_docs`, `threshold` or `band`")
        if self.band is not None and not 0.0 <= self.band[0] <= self.band[1] <= 100.0:
            raise ValueError(f"band must be [lo, hi] percentiles with 0 <= lo <= hi <= 100, got {list(self.band)}")
        return self

    def rule(self) -> str:
        end = "highest" if self.keep == "high" else "lowest"
        if self.keep_fraction is not None:
            text = f"the {end} {self.field} holding {self.keep_fraction:.0%} of the characters"
        elif self.keep_docs is not None:
            text = f"the {self.keep_docs} documents of {end} {self.field}"
        elif self.threshold is not None:
            text = f"{self.field} {'>=' if self.keep == 'high' else '<='} {self.threshold:g}"
        else:
            text = f"{self.field} within the p{self.band[0]:g}-p{self.band[1]:g} band"  # type: ignore[index]
        return ("not " if self.inverse else "") + text + (" (per source)" if self.per_source else "")


def _score(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def gather(docs: list[Doc], params: SelectParams) -> dict[str, Any]:
    """Per document of one shard: score (NaN if none), characters, source, tie-break draw, in ``apply_to``."""
    from kiln.corpus.mix import draw

    return {"score": np.array([_score(d.get(params.field)) for d in docs], dtype=np.float64),
            "chars": np.array([len(d["text"]) for d in docs], dtype=np.int64),
            "source": [str(d.get("source")) for d in docs],
            "draw": np.array([draw(f"select:{params.field}:{d['id']}", params.seed) for d in docs]),
            "applies": np.array([not params.apply_to or d.get("source") in params.apply_to for d in docs],
                                dtype=bool)}


def keep_mass(score: np.ndarray, chars: np.ndarray, tie: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Keep the highest scores (ties by ``tie``) until they hold ``fraction`` of ``chars``: (mask, cut score)."""
    order = np.lexsort((tie, -score))
    cum = np.cumsum(chars[order])
    k = min(int(np.searchsorted(cum, fraction * cum[-1] - 1e-9)) + 1, len(order)) if len(order) else 0
    mask = np.zeros(len(score), dtype=bool)
    mask[order[:k]] = True
    return mask, float(score[order[k - 1]]) if k else np.nan


def _group_keep(p: SelectParams, score: np.ndarray, chars: np.ndarray, tie: np.ndarray) -> tuple[np.ndarray, Any]:
    sign = 1.0 if p.keep == "high" else -1.0
    if p.keep_fraction is not None:
        mask, cut = keep_mass(sign * score, chars, tie, p.keep_fraction)
        return mask, sign * cut if np.isfinite(cut) else None
    if p.keep_docs is not None:
        order = np.lexsort((tie, -sign * score))[: p.keep_docs]
        mask = np.zeros(len(score), dtype=bool)
        mask[order] = True
        return mask, float(score[order[-1]]) if len(order) else None
    if p.threshold is not None:
        return sign * score >= sign * p.threshold, p.threshold
    lo, hi = np.percentile(score, list(p.band)) if len(score) else (np.nan, np.nan)  # type: ignore[arg-type]
    return (score >= lo) & (score <= hi), [float(lo), float(hi)]


def decide(records: list[dict[str, Any]], params: SelectParams) -> dict[str, Any]:
    """The keep mask over every document of the corpus (corpus order) and the cut of each group."""
    score = np.concatenate([r["score"] for r in records]) if records else np.zeros(0)
    chars = np.concatenate([r["chars"] for r in records]) if records else np.zeros(0, dtype=np.int64)
    tie = np.concatenate([r["draw"] for r in records]) if records else np.zeros(0)
    applies = np.concatenate([r["applies"] for r in records]) if records else np.zeros(0, dtype=bool)
    source = np.array([s for r in records for s in r["source"]], dtype=object)
    keep = np.ones(len(score), dtype=bool)
    scored = applies & np.isfinite(score)
    keep[applies & ~scored] = params.missing == "keep"
    groups = sorted(set(source[scored])) if params.per_source else ["*"]
    cuts: dict[str, Any] = {}
    for group in groups:
        idx = np.flatnonzero(scored & (source == group)) if params.per_source else np.flatnonzero(scored)
        mask, cuts[group] = _group_keep(params, score[idx], chars[idx], tie[idx])
        keep[idx] = ~mask if params.inverse else mask
    return {"keep": keep, "cuts": cuts}


def _reason(params: SelectParams, score: float, cuts: dict[str, Any], source: str) -> str:
    if not np.isfinite(score):
        return f"no {params.field} score"
    cut = cuts.get(source if params.per_source else "*")
    return f"{params.field} {score:.4g}: not {params.rule()} (cut {cut})"


def apply(docs: list[Doc], params: SelectParams, decision: dict[str, Any], ctx: StepContext,
          offset: int) -> tuple[list[Doc], StepReport]:
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    keep = decision["keep"][offset : offset + len(docs)]
    out = []
    for doc, kept in zip(docs, keep, strict=True):
        if kept:
            out.append(doc)
        else:
            ctx.remove(rep, doc, _reason(params, _score(doc.get(params.field)), decision["cuts"],
                                         str(doc.get("source"))))
    rep.docs_out = len(out)
    rep.selection = {"field": params.field, "rule": params.rule(), "cuts": decision["cuts"]}  # type: ignore[attr-defined]
    return out, rep


TWO_PASS = TwoPass(gather, decide, apply)


def run_select(docs: list[Doc], params: SelectParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    return run_two_pass(TWO_PASS, docs, params, ctx)


STEPS = [StepDef(SelectParams, run_select, two_pass=TWO_PASS)]
