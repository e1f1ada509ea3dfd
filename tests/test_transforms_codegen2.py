"""CodeGen2 mixture: CLM share, span-corruption layout with sentinels at the end, loss region, inverse."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.objectives.transforms import NUM_SPECIAL, CodeGen2Config, codegen2_invert, codegen2_transform
from kiln.objectives.transforms.codegen2 import codegen2_span
from kiln.objectives.transforms.common import EOI_ID, IGNORE, SENTINEL_IDS, SEP_ID, is_sentinel


def test_clm_share_and_layout() -> None:
    rng, n = np.random.default_rng(0), 2000
    ids = np.arange(NUM_SPECIAL, NUM_SPECIAL + 100)
    kinds = [codegen2_transform(ids, rng).kind for _ in range(n)]
    assert abs(kinds.count("clm") / n - 0.5) <= 0.03
    ex = codegen2_span(ids, np.random.default_rng(1))
    sep = ex.sep_index
    assert ex.tokens[sep] == SEP_ID and ex.tokens[-1] == EOI_ID and ex.tokens[sep + 1] == SENTINEL_IDS[0]
    n_spans = int(is_sentinel(ex.tokens[:sep]).sum())
    np.testing.assert_array_equal(ex.tokens[sep + 1 :][is_sentinel(ex.tokens[sep + 1 :])], SENTINEL_IDS[:n_spans])
    assert ex.loss_mask[:-1].all() and not ex.loss_mask[-1]  # loss_on="all": whole rearranged sequence
    only = codegen2_span(ids, np.random.default_rng(1), CodeGen2Config(loss_on="targets"))
    np.testing.assert_array_equal(np.flatnonzero(only.loss_mask), np.arange(sep, len(only.tokens) - 1))
    assert (only.targets[:sep] == IGNORE).all()


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(NUM_SPECIAL, 10**6), min_size=2, max_size=300), seed=st.integers(0, 2**32 - 1))
def test_inverse(ids: list[int], seed: int) -> None:
    ex = codegen2_transform(ids, np.random.default_rng(seed))
    np.testing.assert_array_equal(codegen2_invert(ex), np.array(ids))
    np.testing.assert_array_equal(ex.targets[ex.loss_mask], ex.tokens[1:][ex.loss_mask[:-1]])
