"""``gotd_score``: GOT-D's calibrated OT potential as a document score (Kang et al. 2024, arXiv:2405.02774).

A whole-corpus scorer (``per_doc=False``): ``setup`` embeds the target sample and the pool (the documents of
``apply_to``, default all), solves one entropic OT problem and keeps each pool document's score; ``score`` looks
them up. Higher = more wanted (``-g'``, see :mod:`kiln.corpus.selection.gotd`). Select the top k with
``{step: select, field: <column>, keep_docs: k}``.

The target is named by ``target`` selectors (:class:`kiln.corpus.learned.params.DocSelector`): an external
``.jsonl`` / ``.txt`` file or folder (``path``, resolved against the run dir), or corpus documents (``source`` /
``where``). Target documents taken from the corpus are not part of the pool: they get no score (null), and
``select``'s ``missing`` decides whether they stay.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import Field

from kiln.corpus.learned.params import DocSelector
from kiln.corpus.scoring.base import ScorerParams, scorer_step
from kiln.corpus.selection.embed import EmbedParams
from kiln.corpus.steps.base import Doc, StepContext


class GotdScoreParams(ScorerParams):
    step: Literal["gotd_score"] = "gotd_score"
    target: list[DocSelector] = Field(min_length=1, description="the target sample: a file (`path`) or corpus "
                                                               "documents (`source` / `where`)")
    embed: EmbedParams = Field(default_factory=EmbedParams, description="how samples are embedded")
    epsilon: float = Field(0.1, gt=0.0, description="entropic regularisation (absolute, squared-Euclidean cost)")
    max_iter: int = Field(2000, ge=1, description="Sinkhorn iterations at most")
    tol: float = Field(1e-7, gt=0.0, description="stop when the pool-marginal violation (L2) is below this")
    chunk_chars: int = Field(1000, ge=1, description="characters per sample; a document scores its chunks' mean")
    max_chunks: int = Field(16, ge=1, description="samples per document at most (evenly spaced chunks)")
    max_cells: int = Field(20_000_000, ge=1, description="largest target x pool cost matrix (~32 bytes per cell); "
                                                         "the target is subsampled to fit")
    seed: int = Field(0, description="seed of the target subsample (only used when it is needed)")


def _key(doc: Doc) -> tuple[str, str]:
    return str(doc.get("id")), hashlib.blake2b(str(doc.get("text", "")).encode("utf-8"), digest_size=8).hexdigest()


def target_texts(params: GotdScoreParams, ctx: StepContext, docs: list[Doc]) -> tuple[list[str], set[int]]:
    """The target's texts and the corpus positions of target documents taken from the corpus."""
    from kiln.corpus.learned.fasttext_filter import gather_labelled

    texts: list[str] = []
    in_corpus: set[int] = set()
    for n, sel in enumerate(params.target):
        if sel.path is not None:
            path = ctx.resolve(sel.path)
            if not path.exists():
                raise FileNotFoundError(f"{ctx.step or params.step}: target file {path} (target[{n}].path) "
                                        "does not exist")
        found = gather_labelled(sel, docs, ctx)
        texts.extend(t for t, _ in found)
        in_corpus.update(i for _, i in found if i is not None)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        named = ", ".join(s.path or f"source={s.source} where={s.where}" for s in params.target)
        raise ValueError(f"{ctx.step or params.step}: the target selectors ({named}) select no non-empty text")
    return texts, in_corpus


def gotd_setup(params: GotdScoreParams, ctx: StepContext, docs: list[Doc]) -> dict[tuple[str, str], float]:
    from kiln.corpus.selection.gotd import gotd_doc_scores

    texts, in_corpus = target_texts(params, ctx, docs)
    pool = [d for i, d in enumerate(docs)
            if i not in in_corpus and (not params.apply_to or d.get("source") in params.apply_to)]
    if not pool:
        raise ValueError(f"{ctx.step or params.step}: no pool documents left to score (every document of apply_to "
                         "is a target document)")
    scores = gotd_doc_scores(texts, [str(d["text"]) for d in pool], params.embed, params.epsilon, params.max_iter,
                             params.tol, params.chunk_chars, params.max_chunks, params.max_cells, params.seed)
    return {_key(d): float(s) for d, s in zip(pool, scores, strict=True)}


def gotd_score(state: dict[tuple[str, str], float], docs: list[Doc], params: GotdScoreParams,
               ctx: StepContext) -> np.ndarray:
    return np.array([state.get(_key(d), np.nan) for d in docs], dtype=np.float64)


STEPS = [scorer_step(GotdScoreParams, gotd_setup, gotd_score, per_doc=False)]
