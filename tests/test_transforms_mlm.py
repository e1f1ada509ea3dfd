"""MLM and ELECTRA inputs: exact selection ratio, 80/10/10 (and 85/0/15), specials and padding never touched."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.objectives.transforms import IGNORE, NUM_SPECIAL, MLMConfig, mlm_mask
from kiln.objectives.transforms.common import BOS_ID, EOS_ID, MASK_ID, PAD_ID
from kiln.objectives.transforms.electra import ELECTRA_MASKING, electra_mask

V = 1000


def packed_batch(seed: int, B: int = 32, L: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of two documents <bos> ... <eos> and trailing padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(NUM_SPECIAL, V, (B, L), generator=g)
    segments = torch.full((B, L), -1)
    for b in range(B):
        cut, end = int(torch.randint(20, 120, (1,), generator=g)), int(torch.randint(150, L, (1,), generator=g))
        segments[b, :cut], segments[b, cut:end] = 0, 1
        tokens[b, [0, cut]], tokens[b, [cut - 1, end - 1]] = BOS_ID, EOS_ID
        tokens[b, end:] = PAD_ID
    return tokens, segments


def proportions(cfg: MLMConfig, n_batches: int = 4) -> dict[str, float]:
    counts = {"selected": 0, "eligible": 0, "mask": 0, "random": 0, "same": 0}
    g = torch.Generator().manual_seed(0)
    for i in range(n_batches):
        tokens, segments = packed_batch(i)
        ex = mlm_mask(tokens, V, g, cfg, segments)
        eligible = (tokens >= NUM_SPECIAL) & (segments >= 0)
        sel = ex.selected
        assert not (sel & ~eligible).any()  # never a special token or padding
        assert torch.equal(ex.targets, torch.where(sel, tokens, torch.full_like(tokens, IGNORE)))
        assert torch.equal(ex.inputs[~sel], tokens[~sel])
        assert (ex.inputs[sel] >= NUM_SPECIAL).logical_or(ex.inputs[sel] == MASK_ID).all()
        # exactly round(ratio * n) per row
        assert torch.equal(sel.sum(1), torch.round(eligible.sum(1).double() * cfg.ratio).long())
        counts["selected"] += int(sel.sum())
        counts["eligible"] += int(eligible.sum())
        counts["mask"] += int((ex.inputs[sel] == MASK_ID).sum())
        counts["same"] += int((ex.inputs[sel] == tokens[sel]).sum())
        counts["random"] += int(((ex.inputs[sel] != MASK_ID) & (ex.inputs[sel] != tokens[sel])).sum())
    n = counts["selected"]
    return {"ratio": n / counts["eligible"], "mask": counts["mask"] / n, "random": counts["random"] / n,
            "same": counts["same"] / n}


def test_mlm_80_10_10_proportions() -> None:
    p = proportions(MLMConfig())
    assert abs(p["ratio"] - 0.15) < 0.005
    assert abs(p["mask"] - 0.8) < 0.015
    assert abs(p["random"] - 0.1) < 0.01
    assert abs(p["same"] - 0.1) < 0.01


def test_mlm_ratio_configurable() -> None:
    assert abs(proportions(MLMConfig(ratio=0.4), n_batches=1)["ratio"] - 0.4) < 0.005


def test_electra_generator_masking_85_15() -> None:
    p = proportions(ELECTRA_MASKING, n_batches=2)
    assert abs(p["mask"] - 0.85) < 0.015 and p["random"] == 0.0 and abs(p["same"] - 0.15) < 0.015
    tokens, segments = packed_batch(9)
    a = electra_mask(tokens, V, torch.Generator().manual_seed(1), segments=segments)
    b = mlm_mask(tokens, V, torch.Generator().manual_seed(1), ELECTRA_MASKING, segments)
    assert torch.equal(a.inputs, b.inputs)


def test_mlm_deterministic_and_per_segment() -> None:
    tokens, segments = packed_batch(3)
    a = mlm_mask(tokens, V, torch.Generator().manual_seed(5), segments=segments, per_segment=True)
    b = mlm_mask(tokens, V, torch.Generator().manual_seed(5), segments=segments, per_segment=True)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    eligible = (tokens >= NUM_SPECIAL) & (segments >= 0)
    for s in (0, 1):
        in_seg = eligible & (segments == s)
        want = torch.round(in_seg.sum(1).double() * 0.15).long()
        assert torch.equal((a.selected & in_seg).sum(1), want)


@settings(max_examples=50, deadline=None)
@given(B=st.integers(1, 4), L=st.integers(1, 40), ratio=st.floats(0.05, 0.95), seed=st.integers(0, 10_000))
def test_mlm_invariants(B: int, L: int, ratio: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 200, (B, L), generator=g)  # specials included
    ex = mlm_mask(tokens, 200, g, MLMConfig(ratio=ratio))
    eligible = tokens >= NUM_SPECIAL
    assert not (ex.selected & ~eligible).any()
    assert torch.equal(ex.selected.sum(1), torch.round(eligible.sum(1).double() * ratio).long())
    assert torch.equal(ex.targets != IGNORE, ex.selected)
    assert torch.equal(ex.inputs[~eligible], tokens[~eligible])
