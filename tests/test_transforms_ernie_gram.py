"""ERNIE-Gram: t-test lexicon finds planted 3-grams; 15% masking; collapse by sum(n-1); inverse; slot attention."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.objectives.transforms import (
    NUM_SPECIAL,
    ERNIEGramConfig,
    LexiconConfig,
    build_lexicon,
    ernie_gram_invert,
    ernie_gram_mask,
    fine_slot_attention,
    max_match,
)
from kiln.objectives.transforms.common import BOS_ID, EOS_ID, IGNORE, MASK_ID

V = 2000
PLANTED = [tuple(int(x) for x in t) for t in np.random.default_rng(99).integers(NUM_SPECIAL, V, size=(12, 3))]


def corpus(n_docs: int = 400, seed: int = 0) -> list[np.ndarray]:
    """Documents of random tokens with a planted 3-gram at ~20% of positions, wrapped in <bos> ... <eos>."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        out: list[int] = [BOS_ID]
        length = int(rng.integers(60, 200))
        while len(out) < length:
            planted = rng.random() < 0.2
            out += PLANTED[int(rng.integers(len(PLANTED)))] if planted else [int(rng.integers(NUM_SPECIAL, V))]
        docs.append(np.array([*out, EOS_ID]))
    return docs


@pytest.fixture(scope="module")
def lexicon():
    return build_lexicon(corpus(), V, LexiconConfig(sizes={2: 50, 3: 30}, min_count=5))


def test_lexicon_finds_planted_trigrams(lexicon) -> None:
    trigrams = [g for g in lexicon.ngrams if len(g) == 3]
    assert set(PLANTED) <= set(trigrams[: len(PLANTED) + 5])
    assert all(t > 2.576 for t in lexicon.t_scores)
    assert all(min(g) >= NUM_SPECIAL for g in lexicon.ngrams)  # no specials in n-grams
    units = max_match(np.array([500, *PLANTED[0], 501]), lexicon)
    assert units == [(0, 1), (1, 3), (4, 1)]


def test_masked_fraction_collapse_and_inverse(lexicon) -> None:
    rng = np.random.default_rng(1)
    masked = eligible = ngram_units = 0
    for d in corpus(300, seed=7):
        ex = ernie_gram_mask(d, lexicon, rng, ERNIEGramConfig())
        masked += ex.n_masked_tokens
        eligible += ex.n_eligible
        ngram_units += int((ex.unit_lengths > 1).sum())
        assert len(d) - len(ex.inputs) == int((ex.unit_lengths - 1).sum())  # shortens by sum(n - 1)
        np.testing.assert_array_equal(ernie_gram_invert(ex), d)
        is_mask = ex.coarse_targets != IGNORE
        assert (ex.inputs[is_mask] == MASK_ID).all() and is_mask.sum() == len(ex.unit_lengths)
        assert ex.inputs[0] == BOS_ID and ex.inputs[-1] == EOS_ID  # specials never masked
        for j, n in zip(np.flatnonzero(is_mask), ex.unit_lengths, strict=True):
            slots = ex.fine_anchor == j
            assert slots.sum() == n and ex.fine_offset[slots].tolist() == list(range(n))
            gram = d[ex.positions[j] : ex.positions[j] + n]
            np.testing.assert_array_equal(ex.fine_targets[slots], gram)
            np.testing.assert_array_equal(ex.fine_positions[slots], ex.positions[j] + np.arange(n))
            want = gram[0] if n == 1 else V + lexicon.index[tuple(gram.tolist())]
            assert ex.coarse_targets[j] == want
    assert abs(masked / eligible - 0.15) <= 0.01
    assert ngram_units > 100  # n-grams really are masked as units


def test_fine_slots_cannot_attend_to_each_other() -> None:
    allowed = fine_slot_attention(5, 3)
    assert allowed.shape == (8, 8)
    assert allowed[:5, :5].all() and not allowed[:5, 5:].any()  # main sequence never sees slots
    assert allowed[5:, :5].all()  # slots see the context and the coarse masks
    np.testing.assert_array_equal(allowed[5:, 5:].numpy(), np.eye(3, dtype=bool))  # only themselves
