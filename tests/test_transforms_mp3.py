"""MP3: context fraction 1 - eta, position targets, key mask (queries all tokens, keys only context)."""

from __future__ import annotations

import numpy as np
import torch

from kiln.data.loader import Batch
from kiln.objectives.transforms import IGNORE, MP3Config, mp3_batch, mp3_context


def test_context_fraction_per_document() -> None:
    rng = np.random.default_rng(0)
    fracs = [mp3_context(n, rng).mean() for n in range(4, 400)]
    assert abs(float(np.mean(fracs)) - 0.25) < 0.01
    assert mp3_context(1, rng).tolist() == [True]  # never an empty context
    assert mp3_context(100, rng, MP3Config(eta=0.5)).sum() == 50


def packed(attention: str) -> Batch:
    segments = torch.tensor([[0] * 40 + [1] * 50 + [-1] * 10, [0] * 97 + [1] * 3])
    positions = torch.zeros_like(segments)
    for b in range(2):
        for s in (0, 1):
            sel = segments[b] == s
            positions[b, sel] = torch.arange(int(sel.sum()))
    if attention == "causal":
        positions = torch.arange(100).expand(2, 100).clone()
    tokens = torch.randint(200, 300, (2, 100))
    return Batch(tokens, segments, positions, attention, int((segments >= 0).sum()))


def test_batch_key_mask_semantics() -> None:
    batch = packed("document")
    ex = mp3_batch(batch, torch.Generator().manual_seed(0))
    assert ex.attention.shape == (2, 100, 100)
    for b in range(2):
        for s in (0, 1):
            in_seg = batch.segments[b] == s
            assert int((ex.is_context[b] & in_seg).sum()) == max(1, round(0.25 * int(in_seg.sum())))
    assert not ex.is_context[batch.segments < 0].any()
    real = batch.segments >= 0
    same = batch.segments[:, :, None] == batch.segments[:, None, :]
    want = ex.is_context[:, None, :] & same
    assert torch.equal(ex.attention[real], want[real])  # every real query: context keys of its document
    assert torch.equal(ex.attention[~real], torch.eye(100, dtype=torch.bool)[None].expand(2, -1, -1)[~real])
    assert torch.equal(ex.targets, torch.where(real, batch.positions, torch.full_like(batch.positions, IGNORE)))
    assert ex.attention.any(-1).all()  # no query row is empty


def test_causal_rows_are_one_stream() -> None:
    batch = packed("causal")
    ex = mp3_batch(batch, torch.Generator().manual_seed(1), MP3Config(eta=0.75))
    real = batch.segments >= 0
    assert torch.equal(ex.is_context.sum(1), torch.round(real.sum(1) * 0.25).long())
    assert torch.equal(ex.attention[0, 0], ex.is_context[0])  # keys across documents of the row
