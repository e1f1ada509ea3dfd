"""The n-gram lexicon of ERNIE-Gram (Xiao et al. 2021, "ERNIE-Gram: Pre-Training with Explicitly N-Gram Masked
Language Modeling for Natural Language Understanding", sec. 3.3 and appendix): n-grams (2 <= n <= 3) whose
frequency is significantly higher than independence predicts, by a t-test, and maximum-matching segmentation.

For an n-gram g with count c among the N tokens of the corpus, x = c / N is its observed rate and
mu = prod_i p(w_i) its rate under independence of its unigrams; with the Bernoulli variance s^2 ~ x,

    t(g) = (x - mu) / sqrt(x / N).

The lexicon keeps, for each n, the ``size[n]`` n-grams of highest t among those with count >= ``min_count`` and
t >= ``min_t``. N-grams containing special tokens are never counted. A lexicon entry's coarse-target id is
``vocab_size + index`` (the coarse head predicts over V_tokens + V_ngrams).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kiln.objectives.transforms.common import NUM_SPECIAL, as_ids


@dataclass(frozen=True)
class LexiconConfig:
    sizes: dict[int, int] = field(default_factory=lambda: {2: 20000, 3: 10000})
    min_count: int = 5
    min_t: float = 2.576  # one-sided 99.5% normal quantile

    def __post_init__(self) -> None:
        if not self.sizes or any(n < 2 or n > 3 for n in self.sizes) or any(k < 0 for k in self.sizes.values()):
            raise ValueError(f"lexicon sizes are per n in {{2, 3}} and non-negative, got {self.sizes}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")


@dataclass
class NgramLexicon:
    """Selected n-grams in a fixed order (index i has coarse id ``vocab_size + i``) with their t statistics."""

    vocab_size: int
    ngrams: list[tuple[int, ...]]
    t_scores: list[float]
    index: dict[tuple[int, ...], int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {g: i for i, g in enumerate(self.ngrams)}

    @property
    def max_n(self) -> int:
        return max((len(g) for g in self.ngrams), default=1)

    @property
    def coarse_vocab_size(self) -> int:
        return self.vocab_size + len(self.ngrams)

    def __contains__(self, g: tuple[int, ...]) -> bool:
        return g in self.index

    def __len__(self) -> int:
        return len(self.ngrams)

    def coarse_id(self, g: Sequence[int]) -> int:
        """A unigram's own id, or ``vocab_size + index`` for a lexicon n-gram."""
        g = tuple(int(x) for x in g)
        return g[0] if len(g) == 1 else self.vocab_size + self.index[g]


def count_ngrams(docs: Iterable[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(unique n-grams as rows, counts), windows inside one document and free of special tokens."""
    windows = []
    for d in docs:
        if len(d) < n:
            continue
        w = np.lib.stride_tricks.sliding_window_view(d, n)
        windows.append(w[(w >= NUM_SPECIAL).all(axis=1)])
    if not windows:
        return np.zeros((0, n), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(windows), axis=0, return_counts=True)


def build_lexicon(docs: Iterable[Sequence[int] | np.ndarray], vocab_size: int,
                  config: LexiconConfig = LexiconConfig()) -> NgramLexicon:
    """Build the t-test lexicon from token-id documents (see the module docstring)."""
    arrays = [as_ids(d) for d in docs]
    if any(len(d) and (d.min() < 0 or d.max() >= vocab_size) for d in arrays):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    uni = np.bincount(np.concatenate(arrays) if arrays else np.zeros(0, np.int64), minlength=vocab_size)
    uni[:NUM_SPECIAL] = 0
    N = int(uni.sum())
    if N == 0:
        return NgramLexicon(vocab_size, [], [])
    p = uni / N
    ngrams: list[tuple[int, ...]] = []
    scores: list[float] = []
    for n in sorted(config.sizes):
        grams, counts = count_ngrams(arrays, n)
        keep = counts >= config.min_count
        grams, counts = grams[keep], counts[keep]
        x = counts / N
        mu = np.prod(p[grams], axis=1)
        t = (x - mu) / np.sqrt(x / N)
        ok = t >= config.min_t
        grams, t = grams[ok], t[ok]
        order = np.lexsort((*grams.T[::-1], -t))[: config.sizes[n]]  # by t descending, ties by the n-gram
        ngrams += [tuple(int(v) for v in g) for g in grams[order]]
        scores += [float(v) for v in t[order]]
    return NgramLexicon(vocab_size, ngrams, scores)


def max_match(tokens: np.ndarray, lexicon: NgramLexicon) -> list[tuple[int, int]]:
    """Forward maximum matching: (start, n) units covering ``tokens``, longest lexicon n-gram first."""
    tokens = as_ids(tokens)
    units: list[tuple[int, int]] = []
    i, L, top = 0, len(tokens), lexicon.max_n
    while i < L:
        n = 1
        for m in range(min(top, L - i), 1, -1):
            if tuple(tokens[i : i + m].tolist()) in lexicon:
                n = m
                break
        units.append((i, n))
        i += n
    return units
