"""Built-in trainer callbacks (``train.callbacks``): extra logging and a fixed weight mask.

- ``param_norm``: logs the global L2 norm of the trained parameters (``param_norm``) in every train row.
- ``magnitude_mask`` (``sparsity``, ``include``, ``mask``, ``seed``, ``dense_from``): at train begin, in every
  2-D parameter whose name contains ``include`` (default: the transformer blocks' matrices), the ``sparsity``
  fraction of smallest-magnitude weights is masked (one-shot layer-wise magnitude pruning, Han et al. 2015;
  ``mask=random`` for a seeded random mask); after backward their gradients are zeroed and after each optimizer
  step they are set to 0 again, so masked weights stay exactly 0 through training (AdamW's weight decay and
  moments cannot revive them). It is SPDF's static mask (kiln/train/sparsity.py, which also has gradual
  pruning): masks in checkpoints, N̄ and sparse FLOPs in the train rows, FSDP2 shards handled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kiln.train.callbacks import TrainerCallback, TrainState
from kiln.train.sparsity import StaticMask

if TYPE_CHECKING:  # torch is imported where used: the recipe validates callback arguments without it
    import torch


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor gathered from every rank (a collective), else the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class ParamNorm(TrainerCallback):
    name = "param_norm"

    def after_optimizer_step(self, state: TrainState) -> None:
        sq = sum(float(_full(p.detach()).float().pow(2).sum()) for p in state.model.parameters() if p.requires_grad)
        state.metrics["param_norm"] = math.sqrt(sq)


class MagnitudeMask(StaticMask):
    """SPDF's static mask, magnitude criterion by default (kiln/train/sparsity.py: ``spdf`` is the same with
    ``mask=random`` by default)."""

    name = "magnitude_mask"

    def __init__(self, sparsity: float, include: str = "backbone.blocks", mask: str = "magnitude", seed: int = 0,
                 dense_from: int | None = None) -> None:
        super().__init__(sparsity, include, mask, seed, dense_from)
