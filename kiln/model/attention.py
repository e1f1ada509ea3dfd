"""Self-attention: RoPE, grouped-query attention, and per-head masking, over a pluggable kernel.

Who may see whom is one :class:`~kiln.model.mask.AttentionMask` per forward pass (``mask.py``: causal,
bidirectional, prefix-LM or explicit, inside packed documents), built once by the backbone for the chosen
backend; the kernel is a registered backend (``backends.py``: sdpa, flex, eager). A layer can return its
attention probabilities (eager) and can mask heads: ``head_mask`` (n_head,) scales each head's output before
the output projection (0 = the head contributes nothing; a float mask gives head-importance gradients,
Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

``head_mask_mode`` says what a masked head is replaced with:

- ``zero`` (default): its output is scaled by the mask, ``y_h <- m_h * y_h``;
- ``uniform``: its attention weights are made uniform over the positions the query may see (1/(t+1) under a
  plain causal mask, 1/|visible| under document, prefix or explicit masks), i.e. its output becomes the mean
  of the visible values: ``y_h <- m_h * y_h + (1 - m_h) * mean_visible(v)`` (AttentionInfluence, Hua et al.
  2025, arXiv 2505.07293, App. C). The mean is a cumulative sum for plain causal attention and a normalised
  visibility matrix otherwise; it works with every backend, and the eager probabilities are blended the same way.
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

__all__ = ["ATTENTION_MODES", "HEAD_MASK_MODES", "Attention", "AttentionMask", "apply_rope", "attention_mask",
           "prefix_runs", "rope_tables", "uniform_attention", "visibility"]

HEAD_MASK_MODES = ("zero", "uniform")


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


# ----------------------------------------------------------------------------- uniform attention


def _visible(mask: AttentionMask, device: torch.device) -> Tensor | None:
    """A boolean (B or 1, 1, T, K) visibility of ``mask`` (None = every key), also for FlexAttention masks."""
    if mask.block is None:
        return mask.materialize(device)
    allowed, _ = visibility(mask.kind, mask.segments, mask.prefix, mask.q_len, device)  # block masks: no cache
    return allowed


def uniform_attention(v: Tensor, mask: AttentionMask, need_weights: bool = False
                      ) -> tuple[Tensor, Tensor | None]:
    """Uniform attention over the visible keys: the mean visible value (B, Hv, T, hd) in fp32, and with
    ``need_weights`` the weights (B or 1, 1, T, K). v: (B, Hv, K, hd); ``mask`` says what each query sees."""
    vf = v.float()
    K, T = vf.shape[2], mask.q_len
    plain_causal = mask.is_causal and mask.dense is None and mask.block is None
    if plain_causal and not need_weights:  # query i (absolute K - T + i) sees keys 0..K - T + i
        counts = torch.arange(K - T + 1, K + 1, device=v.device, dtype=torch.float32)
        return vf.cumsum(dim=2)[:, :, K - T :] / counts[:, None], None
    allowed = _visible(mask, v.device)
    if allowed is None:  # every key visible
        mean = vf.mean(dim=2, keepdim=True).expand(-1, -1, T, -1)
        weights = torch.full((1, 1, T, K), 1.0 / K, device=v.device) if need_weights else None
        return mean, weights
    weights = allowed.float()
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return torch.matmul(weights, vf), (weights if need_weights else None)


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
        head_mask_mode: str = "zero",
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """x (B, T, d) -> (B, T, d); with ``need_weights`` also the probabilities (B, H, T, K) (eager backend).

        rope: the (cos, sin) angles of these positions, or None (learned / no positions). head_mask: (n_head,)
        per-head mask (1 = keep), or None; head_mask_mode: ``zero`` scales the head's output by it, ``uniform``
        blends the head toward uniform attention over the visible keys (see the module docstring).
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
        if head_mask is not None and head_mask_mode == "zero":  # zero (or scale) each head's contribution
            y = y * head_mask.to(y.dtype).view(1, self.n_head, 1, 1)
        elif head_mask is not None and head_mask_mode == "uniform":  # blend toward uniform attention weights
            m = head_mask.to(device=y.device, dtype=torch.float32).view(1, self.n_head, 1, 1)
            mean, weights = uniform_attention(v, mask, need_weights and probs is not None)
            if self.n_kv_head != self.n_head:  # query head h reads kv head h // (n_head / n_kv_head)
                mean = mean.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            y = (m * y.float() + (1.0 - m) * mean).to(y.dtype)
            if weights is not None:
                probs = m * probs + (1.0 - m) * weights
        elif head_mask is not None:
            raise ValueError(f"head_mask_mode must be one of {HEAD_MASK_MODES}, got {head_mask_mode!r}")
        out = self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return (out, probs) if need_weights else out
