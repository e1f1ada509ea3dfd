"""Turning per-document scores into keep decisions, and the ROC AUC used to check a scorer.

Three rules, as used across the quality-filtering literature: a fixed score ``threshold``; a
``keep_fraction`` of the highest-scoring documents (the thresholds swept in A Pretrainer's Guide,
Longpre et al. 2023); and a percentile band ``[low, high]`` (CCNet's head/middle/tail perplexity
buckets, Wenzek et al. 2020; Marion et al. 2023 keep bottom, middle or top bands of perplexity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def keep_threshold(scores: Sequence[float], threshold: float) -> np.ndarray:
    """Keep iff ``score >= threshold``."""
    return np.asarray(scores, dtype=np.float64) >= threshold


def keep_top_fraction(scores: Sequence[float], fraction: float) -> np.ndarray:
    """Keep the ``round(fraction * n)`` highest scores (ties broken by position: earlier documents first)."""
    s = np.asarray(scores, dtype=np.float64)
    k = int(round(fraction * len(s)))
    order = np.lexsort((np.arange(len(s)), -s))  # by score descending, then index ascending
    mask = np.zeros(len(s), dtype=bool)
    mask[order[:k]] = True
    return mask


def keep_percentile_band(scores: Sequence[float], low: float, high: float) -> np.ndarray:
    """Keep scores between the ``low``-th and ``high``-th percentiles (0..100, inclusive, linear interpolation)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = np.percentile(s, [low, high])
    return (s >= lo) & (s <= hi)


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half (Mann-Whitney U)."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    sorted_v = allv[order]
    i = 0
    while i < len(sorted_v):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def apply_keep(docs: list[dict], targets: Sequence[int], keep: Sequence[bool], scores: Sequence[float], ctx: Any,
               rep: Any, score_field: str | None, why: Callable[[float], str]) -> list[dict]:
    """Apply per-target keep decisions in document order: documents outside ``targets`` pass untouched; a
    scored document gets its score in ``score_field`` (None for NaN) and is kept or removed with ``why(score)``."""
    verdict = {i: (bool(k), float(s)) for i, k, s in zip(targets, keep, scores, strict=True)}
    out = []
    for i, doc in enumerate(docs):
        if i not in verdict:
            out.append(doc)
            continue
        kept, score = verdict[i]
        if score_field:
            doc = {**doc, score_field: None if np.isnan(score) else score}
        if kept:
            out.append(doc)
        else:
            ctx.remove(rep, doc, why(score))
    rep.docs_out = len(out)
    return out
