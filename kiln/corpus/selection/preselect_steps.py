"""The ``preselect`` scorer step (PreSelect, Shum et al. 2025, arXiv 2503.00808).

The method and its defaults: :mod:`kiln.corpus.selection.preselect`.

Recipe use: score, then keep the top 10% of characters with ``select``:

.. code-block:: yaml

    corpus:
      steps:
        - step: preselect
          references:                      # >= 2 kiln checkpoints of known downstream quality
            - {checkpoint: ../small/run, score: 0.41}
            - {checkpoint: ../large/run, score: 0.57}
        - step: select
          field: preselect
          keep_fraction: 0.1

This module imports only pydantic and the scorer interface; torch, fastText and kiln.model load when the step runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from kiln.corpus.learned.params import FastTextFields, ReferenceModelFields
from kiln.corpus.scoring.base import ScorerParams, scorer_step
from kiln.corpus.steps.base import Doc, StepContext
from kiln.section import INPUT_FILE


class PreSelectReference(ReferenceModelFields):
    """One reference model: a kiln checkpoint and its downstream quality (given, or read from an eval)."""

    score: float | None = Field(None, description="the model's downstream score (higher = better unless the step "
                                                  "says higher_is_better: false); default: read `rank_by`")
    metrics: str | None = Field(None, description="the metrics.json `rank_by` is read from; default: the "
                                                  "eval/metrics.json of the run holding the checkpoint",
                                  json_schema_extra=INPUT_FILE)


class PreSelectParams(ScorerParams, FastTextFields):
    step: Literal["preselect"] = "preselect"
    references: list[PreSelectReference] = Field(min_length=2, description="the reference models (at least 2)")
    rank_by: str | None = Field(None, description="metric path into each reference's eval metrics.json (e.g. "
                                                  "tasks/shakespeare-cloze/acc) for references without `score`")
    higher_is_better: bool = Field(True, description="false for a metric where lower is better (val_bpb)")
    sample_docs: int | None = Field(None, ge=2, description="documents given reference losses (a seeded sample of "
                                                            "those in apply_to); None = all")
    positive_min: float = Field(1.0, gt=0.0, le=1.0, description="predictive strength of a positive (1.0 = every "
                                                                 "ordered pair agrees, the paper's rule)")
    min_positives: int = Field(10, ge=1, description="fewer positives than this is an error")
    max_tokens: int = Field(1024, ge=2, description="tokens per document given to each reference (from its start)")
    batch_size: int = Field(16, ge=1, description="model windows per forward pass")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while computing losses (None = unchanged)")
    model_file: str = Field("preselect.bin", description="the classifier, saved in the corpus stage folder")
    epoch: int = Field(3, ge=1, description="fastText epochs (the paper's 3)")
    cross_fit: int = Field(0, ge=0, description="folds: each document is scored by a classifier trained without "
                           "its fold (and the held-out AUC is reported); 0 = one classifier scores every document, "
                           "its training documents included (the paper)")

    def implied_inputs(self, resolve: Callable[[str], Path]) -> dict[str, Path | None]:
        """Files the step reads that no field names: each reference ranked by ``rank_by`` from its run's default
        ``eval/metrics.json`` (label -> path, None when there is none yet); fingerprinted with the corpus stage,
        so a re-evaluated reference re-runs the selection."""
        from kiln.corpus.selection.preselect import find_eval_metrics

        return {f"references[{j}] metrics (eval/metrics.json above {ref.checkpoint})":
                find_eval_metrics(resolve(ref.checkpoint))
                for j, ref in enumerate(self.references) if ref.score is None and ref.metrics is None}

    @model_validator(mode="after")
    def _scores_known(self) -> PreSelectParams:
        unscored = [r.checkpoint for r in self.references if r.score is None]
        if unscored and self.rank_by is None:
            raise ValueError(f"references {unscored} have no `score`: give each a score or set `rank_by` (a metric "
                             "path into the reference run's eval/metrics.json)")
        if self.cross_fit == 1:
            raise ValueError("cross_fit: 1 fold leaves nothing to train on; use 0 or 2 or more folds")
        return self


def preselect_setup(params: PreSelectParams, ctx: StepContext, docs: list[Doc]) -> Any:
    from kiln.corpus.selection.preselect import fit_preselect

    return fit_preselect(docs, params, ctx)


def preselect_score(state: Any, docs: list[Doc], params: PreSelectParams, ctx: StepContext) -> np.ndarray:
    return state.score(docs)


STEPS = [scorer_step(PreSelectParams, preselect_setup, preselect_score, per_doc=False)]
