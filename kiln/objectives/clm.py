"""Causal language modelling: predict every next token (Radford et al. 2018/2019).

Targets never cross a packed segment boundary when attention is document-masked;
with plain causal attention (``data.attention: causal``) a row is one stream and only
padding is ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.loader import Batch
from kiln.model.targets import IGNORE, next_token_targets  # noqa: F401 - IGNORE re-exported
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.losses import chunked_cross_entropy, compiled_cross_entropy


def lm_loss_sum(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                chunk_tokens: int | None = None, compiled: bool = False) -> torch.Tensor:
    """Summed LM-head cross-entropy over ``targets`` != IGNORE.

    Chunked when training with ``chunk_tokens`` (no full logits); else, with ``compiled``, head and loss as one
    compiled graph (no fp32 logits in memory); else full logits, eagerly.
    """
    if chunk_tokens and torch.is_grad_enabled():
        return chunked_cross_entropy(hidden, model.lm_head.weight, targets, chunk_tokens)
    if compiled:
        return compiled_cross_entropy()(hidden, model.lm_head.weight, targets)
    logits = model.lm_head(hidden)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")


class CausalLM(Objective):
    name = "clm"

    def prepare(self, batch: Batch) -> Prepared:
        targets = next_token_targets(batch)
        tensors = {"tokens": batch.tokens, "positions": batch.positions, "targets": targets}
        if batch.attention == "document":
            tensors["segments"] = batch.segments
        return Prepared(tensors=tensors, n_targets=int((targets != IGNORE).sum()))

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"), attention="causal")
        return lm_loss_sum(model, hidden, t["targets"], self.loss_chunk_tokens, self.compile_loss), {}
