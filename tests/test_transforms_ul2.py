"""UL2 and span corruption: densities, mean spans, mode frequencies, exact inversion, loss on targets only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.objectives.transforms import DENOISERS, IGNORE, NUM_SPECIAL, UL2Config, ul2_invert, ul2_transform
from kiln.objectives.transforms.common import MODE_IDS, SENTINEL_IDS, is_sentinel
from kiln.objectives.transforms.spans import corrupt_spans, random_spans_noise_mask, span_starts, uncorrupt_spans
from kiln.objectives.transforms.ul2 import apply_denoiser

SPAN_DENOISERS = [d for d in DENOISERS if d.mode != "s"]


def doc(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(NUM_SPECIAL, 5000, size=n)


def span_stats(denoiser, n_samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(noise density, mean span length) pooled over ``n_samples`` documents of 512-600 tokens."""
    rng = np.random.default_rng(seed)
    noise = spans = total = 0
    for _ in range(n_samples):
        mask = random_spans_noise_mask(int(rng.integers(512, 601)), denoiser.density, denoiser.mean_span, rng,
                                       max_spans=len(SENTINEL_IDS))
        noise += int(mask.sum())
        spans += int(span_starts(mask).sum())
        total += len(mask)
    return noise / total, noise / spans


@pytest.mark.parametrize("denoiser", SPAN_DENOISERS, ids=lambda d: d.name)
def test_span_density_and_mean_length(denoiser) -> None:
    density, mean_span = span_stats(denoiser)
    assert abs(density - denoiser.density) <= 0.02
    assert abs(mean_span - denoiser.mean_span) <= 0.15 * denoiser.mean_span


def test_mode_token_frequencies_match_mixture() -> None:
    cfg, rng, n = UL2Config(), np.random.default_rng(1), 2000
    modes = [int(ul2_transform(doc(rng, 64), rng, cfg).tokens[0]) for _ in range(n)]
    for mode, p in cfg.mode_probabilities().items():
        assert abs(modes.count(MODE_IDS[mode]) / n - p) <= 0.02
    assert cfg.mode_probabilities() == pytest.approx({"r": 0.4, "x": 0.4, "s": 0.2})


@pytest.mark.parametrize("denoiser", DENOISERS, ids=lambda d: d.name)
def test_layout_inverse_and_loss_on_targets_only(denoiser) -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        ids = doc(rng, int(rng.integers(2, 300)))
        ex = apply_denoiser(ids, denoiser, rng, overflow="cap")
        assert ex.tokens[0] == MODE_IDS[denoiser.mode]
        np.testing.assert_array_equal(ul2_invert(ex.tokens, ex.prefix_len), ids)
        # next-token loss exactly on the target part: positions prefix_len-1 .. end-2 predict it
        want = np.zeros(len(ex.tokens), dtype=bool)
        want[ex.prefix_len - 1 : -1] = True
        np.testing.assert_array_equal(ex.loss_mask, want)
        np.testing.assert_array_equal(ex.targets[ex.loss_mask], ex.tokens[ex.prefix_len :])
        assert (ex.targets[~ex.loss_mask] == IGNORE).all()
        if denoiser.mode != "s":  # the target part is sentinel, span, sentinel, span, ...
            tgt = ex.tokens[ex.prefix_len :]
            assert is_sentinel(tgt[:1]).all()
            np.testing.assert_array_equal(tgt[is_sentinel(tgt)], SENTINEL_IDS[: int(is_sentinel(tgt).sum())])
            assert len(tgt) - is_sentinel(tgt).sum() == ex.noise.sum()


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(NUM_SPECIAL, 10**6), min_size=2, max_size=400), seed=st.integers(0, 2**32 - 1))
def test_ul2_inverse_property(ids: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    ex = ul2_transform(ids, rng, UL2Config(overflow="cap"))
    np.testing.assert_array_equal(ul2_invert(ex.tokens, ex.prefix_len), np.array(ids))


@settings(max_examples=100, deadline=None)
@given(noise=st.lists(st.booleans(), min_size=1, max_size=300))
def test_corrupt_uncorrupt_any_mask(noise: list[bool]) -> None:
    mask = np.array(noise)
    if span_starts(mask).sum() > len(SENTINEL_IDS):
        return
    ids = np.arange(NUM_SPECIAL, NUM_SPECIAL + len(mask))
    sc = corrupt_spans(ids, mask)
    assert sc.n_spans == span_starts(mask).sum()
    np.testing.assert_array_equal(uncorrupt_spans(sc.inputs, sc.targets), ids)


def test_sentinel_overflow_errors_or_caps() -> None:
    ids = np.arange(NUM_SPECIAL, NUM_SPECIAL + 2000)
    x3 = next(d for d in DENOISERS if d.name == "x3")
    with pytest.raises(ValueError, match="only 100 sentinels"):
        apply_denoiser(ids, x3, np.random.default_rng(0))
    ex = apply_denoiser(ids, x3, np.random.default_rng(0), overflow="cap")
    assert is_sentinel(ex.tokens[: ex.prefix_len]).sum() == 100
    np.testing.assert_array_equal(ul2_invert(ex.tokens, ex.prefix_len), ids)


def test_rejects_reserved_ids_and_bad_config() -> None:
    with pytest.raises(ValueError, match="reserved token"):
        ul2_transform([200, int(SENTINEL_IDS[3]), 201], np.random.default_rng(0))
    with pytest.raises(ValueError, match="weights must name"):
        UL2Config(weights={"r3": 1.0})
    with pytest.raises(ValueError, match="at least 2 tokens"):
        ul2_transform([200], np.random.default_rng(0))


def test_deterministic_given_seed() -> None:
    ids = np.arange(NUM_SPECIAL, NUM_SPECIAL + 300)
    a = ul2_transform(ids, np.random.default_rng(42))
    b = ul2_transform(ids, np.random.default_rng(42))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.prefix_len == b.prefix_len
