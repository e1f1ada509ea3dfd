"""The decoder backbone, readable top to bottom.

tokens -> embedding -> n_layer x Block -> RMSNorm -> hidden states (B, T, d_model)

    Block(x) = x + Attention(RMSNorm(x)),  then  x + SwiGLU(RMSNorm(x))      (pre-norm)

- RMSNorm (Zhang & Sennrich 2019): scale by the root mean square, no mean, no bias.
- RoPE (Su et al. 2021): queries and keys are rotated by an angle proportional to their position;
  positions are given per token, so packed documents can restart at 0.
- Grouped-query attention (Ainslie et al. 2023): ``n_kv_head`` key/value heads shared by groups of
  ``n_head / n_kv_head`` query heads; the kernel is ``F.scaled_dot_product_attention``, or
  FlexAttention block masks for packed documents on GPU (``flex.py``, ``attention_backend``).
- SwiGLU MLP (Shazeer 2020): ``down(silu(gate(x)) * up(x))``.

No biases anywhere. The heads (LM head, ...) live in ``heads.py``; parallelism, compile and
activation checkpointing are applied from outside (``kiln/train/parallel.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import TransformerConfig
from kiln.model.flex import document_block_mask, flex_attend, is_block_mask, use_flex

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from kiln.infer.generate import KVCache


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight  (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


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


# ----------------------------------------------------------------------------- attention mask


def attention_mask(segments: Tensor | None, q_len: int, k_len: int, device: torch.device) -> tuple[Tensor | None, bool]:
    """The (attn_mask, is_causal) pair for SDPA.

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


# ----------------------------------------------------------------------------- layers


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
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | BlockMask | None,
        is_causal: bool,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
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


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate(x)) * up(x))  (Shazeer 2020)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """One pre-norm layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | BlockMask | None,
        is_causal: bool,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, is_causal, kv_cache)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- backbone


class Transformer(nn.Module):
    """Token embedding, ``n_layer`` pre-norm blocks, final RMSNorm; returns hidden states (B, T, d_model)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived from the config: not checkpointed
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for embeddings and linears; the residual output projections (attention out,
        MLP down) get std / sqrt(2 * n_layer) so the residual stream's variance does not grow with
        depth (GPT-2, Radford et al. 2019). Norm gains start at 1. Also rebuilds the RoPE tables, so a
        model created on the meta device can be materialised with ``to_empty`` + ``init_weights``."""
        cfg = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.wo.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.w_down.weight, mean=0.0, std=residual_std)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        segments: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """tokens (B, T) -> hidden states (B, T, d_model).

        positions: per-token RoPE positions (B, T); None -> 0..T-1, offset by the cache length.
        segments: per-token document ids (B, T), -1 = padding; attention stays inside a segment.
        kv_cache: when given, keys/values are appended to it and attention sees everything cached.
        """
        B, T = tokens.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        if positions is None:  # contiguous positions: a slice of the tables, shared by the batch
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
            cos, sin = cos[None, None], sin[None, None]  # (1, 1, T, hd/2)
        else:  # gather per token: (B, 1, T, hd/2)
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        if segments is not None and kv_cache is None and use_flex(self.config.attention_backend, tokens.device):
            mask, is_causal = document_block_mask(segments), False
        else:
            mask, is_causal = attention_mask(segments, T, start + T, tokens.device)

        x = self.tok_emb(tokens)
        for block in self.blocks:
            x = block(x, cos, sin, mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm(x)
