"""ELECTRA discriminator inputs: Gumbel sampling matches softmax; labels are 1 exactly where the token changed."""

from __future__ import annotations

import torch

from kiln.objectives.transforms import NUM_SPECIAL, electra_mask, sample_replacements
from kiln.objectives.transforms.electra import gumbel_sample

V = 300


def test_gumbel_sampling_matches_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    samples = gumbel_sample(logits.expand(40_000, 4), g)
    freq = torch.bincount(samples, minlength=4).double() / 40_000
    assert torch.allclose(freq, torch.softmax(logits.double(), 0), atol=0.01)
    hot = gumbel_sample(logits.expand(1000, 4) * 0.5, g, temperature=0.01)  # T -> 0 is argmax
    assert (hot == 0).all()


def test_labels_one_exactly_where_sample_differs() -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(NUM_SPECIAL, V, (8, 64), generator=g)
    segments = torch.zeros_like(tokens)
    segments[:, 60:] = -1
    m = electra_mask(tokens, V, g, segments=segments)
    # a generator that puts almost all mass on the original token at half the rows, uniform elsewhere
    logits = torch.zeros(8, 64, V)
    confident = torch.arange(8)[:, None].expand(8, 64) < 4
    logits[confident] = torch.nn.functional.one_hot(tokens[confident], V).float() * 30.0
    logits.requires_grad_(True)
    ex = sample_replacements(tokens, m.selected, logits, g, segments=segments)
    assert not ex.inputs.requires_grad
    assert torch.equal(ex.inputs[~m.selected], tokens[~m.selected])
    assert torch.equal(ex.labels.bool(), (ex.inputs != tokens) & (segments >= 0))
    assert not ex.labels[:4].any()  # sampled the original: counted as original, never "replaced"
    assert ex.labels[4:].sum() > 0.9 * m.selected[4:].sum()  # uniform samples almost always differ
    assert torch.equal(ex.loss_mask, segments >= 0)
    # (n_selected, V) logits give the same samples as the (B, L, V) form
    flat = sample_replacements(tokens, m.selected, logits[m.selected], torch.Generator().manual_seed(7))
    full = sample_replacements(tokens, m.selected, logits, torch.Generator().manual_seed(7))
    assert torch.equal(flat.inputs, full.inputs)
