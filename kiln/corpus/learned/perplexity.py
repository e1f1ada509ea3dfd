"""Perplexity filter: keep documents inside a percentile band of bits per byte under a reference model.

CCNet (Wenzek et al. 2020) scores each document with a language model trained on a high-quality
reference corpus and buckets the pool into head/middle/tail by perplexity; Marion et al. 2023
("When Less is More") find that keeping a band of the perplexity distribution (often the middle, or
the lowest) prunes pretraining data well. Here the reference model is a kiln checkpoint from an
earlier run (a run dir, its ``train/`` folder, a ``checkpoints/`` folder or one ``step-N`` folder) and
its tokenizer; the score is bits per byte (:mod:`kiln.corpus.learned.refmodel`), so low = the document
looks like the reference corpus. A document is kept iff its score lies between the ``low`` and
``high`` percentiles of the scores of the documents filtered (``apply_to``).
"""

from __future__ import annotations

import numpy as np
import torch

from kiln.corpus.learned.params import PerplexityFilterParams
from kiln.corpus.learned.refmodel import ReferenceModel
from kiln.corpus.scoring.rules import apply_keep, keep_percentile_band
from kiln.corpus.steps.base import Doc, StepContext, StepReport

__all__ = ["PerplexityFilterParams", "score_docs", "run"]


def score_docs(ref: ReferenceModel, texts: list[str], params: PerplexityFilterParams) -> np.ndarray:
    """Bits per byte of each text under ``ref`` (with ``params.threads`` torch threads if set)."""
    before = torch.get_num_threads()
    if params.threads:
        torch.set_num_threads(params.threads)
    try:
        return ref.bits_per_byte(texts, params.max_tokens, params.batch_size)
    finally:
        torch.set_num_threads(before)


def run(docs: list[Doc], params: PerplexityFilterParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Score the documents of ``apply_to`` and remove those outside the percentile band."""
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    ref = ReferenceModel.load(ctx.resolve(params.checkpoint), ctx.resolve(params.tokenizer) if params.tokenizer
                              else None)
    targets = [i for i, d in enumerate(docs) if not params.apply_to or d.get("source") in params.apply_to]
    scores = score_docs(ref, [docs[i]["text"] for i in targets], params)
    finite = np.isfinite(scores)
    keep = np.zeros(len(targets), dtype=bool)
    keep[finite] = keep_percentile_band(scores[finite], params.low, params.high)
    lo, hi = np.percentile(scores[finite], [params.low, params.high]) if finite.any() else (np.nan, np.nan)
    band = f"outside the p{params.low:g}-p{params.high:g} band [{lo:.3f}, {hi:.3f}]"
    out = apply_keep(docs, targets, keep, scores, ctx, rep, params.score_field,
                     lambda score: "no bytes to score" if np.isnan(score) else f"bits per byte {score:.3f} {band}")
    return out, rep
