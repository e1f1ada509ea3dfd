"""Chunked soft-label distillation: the KD term without full (positions x vocabulary) logits.

Under ``train.loss_chunk_tokens`` the student's cross-entropy runs a slice of tokens at a time
(:mod:`kiln.objectives.losses`). The KD term ``KL(softmax(z_t / T) || softmax(z_s / T))`` needs both models'
logits at every distilled position, so it would bring the full logits back twice (student and teacher). Here
both are formed one chunk of positions at a time from the two final hidden states and the two LM-head weights,
and the gradients with respect to the student's hidden states and head weight are taken inside the forward pass,
as in ``losses._ChunkedLinearCE``:

    d KL / d z_s = (softmax(z_s / T) - softmax(z_t / T)) / T.

The teacher side has no gradient. (SALT_DS's CE on its chosen rows is the chunked CE of ``losses``.)

Reference for the loss: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
arXiv:1503.02531; for the chunking: Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_kl_sum(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Sum over rows of KL(softmax(teacher / T) || softmax(student / T)), each row a (V,) logit vector."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum")


class _ChunkedLinearKD(torch.autograd.Function):
    """KL sum over N positions from (N, d) student / (N, d_t) teacher hidden states and head weights."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor,  # type: ignore[override]
                temperature: float, chunk_tokens: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start : start + chunk_tokens]
            log_s = torch.log_softmax((h @ weight.t()).float() / temperature, dim=-1)  # (n, V): the student's chunk
            log_t = torch.log_softmax((t_hidden[start : start + chunk_tokens] @ t_weight.t()).float() / temperature, -1)
            total += F.kl_div(log_s, log_t, log_target=True, reduction="sum")
            grad = ((log_s.exp() - log_t.exp()) / temperature).to(hidden.dtype)
            if need_h:
                grad_h[start : start + chunk_tokens] = grad @ weight
            if need_w:
                grad_w += (grad.t() @ h).float()
        ctx.save_for_backward(
            grad_h if need_h else torch.empty(0), grad_w.to(weight.dtype) if need_w else torch.empty(0)
        )
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = grad_w * grad_out.to(grad_w.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


def chunked_kd(hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, temperature: float,
               chunk_tokens: int) -> Tensor:
    """KL sum at N positions: ``hidden`` (N, d) and ``weight`` (V, d) the student's final hidden states and LM-head
    weight, ``t_hidden`` (N, d_t) / ``t_weight`` (V, d_t) the teacher's (no gradient). Equal to :func:`kd_kl_sum`
    on the full logits, and its gradients, with one chunk of logits alive at a time."""
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
        return _ChunkedLinearKD.apply(hidden, weight, t_hidden, t_weight.detach(), float(temperature),
                                      int(chunk_tokens))
