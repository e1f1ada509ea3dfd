"""A tiny knowledge-distillation objective for tests: causal LM + KL to a frozen teacher's next-token distribution.

The teacher is loaded in :meth:`attach` through ``Objective.load_frozen`` (kiln.model.load), so it lives on
the training device, outside the trained model, the optimizer, DDP/FSDP2 and the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.objectives.base import Prepared
from kiln.objectives.clm import IGNORE, CausalLM


class DistillFromTeacher(CausalLM):
    name = "kd_test"

    def __init__(self, teacher: str, alpha: float = 0.5) -> None:
        self.teacher_path, self.alpha = teacher, alpha

    def attach(self, device: torch.device) -> None:
        if "teacher" not in self.frozen_modules():
            self.load_frozen("teacher", self.teacher_path, device)
        super().attach(device)

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"), attention="causal")
        logits = model.lm_head(hidden).float()
        valid = t["targets"] != IGNORE
        ce = F.cross_entropy(logits[valid], t["targets"][valid], reduction="sum")
        teacher = self.frozen_modules()["teacher"]
        with torch.no_grad():
            t_hidden = teacher.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"),
                                        attention="causal")
            t_logp = F.log_softmax(teacher.lm_head(t_hidden).float()[valid], -1)
        kl = F.kl_div(F.log_softmax(logits[valid], -1), t_logp, log_target=True, reduction="sum")
        return (1 - self.alpha) * ce + self.alpha * kl, {"kd_kl_sum": kl.detach()}
