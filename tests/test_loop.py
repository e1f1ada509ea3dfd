"""kiln/train/loop.py: the one small loop that probe fine-tuning and the MiniLM MLM continuation run through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kiln.train.loop import LoopConfig, lr_factor, run_loop


def regression(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(4, 1), x, y


def test_accumulation_equals_the_full_batch():
    full, x, y = regression()
    run_loop(full.parameters(), lambda s, m: ((full(x) - y) ** 2).mean(), LoopConfig(5), lr=0.1)
    acc, x, y = regression()
    run_loop(acc.parameters(), lambda s, m: ((acc(x[m * 4 : m * 4 + 4]) - y[m * 4 : m * 4 + 4]) ** 2).mean(),
             LoopConfig(5, accumulation=2), lr=0.1)
    for a, b in zip(full.parameters(), acc.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_warmup_groups_and_clipping():
    assert [lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0
    model, x, y = regression()
    frozen_bias = model.bias.detach().clone()
    losses = run_loop([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.0}],
                      lambda s, m: ((model(x) - y) ** 2).mean() * 1e6, LoopConfig(3, grad_clip=1e-3))
    assert len(losses) == 3 and torch.equal(model.bias.detach(), frozen_bias)  # a group's own lr (0 here)
    with pytest.raises(ValueError, match="give lr"):
        run_loop(model.parameters(), lambda s, m: model(x).sum(), LoopConfig(1))
