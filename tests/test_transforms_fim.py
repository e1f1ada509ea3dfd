"""FIM: PSM/SPM layouts, exact inverse at token and character level, measured rate, horizon-length targets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.objectives.transforms import (
    NUM_SPECIAL,
    FIMConfig,
    fim_document,
    fim_invert,
    fim_invert_text,
    fim_text,
    fim_tokens,
)
from kiln.objectives.transforms.common import BOS_ID, EOI_ID, EOS_ID, FIM_MIDDLE_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID
from kiln.objectives.transforms.fim import fim_layout, horizon_targets

PRE, SUF, MID, EOI = FIM_PREFIX_ID, FIM_SUFFIX_ID, FIM_MIDDLE_ID, EOI_ID


def encode(text: str) -> list[int]:  # a toy character tokenizer above the special ids
    return [NUM_SPECIAL + ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i - NUM_SPECIAL) for i in ids)


def test_psm_and_spm_layouts() -> None:
    p, m, s = np.array([200, 201]), np.array([300, 301, 302]), np.array([400])
    psm = fim_layout(p, m, s, "psm")
    assert psm.tokens.tolist() == [PRE, 200, 201, SUF, 400, MID, 300, 301, 302, EOI]
    spm = fim_layout(p, m, s, "spm")
    assert spm.tokens.tolist() == [PRE, SUF, 400, MID, 200, 201, 300, 301, 302, EOI]
    for ex in (psm, spm):
        np.testing.assert_array_equal(fim_invert(ex.tokens), np.concatenate([p, m, s]))
        assert ex.tokens[ex.middle_start : ex.middle_start + 3].tolist() == [300, 301, 302]


def test_hlp_targets_run_one_to_zero() -> None:
    ex = fim_layout(np.array([200]), np.arange(300, 305), np.array([400, 401]), "psm")
    M = 5
    pos = np.flatnonzero(ex.hlp_mask)
    assert len(pos) == M + 1 and np.all(np.diff(pos) == 1)
    np.testing.assert_allclose(ex.hlp_targets[pos], (M - np.arange(M + 1)) / M)
    assert ex.hlp_targets[pos[0]] == 1.0 and ex.tokens[pos[0] + 1] == 300  # predicts the first middle token
    assert ex.tokens[pos[-1] + 1] == EOI and ex.hlp_targets[pos[-1]] == 0.0  # predicts <|eoi|>: target 0
    assert (ex.hlp_targets[~ex.hlp_mask] == 0).all()
    t, mask = horizon_targets(6, 3, 0)  # empty middle: only the <|eoi|>-predicting position, target 0
    assert mask.tolist() == [False, False, True, False, False, False] and t[2] == 0.0


def test_measured_fim_rate_and_spm_share() -> None:
    rng, n = np.random.default_rng(0), 5000
    modes = [fim_tokens(np.arange(NUM_SPECIAL, NUM_SPECIAL + 20), rng).mode for _ in range(n)]
    applied = [m for m in modes if m is not None]
    assert abs(len(applied) / n - 0.5) <= 0.02
    assert abs(applied.count("spm") / len(applied) - 0.5) <= 0.02
    assert all(m is None for m in (fim_tokens([200, 201], rng, FIMConfig(rate=0.0)).mode for _ in range(50)))


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(NUM_SPECIAL, 10**6), max_size=200), seed=st.integers(0, 2**32 - 1),
       spm=st.sampled_from([0.0, 1.0]))
def test_token_level_inverse_and_hlp(ids: list[int], seed: int, spm: float) -> None:
    ex = fim_tokens(ids, np.random.default_rng(seed), FIMConfig(rate=1.0, spm_rate=spm))
    assert ex.mode == ("spm" if spm else "psm")
    np.testing.assert_array_equal(fim_invert(ex.tokens), np.array(ids, dtype=np.int64))
    assert len(ex.tokens) == len(ids) + 4
    pos = np.flatnonzero(ex.hlp_mask)
    assert len(pos) == ex.middle_len + 1 and ex.tokens[pos[-1] + 1] == EOI and ex.hlp_targets[pos[-1]] == 0
    assert np.all(np.diff(ex.hlp_targets[pos]) < 0) and (ex.middle_len == 0 or ex.hlp_targets[pos[0]] == 1)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=120), seed=st.integers(0, 2**32 - 1), rate=st.sampled_from([0.0, 0.5, 1.0]))
def test_character_level_inverse(text: str, seed: int, rate: float) -> None:
    ex = fim_text(text, np.random.default_rng(seed), encode, FIMConfig(rate=rate))
    assert fim_invert_text(ex.tokens, decode) == text
    if ex.applied:
        assert ex.tokens[0] == PRE and ex.tokens[-1] == EOI
    else:
        assert ex.tokens.tolist() == encode(text)


def test_document_wrapper_keeps_bos_eos() -> None:
    docu = [BOS_ID, *range(200, 230), EOS_ID]
    ex = fim_document(docu, np.random.default_rng(3), FIMConfig(rate=1.0))
    assert ex.tokens[0] == BOS_ID and ex.tokens[-1] == EOS_ID and ex.tokens[1] == PRE
    np.testing.assert_array_equal(fim_invert(ex.tokens[1:-1]), np.arange(200, 230))
    pos = np.flatnonzero(ex.hlp_mask)
    assert ex.tokens[pos[-1] + 1] == EOI and ex.tokens[ex.middle_start - 1] in (MID, *range(200, 230))


def test_rejects_documents_with_fim_markers() -> None:
    with pytest.raises(ValueError, match="reserved token"):
        fim_tokens([200, MID, 201], np.random.default_rng(0), FIMConfig(rate=1.0))
