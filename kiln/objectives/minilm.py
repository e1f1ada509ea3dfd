"""MiniLM deep self-attention distillation (``minilm``): the student's last-layer attention distributions and
value relations follow the teacher's.

Wang, Wei, Dong, Bao, Yang, Zhou, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers", 2020, arXiv:2002.10957 (v1: last layer only).

Per head of the last layer, ``A = softmax(Q K^T / sqrt(d_k))`` (the attention map) and ``VR = softmax(V V^T /
sqrt(d_k))`` (the value relation, under the same visibility mask as the attention: causal / document / padding);
the loss is ``KL(A_t || A_s) + KL(VR_t || VR_s)`` per query token, averaged over heads and summed over the
micro-batch's real tokens (the trainer divides by their count). Teacher and student widths may differ (the
relations are T x T whatever the head size); their head counts must match. ``ce_weight > 0`` adds that weight x
the causal-LM loss (the student then also trains its LM head; with 0 it is a task-agnostic attention-only
distillation and validation reports this objective's own loss).

Teacher assistant (the paper's option for a large size gap): first distil the teacher into an assistant with the
teacher's depth and the student's width (:func:`assistant_config`), then use the assistant as the student's teacher:
two ordinary runs, ``model.n_layer=<teacher layers> train.objective=minilm train.teacher=TEACHER --run-dir ta``,
then ``train.teacher=ta`` for the student.

Attention maps come from the backbone's ``output_attentions`` (the eager backend for that call); the values from
a forward hook on the last block's value projection (``attn.wv``), outside the model file. Not for
``parallel.compile`` (a compiled block hides the hook).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.model.targets import next_token_targets
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.clm import IGNORE, lm_loss_sum
from kiln.objectives.teacher import attach_teacher

EPS = 1e-30


@contextmanager
def last_values(backbone: nn.Module):
    """Collect the last block's value projection output (B, T, n_kv_head * head_dim) during a forward."""
    attn = backbone.blocks[-1].attn
    seen: list[Tensor] = []
    handle = attn.wv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen, attn
    finally:
        handle.remove()


def visibility(segments: Tensor, attention: str) -> Tensor:
    """(B, 1, T, T) bool: query i may see key j (same segment, key not padding; j <= i when causal)."""
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0)
    if attention == "causal":
        t = segments.shape[1]
        same &= torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    return same[:, None]


def value_relation_logp(values: Tensor, attn: nn.Module, visible: Tensor) -> Tensor:
    """log softmax(V V^T / sqrt(d)) per head (B, H, T, T), masked keys at -inf (GQA values repeated per head)."""
    b, t, _ = values.shape
    v = values.view(b, t, attn.n_kv_head, attn.head_dim).transpose(1, 2).float()
    if attn.n_head != attn.n_kv_head:
        v = v.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)
    scores = (v @ v.transpose(-1, -2)) / math.sqrt(attn.head_dim)
    return F.log_softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)


def relation_kl(log_t: Tensor, log_s: Tensor, visible: Tensor, queries: Tensor) -> Tensor:
    """Sum over real query tokens of KL(teacher row || student row), averaged over heads."""
    kl = torch.where(visible, log_t.exp() * (log_t - log_s), torch.zeros((), device=log_t.device)).sum(-1)
    return kl.mean(1)[queries].sum()


def assistant_config(teacher: TransformerConfig, student: TransformerConfig) -> TransformerConfig:
    """MiniLM's teacher assistant: the teacher's depth at the student's width (width, heads, MLP), no extra heads."""
    if teacher.n_head != student.n_head:
        raise ValueError(f"minilm needs equal head counts: the teacher has {teacher.n_head} heads, the student "
                         f"{student.n_head}")
    return dataclasses.replace(teacher, d_model=student.d_model, n_head=student.n_head, n_kv_head=student.n_kv_head,
                               ffn_hidden=student.ffn_hidden, heads={}, masked_heads=[], moe=None)


class MiniLM(Objective):
    name = "minilm"

    def __init__(self, teacher: str | None = None, ce_weight: float = 0.0, attention: str = "causal") -> None:
        if teacher is None:
            raise ValueError("objective 'minilm' needs a teacher: set train.teacher")
        if ce_weight < 0:
            raise ValueError(f"objective 'minilm': ce_weight must be >= 0, got {ce_weight}")
        if attention not in ("causal", "bidirectional"):
            raise ValueError(f"objective 'minilm': attention must be causal or bidirectional, got {attention!r}")
        self.teacher_path, self.ce_weight, self.attention = teacher, float(ce_weight), attention
        self.lm_eval = self.ce_weight > 0 and attention == "causal"
        # without CE the last block's output projection and MLP, the final norm and an untied LM head get no
        # gradient: DDP must look for unused parameters
        self.uses_every_head = self.ce_weight > 0

    def attach(self, device: torch.device) -> None:
        def kiln_teacher(teacher: nn.Module) -> None:
            if not hasattr(teacher, "backbone"):
                raise ValueError(f"train.teacher {self.teacher_path}: minilm needs a kiln teacher (attention maps)")

        attach_teacher(self, device, kiln_teacher)
        super().attach(device)

    def prepare(self, batch: Batch) -> Prepared:
        tensors = {"tokens": batch.tokens, "positions": batch.positions, "ml_segments": batch.segments,
                   "targets": next_token_targets(batch)}
        if batch.attention == "document":
            tensors["segments"] = batch.segments
        return Prepared(tensors=tensors, n_targets=int((batch.segments >= 0).sum()))

    def _relations(self, backbone: nn.Module, t: dict[str, Tensor], visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with last_values(backbone) as (seen, attn):
            out = backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"), attention=self.attention,
                           output_attentions=True)
        log_a = out.attentions[-1].float().clamp_min(EPS).log()
        return out.hidden, log_a, value_relation_logp(seen[-1], attn, visible)

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        teacher = self.frozen_modules()["teacher"]
        seg = t["ml_segments"]
        # document attention: the model's own segments; else one stream per row, only padding (-1) hidden
        visible = visibility(seg if "segments" in t else torch.where(seg >= 0, 0, -1), self.attention)
        queries = seg >= 0
        hidden, att_s, vr_s = self._relations(model.backbone, t, visible)
        with torch.no_grad():
            _, att_t, vr_t = self._relations(teacher.backbone, t, visible)
        if att_s.shape[1] != att_t.shape[1]:
            raise ValueError(f"train.teacher {self.teacher_path}: minilm needs equal head counts: the teacher has "
                             f"{att_t.shape[1]} heads, the student {att_s.shape[1]}")
        att_kl = relation_kl(att_t, att_s, visible, queries)
        vr_kl = relation_kl(vr_t, vr_s, visible, queries)
        loss = att_kl + vr_kl
        metrics = {"minilm_att_kl_sum": att_kl.detach(), "minilm_vr_kl_sum": vr_kl.detach()}
        if self.ce_weight > 0:
            ce = lm_loss_sum(model, hidden, t["targets"], self.loss_chunk_tokens, self.compile_loss)
            n_ce = int((t["targets"] != IGNORE).sum())
            ce = ce * (prepared.n_targets / max(n_ce, 1))  # per target CE, counted per token like the KL terms
            loss = loss + self.ce_weight * ce
            metrics["minilm_ce_sum"] = ce.detach()
        return loss, metrics
