"""Self-distillation for further pretraining (``self_distill``).

Lee et al., "Self-Distillation for Further Pre-training of Transformers", 2023, arXiv:2209.02871 (ICML 2023).
The recipe, in three runs:

1. further-pretrain the start point theta0 on the target corpus (any objective; the paper's is masked
   auto-encoding): this run becomes the **teacher**;
2. re-initialise the student from theta0 (``train.init_from: <theta0>``), set ``train.teacher: <run of 1>`` and
   train with ``self_distill``: each micro-batch's loss is the base objective's (``base``: ``clm``, or ``mlm``
   for the masked auto-encoding of the paper) plus ``weight`` x the squared L2 distance between the student's
   and the frozen teacher's final hidden states (after the final norm), summed over the hidden dimensions and
   averaged over the tokens of the *unmasked* input (the paper compares the [CLS] vector of an image; a
   language model has one representation per token, so every non-padding token counts);
3. fine-tune the student.

The representation term is returned as (mean per token) x (the micro-batch's target count), so after the trainer
divides by the step's target count it is the per-token mean (weight 1 = the paper's setting) whatever the base
objective's target density. With ``clm`` the base loss and the representation share one student forward; with
``mlm`` the student runs a second, unmasked, bidirectional forward. Teacher and student must have the same width
and vocabulary (both are theta0's architecture); at step 0 of a student initialised from the teacher itself the
term is exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.clm import lm_loss_sum
from kiln.objectives.teacher import attach_teacher, check_width, run_teacher

BASES = {"clm": "causal", "mlm": "bidirectional"}  # base objective -> attention of the representation forward


class SelfDistill(Objective):
    name = "self_distill"

    def __init__(self, teacher: str | None = None, base: str = "clm", weight: float = 1.0,
                 base_args: dict[str, Any] | None = None) -> None:
        from kiln.objectives import build_objective

        if teacher is None:
            raise ValueError("objective 'self_distill' needs a teacher (the further-pretrained copy): "
                             "set train.teacher")
        if base not in BASES:
            raise ValueError(f"objective 'self_distill': base must be one of {', '.join(BASES)}, got {base!r}")
        if weight < 0:
            raise ValueError(f"objective 'self_distill': weight must be >= 0, got {weight}")
        self.teacher_path, self.base_name, self.weight = teacher, base, float(weight)
        self.base = build_objective(base, **(base_args or {}))
        self.lm_eval = self.base.lm_eval

    # ------------------------------------------------------------------ the base objective's life cycle

    @property
    def heads(self) -> dict[str, dict[str, Any]]:
        return self.base.heads

    def heads_used(self, prepared: Prepared) -> set[str]:
        return self.base.heads_used(prepared)

    def configure(self, **kwargs: Any) -> None:
        super().configure(**kwargs)
        self.base.loss_chunk_tokens = self.loss_chunk_tokens
        self.base.configure(**kwargs)

    def set_compile_loss(self, on: bool) -> None:
        super().set_compile_loss(on)
        self.base.set_compile_loss(on)

    def fit(self, docs: Sequence[np.ndarray]) -> None:
        self.base.fit(docs)

    def begin_step(self, step: int, micro_offset: int = 0) -> None:
        super().begin_step(step, micro_offset)
        self.base.begin_step(step, micro_offset)

    def attach(self, device: torch.device) -> None:
        attach_teacher(self, device)
        super().attach(device)

    # ------------------------------------------------------------------ prepare / loss

    def prepare(self, batch: Batch) -> Prepared:
        self.base.micro = self.micro  # the base's draws keyed by the step-wide micro-batch index
        self.micro += 1
        p = self.base.prepare(batch)
        if self.base_name != "clm":  # the representation is taken on the unmasked input
            p.tensors["sd_tokens"] = batch.tokens
            p.tensors["sd_positions"] = batch.positions
            if batch.attention == "document":
                p.tensors["sd_segments"] = batch.segments
        p.tensors["sd_mask"] = batch.segments >= 0  # real (non-padding) tokens
        return p

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        teacher = self.frozen_modules().get("teacher")
        if teacher is None:
            raise RuntimeError("objective 'self_distill': the teacher is loaded by attach(device) before training")
        check_width(self.teacher_path, teacher, int(model.backbone.config.d_model))
        if self.base_name == "clm":
            inputs = {"tokens": t["tokens"], "positions": t["positions"]}
            if "segments" in t:
                inputs["segments"] = t["segments"]
            hidden = model.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"),
                                    attention="causal")
            base = lm_loss_sum(model, hidden, t["targets"], self.loss_chunk_tokens, self.compile_loss)
            metrics: dict[str, torch.Tensor] = {}
        else:
            base, metrics = self.base.loss(model, prepared)
            inputs = {"tokens": t["sd_tokens"], "positions": t["sd_positions"]}
            if "sd_segments" in t:
                inputs["segments"] = t["sd_segments"]
            hidden = model.backbone(inputs["tokens"], positions=inputs["positions"], segments=inputs.get("segments"),
                                    attention=BASES[self.base_name])
        target = run_teacher(teacher, inputs, BASES[self.base_name], logits=False).hidden
        sq = (hidden.float() - target.float()).pow(2).sum(-1)[t["sd_mask"]]
        rep_mean = sq.mean() if sq.numel() else hidden.sum() * 0.0
        rep = rep_mean * prepared.n_targets
        out = {**metrics, "sd_rep_sum": rep.detach(), "sd_base_sum": base.detach()}
        return base + self.weight * rep, out
