"""Chunked cross-entropy: the LM-head matmul and the loss, a slice of tokens at a time.

With a large vocabulary the (tokens x vocab) logits dominate activation memory: at 16 x 1024 tokens
and vocab 50304 they are 3.3 GB in fp32, plus as much again for their gradient. Here the tokens are
cut into chunks of ``chunk_tokens``; for each chunk the logits are formed, the summed loss taken, and
the gradient with respect to the chunk's hidden states and to the head weight computed at once
(``softmax - onehot``), all inside the forward pass, so no logits outlive their chunk. Backward only
scales the stored gradients by the incoming scalar. This is the scheme of Liger Kernel's fused linear
cross-entropy (Hsu et al. 2024) and of Wijmans et al. 2024 ("Cut Your Losses in Large-Vocabulary
Language Models"), written in plain PyTorch.

The extra memory is one chunk of logits plus an fp32 gradient for the hidden states and the head
weight. Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as in the plain
path (``F.linear`` under autocast, then ``.float()``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


class _ChunkedLinearCE(torch.autograd.Function):
    """sum over valid targets of CE(hidden @ weight.T, target); gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:  # type: ignore[override]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
            logits = (h @ weight.t()).float()  # (n, V), the only vocabulary-sized tensor alive
            valid = t != IGNORE
            safe = torch.where(valid, t, torch.zeros_like(t))
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
            if need_h or need_w:
                grad = torch.softmax(logits, dim=-1)  # d(sum CE)/d(logits) = softmax - onehot, 0 on ignored rows
                grad.scatter_add_(1, safe[:, None], -torch.ones_like(grad[:, :1]))
                grad *= valid[:, None]
                grad = grad.to(hidden.dtype)
                if need_h:
                    grad_h[start : start + chunk_tokens] = grad @ weight
                if need_w:
                    grad_w += (grad.t() @ h).float()
        ctx.save_for_backward(
            grad_h if need_h else torch.empty(0), grad_w.to(weight.dtype) if need_w else torch.empty(0)
        )
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = grad_w * grad_out.to(grad_w.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:
    """Summed next-token cross-entropy of ``hidden @ weight.T`` against ``targets`` (IGNORE skipped).

    hidden: (N, d) or (B, T, d); weight: (V, d) (the LM head); targets: matching (N,) or (B, T).
    Equal to ``F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum",
    ignore_index=IGNORE)`` and its gradients, without materialising the full logits.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # match F.linear under autocast: matmul in the autocast dtype
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    with torch.autocast(device_type, enabled=False):
        return _ChunkedLinearCE.apply(hidden, weight, targets, chunk_tokens)


def plain_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """The reference: full logits, fp32 softmax, summed over valid targets."""
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum")


@functools.cache
def compiled_cross_entropy() -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """:func:`plain_cross_entropy` as one ``torch.compile`` graph (compiled once per process, on first use).

    The head matmul, the fp32 cast, log-softmax and the pick of the target are one graph, so inductor can fuse
    the cast, the reductions and the gradient into kernels that read the matmul's logits once, instead of
    writing fp32 copies of the logits and their gradient (nanoGPT gets the same by compiling the model with its
    loss). The values are those of the plain path; the speed-up is measured in docs/benchmarks.md.
    """
    return torch.compile(plain_cross_entropy)
