"""Chunked soft-label distillation: the KD term without full (positions x vocabulary) logits.

Under ``train.loss_chunk_tokens`` the student's cross-entropy runs a slice of tokens at a time
(:mod:`kiln.objectives.losses`). The KD term ``KL(softmax(z_t / T) || softmax(z_s / T))`` needs both models'
logits at every distilled position, so it would bring the full logits back twice (student and teacher). Here
both are formed one chunk of positions at a time from the two final hidden states and the two LM-head weights,
and the gradients with respect to the student's hidden states and head weight are taken inside the forward pass,
as in ``losses._ChunkedLinearCE``:

    d KL / d z_s = (softmax(z_s / T) - softmax(z_t / T)) / T.

Optionally the student's cross-entropy on the same positions comes out too (SALT_DS gives the rows it distils
``(1 - w)`` of their CE, so it subtracts ``w`` times this from the full CE). The teacher side has no gradient.

Reference for the loss: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
arXiv:1503.02531; for the chunking: Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kiln.objectives.losses import IGNORE


def kd_kl_sum(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Sum over rows of KL(softmax(teacher / T) || softmax(student / T)), each row a (V,) logit vector."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum")


class _ChunkedLinearKD(torch.autograd.Function):
    """[KL sum, CE sum] over N positions from (N, d) student / (N, d_t) teacher hidden states and head weights."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor,  # type: ignore[override]
                targets: Tensor | None, temperature: float, chunk_tokens: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_ce = targets is not None
        grads = {}  # (term, input) -> accumulated gradient
        for term in ("kl", "ce") if with_ce else ("kl",):
            if need_h:
                grads[term, "h"] = torch.zeros_like(hidden)
            if need_w:
                grads[term, "w"] = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        kl_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ce_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start : start + chunk_tokens]
            logits = (h @ weight.t()).float()  # (n, V): the student's chunk
            log_t = torch.log_softmax((t_hidden[start : start + chunk_tokens] @ t_weight.t()).float() / temperature, -1)
            log_s = torch.log_softmax(logits / temperature, dim=-1)
            kl_total += F.kl_div(log_s, log_t, log_target=True, reduction="sum")
            chunk_grads = {"kl": (log_s.exp() - log_t.exp()) / temperature}
            if with_ce:
                t = targets[start : start + chunk_tokens]
                valid = t != IGNORE
                safe = torch.where(valid, t, torch.zeros_like(t))
                log_p = torch.log_softmax(logits, dim=-1)
                ce_total -= (log_p.gather(1, safe[:, None])[:, 0] * valid).sum()
                g = log_p.exp()
                g.scatter_add_(1, safe[:, None], -torch.ones_like(g[:, :1]))
                chunk_grads["ce"] = g * valid[:, None]
            for term, g in chunk_grads.items():
                g = g.to(hidden.dtype)
                if need_h:
                    grads[term, "h"][start : start + chunk_tokens] = g @ weight
                if need_w:
                    grads[term, "w"] += (g.t() @ h).float()
        ctx.keys = sorted(grads)
        ctx.save_for_backward(*(grads[k].to(weight.dtype) if k[1] == "w" else grads[k] for k in ctx.keys))
        return torch.stack([kl_total, ce_total])

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        saved = dict(zip(ctx.keys, ctx.saved_tensors, strict=True))
        scale = {"kl": grad_out[0], "ce": grad_out[1]}
        out = []
        for part in ("h", "w"):
            terms = [saved[term, part] * scale[term].to(saved[term, part].dtype)
                     for term in ("kl", "ce") if (term, part) in saved]
            out.append(sum(terms[1:], terms[0]) if terms else None)
        return out[0], out[1], None, None, None, None, None


def chunked_kd(hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, temperature: float,
               chunk_tokens: int, targets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(KL sum, CE sum) at N positions: ``hidden`` (N, d) and ``weight`` (V, d) the student's final hidden states
    and LM-head weight, ``t_hidden`` (N, d_t) / ``t_weight`` (V, d_t) the teacher's (no gradient); the CE sum
    against ``targets`` (N,) when given, else 0. Equal to :func:`kd_kl_sum` and ``F.cross_entropy(...,
    reduction="sum")`` on the full logits, and their gradients, with one chunk of logits alive at a time."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # the matmuls in the autocast dtype, the softmaxes in fp32
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    t_hidden = t_hidden.detach().to(t_weight.dtype)
    with torch.autocast(device_type, enabled=False):
        both = _ChunkedLinearKD.apply(hidden, weight, t_hidden, t_weight.detach(), targets, float(temperature),
                                      int(chunk_tokens))
    return both[0], both[1]
