"""Recipe models of the learned filters (``corpus.steps`` entries ``fasttext_quality`` and ``perplexity``).

Kept apart from the implementations so that building a recipe imports neither fastText nor torch.
fastText quality classifier: Joulin et al. 2017; quality / inverse filters: Longpre et al. 2023 (A
Pretrainer's Guide). Perplexity band: Wenzek et al. 2020 (CCNet), Marion et al. 2023.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kiln.corpus.steps.base import StepParams
from kiln.section import INPUT_MODEL, INPUT_TREE, Section


class DocSelector(Section):
    """One group of training documents: corpus documents (``source`` and/or ``where``) or a file (``path``)."""

    source: str | None = Field(None, description="corpus documents with this `source` label")
    where: dict[str, list[Any]] = Field(
        default_factory=dict, description="corpus documents whose metadata field holds one of the listed values")
    path: str | None = Field(None, description="external .jsonl (one JSON object per line) or .txt file/folder",
                             json_schema_extra=INPUT_TREE)
    text_field: str = "text"
    max_docs: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> DocSelector:
        in_corpus = self.source is not None or bool(self.where)
        if in_corpus == (self.path is not None):
            raise ValueError("give either `path` (an external file) or `source`/`where` (corpus documents), not both")
        return self


class FastTextFields(Section):
    """fastText training settings shared by every step that trains a classifier (Joulin et al. 2017)."""

    max_chars: int = Field(20000, gt=0, description="characters of each document given to fastText")
    epoch: int = Field(5, ge=1)
    lr: float = Field(0.1, gt=0.0)
    dim: int = Field(32, ge=2)
    word_ngrams: int = Field(2, ge=1)
    min_count: int = Field(1, ge=1)
    bucket: int = Field(200_000, ge=1000, description="hash buckets for n-grams (memory: bucket x dim floats)")
    seed: int = 0


class ReferenceModelFields(Section):
    """A reference kiln model a step scores with (kiln/corpus/learned/refmodel.py); both paths are stage inputs."""

    checkpoint: str = Field(description="run dir, train/ or checkpoints/ folder, a step-N folder or a kiln export "
                                        "(relative paths resolve against the run dir)", json_schema_extra=INPUT_MODEL)
    tokenizer: str | None = Field(None, description="tokenizer folder; default: the tokenizer/ of the checkpoint's run",
                                  json_schema_extra=INPUT_TREE)


class FastTextQualityParams(StepParams, FastTextFields):
    step: Literal["fasttext_quality"] = "fasttext_quality"
    positive: list[DocSelector] = Field(min_length=1, description="documents of the class to keep")
    negative: list[DocSelector] = Field(min_length=1, description="documents of the class to remove")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="keep iff P(positive) >= threshold")
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0, description="keep this share of highest scores")
    inverse: bool = Field(False, description="keep the complement of what the rule keeps (inverse filter)")
    apply_to: list[str] = Field(default_factory=list, description="source labels to filter; [] = every document")
    score_field: str | None = Field(None, description="store P(positive) in this metadata field")
    model_file: str = "fasttext_quality.bin"
    cross_fit: int = Field(5, ge=0, description="folds: each document is scored by a classifier trained without "
                           "its fold, so none is scored by a model that saw it; 0 = one classifier scores its own "
                           "training documents (in-sample, optimistic)")

    @model_validator(mode="after")
    def _one_rule(self) -> FastTextQualityParams:
        if (self.threshold is None) == (self.keep_fraction is None):
            raise ValueError("give exactly one of `threshold` or `keep_fraction`")
        if self.cross_fit == 1:
            raise ValueError("cross_fit: 1 fold leaves nothing to train on; use 0 (in-sample) or 2 or more folds")
        return self


class PerplexityFilterParams(StepParams, ReferenceModelFields):
    step: Literal["perplexity"] = "perplexity"
    low: float = Field(0.0, ge=0.0, le=100.0, description="lowest kept percentile of bits per byte")
    high: float = Field(100.0, ge=0.0, le=100.0, description="highest kept percentile of bits per byte")
    max_tokens: int = Field(1024, ge=2, description="tokens per document scored (from its start)")
    batch_size: int = Field(16, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads while scoring (None = unchanged)")
    apply_to: list[str] = Field(default_factory=list, description="source labels to filter; [] = every document")
    score_field: str | None = Field(None, description="store bits per byte in this metadata field")

    @model_validator(mode="after")
    def _band(self) -> PerplexityFilterParams:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self
