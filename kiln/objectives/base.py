"""The Objective interface: the trainer's only view of what is being learned.

An objective turns a packed token batch into model inputs and targets (``prepare``,
cheap, done for all micro-batches of a step first so the loss can be normalised by
the step's true target count), and turns model outputs into a summed loss and named
metrics (``loss``). The trainer knows nothing of any particular objective.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from kiln.data.loader import Batch


@dataclass
class Prepared:
    """Model-ready tensors for one micro-batch and the number of loss targets in it."""

    tensors: dict[str, torch.Tensor]
    n_targets: int
    extra: dict = field(default_factory=dict)


class Objective(ABC):
    name: str = "objective"
    # Tokens per chunk for objectives whose loss is a softmax over the vocabulary: the head matmul and
    # the loss then run chunk by chunk (kiln/objectives/losses.py); None = full logits. Set by the trainer
    # from ``train.loss_chunk_tokens``.
    loss_chunk_tokens: int | None = None

    @abstractmethod
    def prepare(self, batch: Batch) -> Prepared:
        """Build inputs and targets from a packed batch (on the batch's device)."""

    @abstractmethod
    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (sum of per-target losses, metrics). The trainer divides by the step's target count."""
