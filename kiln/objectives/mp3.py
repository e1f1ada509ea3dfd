"""MP3: masked position prediction (Zhai et al. 2022, "Position Prediction as an Effective Pretraining Strategy").

The model has no positions (``model.positions: none``). A random 25% (``1 - eta``) of each packed segment is
the context: in every layer all tokens are queries but keys and values are the context tokens only (an
explicit (B, T, T) mask from ``transforms.mp3``). The ``position`` head classifies each real token's position
in its segment (its row under causal attention); the loss is the summed cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.transforms.common import IGNORE
from kiln.objectives.transforms.mp3 import MP3Config, mp3_batch


class MP3(Objective):
    name = "mp3"
    lm_eval = False

    def __init__(self, eta: float = 0.75) -> None:
        self.config = MP3Config(eta)

    @property
    def heads(self) -> dict[str, dict]:
        return {"position": {}}

    def prepare(self, batch: Batch) -> Prepared:
        gen, _ = self.next_generators()
        mb = mp3_batch(batch.to("cpu"), gen, self.config)
        device = batch.tokens.device
        tensors = {"tokens": batch.tokens, "targets": mb.targets.to(device), "mask": mb.attention.to(device)}
        return Prepared(tensors, n_targets=int((mb.targets != IGNORE).sum()))

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if model.config.positions != "none":
            raise ValueError("mp3 needs a model without positions: set model.positions=none")
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], mask=t["mask"])
        valid = t["targets"] != IGNORE
        logits = model.heads["position"](hidden[valid]).float()
        loss_sum = F.cross_entropy(logits, t["targets"][valid], reduction="sum")
        with torch.no_grad():
            correct = (logits.argmax(-1) == t["targets"][valid]).sum()
        return loss_sum, {"position_correct": correct}
