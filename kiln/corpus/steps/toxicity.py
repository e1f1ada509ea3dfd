"""``toxicity``: a whole-corpus toxicity filter at a kept fraction or threshold, and its inverse.

A Pretrainer's Guide (Longpre et al. 2023) scores every document's toxicity and compares removing the most
toxic documents with the *inverse* filter that removes the least toxic ones, at matched strength. kiln's
score is the bad-word ratio (share of a document's words on a word list: ``words_file``, default kiln's
``badwords_en``; the Guide used the Perspective API, which needs a network service), stored in
``score_field``. Keep rule, on the documents of ``apply_to`` (all by default):

- ``keep_fraction: f``: keep the ``round(f * n)`` least toxic documents. Ties (most documents score 0) are
  broken by ``sha256("{seed}:toxicity:{id}")``, not by position, so no source is favoured by its place in the
  corpus (salted: the split's own draw would keep or drop the validation documents first);
- ``threshold: t``: keep iff the ratio ``<= t``.

``inverse: true`` keeps exactly the complement of what the same rule keeps (as ``fasttext_quality``'s
``inverse``; spec check: the inverse keeps the complement). The Guide's inverse filter at matched strength,
which removes the same amount of data from the other end, is therefore ``keep_fraction: 1 - f`` with
``inverse: true``: it removes the ``1 - f`` least toxic documents, as ``keep_fraction: f`` removes the
``1 - f`` most toxic (``recipes/sweeps/pretrainers-guide.yaml``). kiln's per-document ``bad_words`` step is the
fixed-threshold version (its ``invert`` keeps only flagged documents).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport


class ToxicityParams(StepParams):
    step: Literal["toxicity"] = "toxicity"
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0, description="keep this share of the least toxic")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="keep iff bad-word ratio <= threshold")
    inverse: bool = Field(False, description="keep exactly the complement of what the rule keeps")
    words_file: str | None = Field(None, description="one word per line; default: kiln's list (asset badwords_en)")
    apply_to: list[str] = Field(default_factory=list, description="source labels to filter; [] = every document")
    score_field: str | None = Field("toxicity", description="store the bad-word ratio in this metadata field")
    seed: int = Field(0, description="seed of the tie-breaking draw")

    @model_validator(mode="after")
    def _one_rule(self) -> ToxicityParams:
        if (self.threshold is None) == (self.keep_fraction is None):
            raise ValueError("give exactly one of `threshold` or `keep_fraction`")
        return self


def toxicity_keep(scores: np.ndarray, ids: list[str], params: ToxicityParams) -> np.ndarray:
    """Which of the scored documents the rule keeps (before ``inverse``): see the module docstring."""
    from kiln.corpus.mix import draw
    from kiln.corpus.scoring.rules import keep_threshold, keep_top_fraction

    if params.threshold is not None:
        return keep_threshold(-scores, -params.threshold)
    order = np.argsort([draw(f"toxicity:{i}", params.seed) for i in ids], kind="stable")  # tie-break order
    keep = np.zeros(len(scores), dtype=bool)
    keep[order] = keep_top_fraction(-scores[order], params.keep_fraction or 1.0)
    return keep


def run_toxicity(docs: list[Doc], params: ToxicityParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    from kiln.corpus.assets import read_word_list, resolve
    from kiln.corpus.scoring.rules import apply_keep
    from kiln.corpus.steps.heuristics import bad_word_ratio

    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    path = ctx.resolve(params.words_file) if params.words_file else resolve("badwords_en", ctx.cache_dir)
    listed = read_word_list(path)
    targets = [i for i, d in enumerate(docs) if not params.apply_to or d.get("source") in params.apply_to]
    scores = np.array([bad_word_ratio(docs[i]["text"], listed) for i in targets], dtype=np.float64)
    keep = toxicity_keep(scores, [str(docs[i]["id"]) for i in targets], params)
    if params.threshold is not None:
        rule = f"bad-word ratio > {params.threshold}"
    else:
        rule = f"not in the least toxic {params.keep_fraction:.0%}"
    if params.inverse:
        keep = ~keep
        rule = "inverse filter: " + rule.replace(">", "<=").replace("not in", "in")
    out = apply_keep(docs, targets, keep, scores, ctx, rep, params.score_field,
                     lambda score: f"{rule} (bad-word ratio {score:.3f})")
    return out, rep


STEPS = [StepDef(ToxicityParams, run_toxicity)]
