"""An objective's own validation loss: its ``prepare`` + ``loss`` on validation rows, without gradients.

Bits per byte (``lm.py``) judges a causal LM; an encoder's LM head was never trained, so comparing objectives
needs each one's own loss on held-out rows too (MLM cross-entropy on masked tokens, ELECTRA's MLM +
50 x BCE per token, UL2's loss on targets). Masks are drawn as at the last training step
(``begin_step(total_steps - 1)``: the MLM phase of CLM -> MLM), seeded, so every checkpoint sees the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective
from kiln.train.domain_routing import attach_expert_ids, prepared_routing


@torch.no_grad()
def objective_val_loss(model: nn.Module, objective: Objective, batches: Iterable[Batch],
                       device: torch.device) -> dict[str, float]:
    """{"loss": summed loss / targets, "n_targets", and every summed metric divided by the targets}."""
    was_training = model.training
    model.eval()
    objective.begin_step(objective.total_steps - 1)
    total, n = 0.0, 0
    sums: dict[str, float] = {}
    for batch in batches:
        p = attach_expert_ids(objective.prepare(batch), batch).to(device)
        with prepared_routing(model, p):
            loss_sum, metrics = objective.loss(model, p)
        total += float(loss_sum)
        n += p.n_targets
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    if n == 0:
        raise ValueError("objective validation saw no targets")
    return {"loss": total / n, "n_targets": n, **{k.removesuffix("_sum") + "_per_target": v / n
                                                   for k, v in sums.items()}}
