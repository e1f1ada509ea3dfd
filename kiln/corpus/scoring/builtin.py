"""kiln's built-in scorers: ``perplexity_score``, ``fasttext_score``, ``toxicity_score`` and ``random_score``.

Each writes a score column and removes nothing; follow it with ``select`` (:mod:`kiln.corpus.scoring.select`).
The older filter steps are these scorers fused with one rule: ``perplexity`` = ``perplexity_score`` +
``select: {band: [low, high]}``; ``fasttext_quality`` = ``fasttext_score`` + ``select`` by ``threshold`` or
``keep_fraction`` of documents; ``toxicity`` = ``toxicity_score`` + ``select: {keep: low}``.

- ``perplexity_score``: bits per byte under a reference kiln model (CCNet, Wenzek et al. 2020;
  :mod:`kiln.corpus.learned.refmodel`). Per document: runs shard by shard through ``corpus.executor``, each task
  loading the model once. Low = the document looks like the reference model's training data.
- ``fasttext_score``: P(positive) of a fastText classifier trained on the selected positive / negative documents
  (Joulin et al. 2017), cross-fitted by default (:mod:`kiln.corpus.learned.fasttext_filter`). Whole corpus: the
  classifier is trained on corpus documents.
- ``toxicity_score``: the share of a document's words on a word list (default kiln's ``badwords_en``).
- ``random_score``: a uniform draw from ``sha256("{seed}:random:{id}")``: the random-selection baseline every
  selection method is compared with (``select`` on it keeps a random share of documents or characters).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from kiln.corpus.learned.params import DocSelector, FastTextFields, ReferenceModelFields
from kiln.corpus.scoring.base import ScorerParams, no_setup, scorer_step
from kiln.corpus.steps.base import Doc, StepContext


class PerplexityScoreParams(ScorerParams, ReferenceModelFields):
    step: Literal["perplexity_score"] = "perplexity_score"
    max_tokens: int = Field(1024, ge=2, description="tokens per document scored (from its start)")
    batch_size: int = Field(16, ge=1, description="model windows per forward pass")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while scoring (None = unchanged)")


def perplexity_setup(params: PerplexityScoreParams, ctx: StepContext, docs: list[Doc]) -> Any:
    from kiln.corpus.learned.refmodel import ReferenceModel

    return ReferenceModel.load(ctx.resolve(params.checkpoint), ctx.resolve(params.tokenizer) if params.tokenizer
                               else None)


def perplexity_score(ref: Any, docs: list[Doc], params: PerplexityScoreParams, ctx: StepContext) -> np.ndarray:
    from kiln.corpus.learned.perplexity import score_docs

    return score_docs(ref, [d["text"] for d in docs], params)


class FastTextScoreParams(ScorerParams, FastTextFields):
    step: Literal["fasttext_score"] = "fasttext_score"
    positive: list[DocSelector] = Field(min_length=1, description="documents of the class scored high")
    negative: list[DocSelector] = Field(min_length=1, description="documents of the class scored low")
    model_file: str = "fasttext_score.bin"
    cross_fit: int = Field(5, ge=0, description="folds (see fasttext_quality); 0 = in-sample")


def fasttext_setup(params: FastTextScoreParams, ctx: StepContext, docs: list[Doc]) -> Any:
    from kiln.corpus.learned.fasttext_filter import fit_classifiers

    if params.cross_fit == 1:
        raise ValueError(f"{ctx.step}: cross_fit: 1 fold leaves nothing to train on; use 0 or 2 or more folds")
    return fit_classifiers(docs, params, ctx)


def fasttext_score(classifiers: Any, docs: list[Doc], params: FastTextScoreParams, ctx: StepContext) -> np.ndarray:
    return classifiers.score(docs)


class ToxicityScoreParams(ScorerParams):
    step: Literal["toxicity_score"] = "toxicity_score"
    words_file: str | None = Field(None, description="one word per line; default: kiln's list (asset badwords_en)")


def toxicity_setup(params: ToxicityScoreParams, ctx: StepContext, docs: list[Doc]) -> Any:
    from kiln.corpus.assets import read_word_list, resolve

    return read_word_list(ctx.resolve(params.words_file) if params.words_file else resolve("badwords_en",
                                                                                         ctx.cache_dir))


def toxicity_score(listed: Any, docs: list[Doc], params: ToxicityScoreParams, ctx: StepContext) -> np.ndarray:
    from kiln.corpus.steps.heuristics import bad_word_ratio

    return np.array([bad_word_ratio(d["text"], listed) for d in docs], dtype=np.float64)


class RandomScoreParams(ScorerParams):
    step: Literal["random_score"] = "random_score"
    seed: int = Field(0, description="seed of the draw (a different seed, a different random selection)")


def random_score(_: None, docs: list[Doc], params: RandomScoreParams, ctx: StepContext) -> np.ndarray:
    from kiln.corpus.mix import draw

    return np.array([draw(f"random:{d['id']}", params.seed) for d in docs], dtype=np.float64)


STEPS = [
    scorer_step(PerplexityScoreParams, perplexity_setup, perplexity_score, per_doc=True),
    scorer_step(FastTextScoreParams, fasttext_setup, fasttext_score, per_doc=False),
    scorer_step(ToxicityScoreParams, toxicity_setup, toxicity_score, per_doc=True),
    scorer_step(RandomScoreParams, no_setup, random_score, per_doc=True),
]
