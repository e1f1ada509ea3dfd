"""Built-in trainer callbacks (``train.callbacks``): extra logging and a fixed weight mask.

- ``param_norm``: logs the global L2 norm of the trained parameters (``param_norm``) in every train row.
- ``magnitude_mask`` (``sparsity``, ``include``): at train begin, in every 2-D parameter whose name contains
  ``include`` (default: the transformer blocks' matrices), the ``sparsity`` fraction of smallest-magnitude
  weights is masked (one-shot layer-wise magnitude pruning, Han et al. 2015); after backward their gradients
  are zeroed and after each optimizer step they are set to 0 again, so masked weights stay exactly 0 through
  training (AdamW's weight decay and moments cannot revive them). Logs ``sparsity`` (measured). Works on
  FSDP2 shards: thresholds come from the gathered full matrix, masks are kept per local shard.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kiln.train.callbacks import TrainerCallback, TrainState

if TYPE_CHECKING:  # torch is imported where used: the recipe validates callback arguments without it
    import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor gathered from every rank (a collective), else the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class ParamNorm(TrainerCallback):
    name = "param_norm"

    def after_optimizer_step(self, state: TrainState) -> None:
        sq = sum(float(_full(p.detach()).float().pow(2).sum()) for p in state.model.parameters() if p.requires_grad)
        state.metrics["param_norm"] = math.sqrt(sq)


class MagnitudeMask(TrainerCallback):
    name = "magnitude_mask"

    def __init__(self, sparsity: float, include: str = "backbone.blocks") -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"magnitude_mask: sparsity must be in [0, 1), got {sparsity}")
        self.sparsity, self.include = float(sparsity), include
        self.masks: dict[str, torch.Tensor] = {}  # parameter name -> bool keep-mask of its local shard

    def targets(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if self.include in n and p.dim() == 2 and p.requires_grad}

    def on_train_begin(self, state: TrainState) -> None:
        import torch

        params = self.targets(state.model)
        if not params:
            raise ValueError(f"magnitude_mask: no 2-D parameter name contains {self.include!r}")
        for name, p in params.items():
            full = _full(p.detach()).abs().float()
            k = int(self.sparsity * full.numel())
            threshold = full.flatten().kthvalue(k).values if k > 0 else torch.tensor(-1.0)
            self.masks[name] = _local(p.detach()).abs().float() > threshold
        self._apply(state)

    def after_backward(self, state: TrainState) -> None:
        for name, p in self.targets(state.model).items():
            if p.grad is not None:
                _local(p.grad).mul_(self.masks[name])

    def after_optimizer_step(self, state: TrainState) -> None:
        self._apply(state)

    def _apply(self, state: TrainState) -> None:
        zeros = total = 0
        for name, p in self.targets(state.model).items():
            local = _local(p.detach())
            local.mul_(self.masks[name])
            zeros += int((local == 0).sum())
            total += local.numel()
        state.metrics["sparsity"] = zeros / max(total, 1)
