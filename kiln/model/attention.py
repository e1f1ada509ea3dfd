"""Self-attention and its masks: RoPE, grouped-query attention, and who may see whom.

Attention modes (``TransformerConfig.attention``, or per call from an objective):

- ``causal``: query i sees key j iff j <= i (a decoder; Radford et al. 2018);
- ``bidirectional``: every key (an encoder; Devlin et al. 2019);
- ``prefix``: bidirectional inside a prefix, causal after it (prefix-LM; Raffel et al. 2020, sec. 3.2.1,
  Tay et al. 2022). The prefix is given per row as a length (B,) or per token as a boolean (B, T); each
  contiguous run of prefix tokens (inside one segment) is one bidirectional block.

With ``segments`` every mode stays inside its packed document (padding, -1, is a segment of its own, so no
query row is empty). An explicit (B, T, T) boolean ``mask`` (True = may attend) overrides the mode, e.g. for
MP3's context-only keys. Masks run through SDPA, or through FlexAttention block masks for segmented
batches when the backend says so (``flex.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import TransformerConfig
from kiln.model.flex import document_block_mask, flex_attend, is_block_mask, use_flex

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from kiln.infer.generate import KVCache

ATTENTION_MODES = ("causal", "bidirectional", "prefix")


# ----------------------------------------------------------------------------- rotary embedding


def rope_tables(head_dim: int, max_seq_len: int, base: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (max_seq_len, head_dim / 2), in fp32 (Su et al. 2021).

    Pair i of a head rotates with frequency base^(-2i / head_dim); position p turns it by p * freq.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
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


# ----------------------------------------------------------------------------- masks


def attention_mask(segments: Tensor | None, q_len: int, k_len: int, device: torch.device) -> tuple[Tensor | None, bool]:
    """The causal (attn_mask, is_causal) pair for SDPA.

    - no segments, square: plain causal via ``is_causal=True`` (the fast, mask-free path);
    - segments (B, T): block-diagonal causal, query i sees key j iff j <= i and both are in the same
      segment; a boolean mask of shape (B, 1, T, T). Padding (-1) forms its own segment, and every
      query sees itself, so no row is empty;
    - queries after a KV cache (k_len > q_len): query i sits at absolute position k_len - q_len + i
      and sees every key up to it; one decoded token needs no mask at all.
    """
    if segments is not None:
        if q_len != k_len:
            raise ValueError("segments cannot be combined with a non-empty KV cache")
        same = segments[:, :, None] == segments[:, None, :]
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
        return (same & causal).unsqueeze(1), False
    if q_len == k_len:
        return None, True
    if q_len == 1:
        return None, False
    offset = k_len - q_len
    mask = torch.arange(k_len, device=device)[None, :] <= torch.arange(offset, k_len, device=device)[:, None]
    return mask, False


def prefix_runs(prefix: Tensor, T: int, segments: Tensor | None = None) -> Tensor:
    """(B, T) int: the id of the contiguous prefix run each token belongs to, -1 outside any prefix.

    ``prefix`` is a per-row length (B,) or a per-token boolean (B, T); a run also ends at a segment change.
    """
    if prefix.dim() == 1:
        prefix = torch.arange(T, device=prefix.device)[None, :] < prefix[:, None]
    prefix = prefix.bool()
    starts = prefix.clone()
    starts[:, 1:] &= ~prefix[:, :-1] | (segments[:, 1:] != segments[:, :-1] if segments is not None else False)
    runs = torch.cumsum(starts.long(), dim=1)
    return torch.where(prefix, runs, torch.full_like(runs, -1))


def visibility(mode: str, segments: Tensor | None, prefix: Tensor | None, T: int,
               device: torch.device) -> tuple[Tensor | None, bool]:
    """(attn_mask, is_causal) for SDPA under ``mode`` with no KV cache (see the module docstring)."""
    if mode == "causal":
        return attention_mask(segments, T, T, device)
    if mode == "bidirectional":
        if segments is None:
            return None, False
        return (segments[:, :, None] == segments[:, None, :]).unsqueeze(1), False
    if mode != "prefix" or prefix is None:
        raise ValueError(f"attention must be one of {ATTENTION_MODES} (prefix needs `prefix`), got {mode!r}")
    runs = prefix_runs(prefix, T, segments)
    allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None] | (
        (runs[:, :, None] == runs[:, None, :]) & (runs[:, None, :] >= 0))
    if segments is not None:
        allowed &= segments[:, :, None] == segments[:, None, :]
    return allowed.unsqueeze(1), False


def build_mask(mode: str, backend: str, segments: Tensor | None, prefix: Tensor | None, mask: Tensor | None,
               T: int, start: int, device: torch.device,
               cached: bool) -> tuple[Tensor | BlockMask | None, bool]:
    """What every layer's attention gets: (mask, is_causal). ``start`` is the KV-cache length so far.

    An empty prefix is causal, so a prefix-LM evaluates and generates as a decoder when no prefix is given.
    """
    if mask is not None:  # explicit visibility, e.g. MP3: keys are context tokens only
        if cached:
            raise ValueError("an explicit attention mask cannot be combined with a KV cache")
        return mask.unsqueeze(1), False
    if mode == "prefix" and prefix is None:
        mode = "causal"
    if mode != "causal" and cached:
        raise ValueError(f"{mode} attention cannot decode with a KV cache")
    if segments is not None and not cached and use_flex(backend, device):
        runs = prefix_runs(prefix, T, segments) if mode == "prefix" else None
        return document_block_mask(segments, mode=mode, prefix_runs=runs), False
    if mode == "causal":
        return attention_mask(segments, T, start + T, device)
    return visibility(mode, segments, prefix, T, device)


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
        cos: Tensor | None,
        sin: Tensor | None,
        mask: Tensor | BlockMask | None,
        is_causal: bool,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cos is not None and sin is not None:  # RoPE; learned or no positions pass None
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # all keys/values so far: (B, Hkv, L + T, hd)
        if is_block_mask(mask):  # FlexAttention document mask (kiln/model/flex.py): GQA without repeating k/v
            return self.wo(flex_attend(q, k, v, mask).transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        if self.n_kv_head != self.n_head:  # each kv head serves n_head / n_kv_head consecutive query heads
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
