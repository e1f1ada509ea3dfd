"""Self-attention: RoPE, grouped-query attention, and per-head masking, over a pluggable kernel.

Who may see whom is one :class:`~kiln.model.mask.AttentionMask` per forward pass (``mask.py``: causal,
bidirectional, prefix-LM or explicit, inside packed documents), built once by the backbone for the chosen
backend; the kernel is a registered backend (``backends.py``: sdpa, flex, eager). A layer can return its
attention probabilities (eager) and can mask heads: ``head_mask`` (n_head,) scales each head's output before
the output projection (0 = the head contributes nothing; a float mask gives head-importance gradients,
Michel et al. 2019, "Are Sixteen Heads Really Better than One?").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kiln.model.backends import get_backend
from kiln.model.config import TransformerConfig
from kiln.model.mask import ATTENTION_MODES, AttentionMask, attention_mask, prefix_runs, visibility

if TYPE_CHECKING:
    from kiln.model.cache import KVCache

__all__ = ["ATTENTION_MODES", "Attention", "AttentionMask", "apply_rope", "attention_mask", "prefix_runs",
           "rope_tables", "visibility"]


# ----------------------------------------------------------------------------- rotary embedding


def rope_tables(head_dim: int, max_seq_len: int, base: float, linear_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (max_seq_len, head_dim / 2), in fp32 (Su et al. 2021).

    Pair i of a head rotates with frequency base^(-2i / head_dim); position p turns it by p * freq
    (by p / ``linear_factor`` * freq under position interpolation, ``TransformerConfig.rope_linear_factor``).
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if linear_factor != 1.0:
        inv_freq = inv_freq / linear_factor
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, head_dim) by cos/sin (B or 1, 1, T, head_dim / 2).

    The two halves of the head dimension form the rotated pairs (the "rotate half" layout that
    Llama/NeoX checkpoints use, so weights map one to one on export).
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ----------------------------------------------------------------------------- the layer


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and grouped-query key/value heads (Ainslie et al. 2023)."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, self.n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        head_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """x (B, T, d) -> (B, T, d); with ``need_weights`` also the probabilities (B, H, T, K) (eager backend).

        rope: the (cos, sin) angles of these positions, or None (learned / no positions). head_mask: (n_head,)
        per-head output scale, or None.
        """
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # all keys/values so far: (B, Hkv, L + T, hd)
        y, probs = get_backend(mask.backend).attend(q, k, v, mask, need_weights)  # (B, H, T, hd)
        if head_mask is not None:  # zero (or scale) each head's contribution before the output projection
            y = y * head_mask.to(y.dtype).view(1, self.n_head, 1, 1)
        out = self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return (out, probs) if need_weights else out
