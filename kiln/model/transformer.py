"""The decoder backbone, readable top to bottom.

tokens -> embedding -> n_layer x Block -> RMSNorm -> hidden states (B, T, d_model)

    Block(x) = x + Attention(RMSNorm(x)),  then  x + SwiGLU(RMSNorm(x))      (pre-norm, the default)
    Block(x) = RMSNorm(x + Attention(x)),  then  RMSNorm(x + SwiGLU(x))      (post-norm)

- Norm placement (``norm``): ``pre`` (Xiong et al. 2020), ``post`` (Vaswani et al. 2017) or ``mix`` (Mix-LN,
  Li et al. 2024: the first floor(alpha * n_layer) layers post-norm, the rest pre-norm). The final RMSNorm
  is kept in every placement.
- RMSNorm (Zhang & Sennrich 2019): scale by the root mean square, no mean, no bias.
- RoPE (Su et al. 2021): queries and keys are rotated by an angle proportional to their position;
  positions are given per token, so packed documents can restart at 0. ``positions: learned`` adds an
  absolute position embedding to the input instead; ``none`` uses no positions at all (MP3).
- Attention masks (``attention.py``): causal, bidirectional or prefix-LM, inside packed documents.
- Head masking (``masked_heads`` / ``head_mask``): a masked head's output is zeroed, or (``head_mask_mode:
  uniform``) its attention made uniform over the visible keys (``attention.py``).
- Grouped-query attention (Ainslie et al. 2023): ``n_kv_head`` key/value heads shared by groups of
  ``n_head / n_kv_head`` query heads; the kernel is ``F.scaled_dot_product_attention``, or
  FlexAttention block masks for packed documents on GPU (``flex.py``, ``attention_backend``).
- SwiGLU MLP (Shazeer 2020): ``down(silu(gate(x)) * up(x))``; with ``moe``, the MLP of every ``moe.every``-th
  layer is top-k routed SwiGLU experts instead (``moe.py``).

No biases anywhere. The heads (LM head, ...) live in ``heads.py``; parallelism, compile and
activation checkpointing are applied from outside (``kiln/train/parallel.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.attention import HEAD_MASK_MODES, Attention, apply_rope, attention_mask, rope_tables
from kiln.model.backends import resolve_backend
from kiln.model.config import TransformerConfig
from kiln.model.mask import AttentionMask
from kiln.model.moe import MoEMLP

__all__ = ["Attention", "AttentionMask", "BackboneOutput", "Block", "RMSNorm", "SwiGLU", "Transformer", "apply_rope",
           "attention_mask", "rope_tables"]

if TYPE_CHECKING:
    from kiln.model.cache import KVCache


@dataclass
class BackboneOutput:
    """What the backbone returns when asked for more than the final hidden states.

    ``hidden``: final hidden states (B, T, d), after the last RMSNorm (what the heads read);
    ``hidden_states``: the residual stream before every layer and after the last, n_layer + 1 tensors (B, T, d)
    (the last one before the final norm); ``attentions``: every layer's probabilities (B, H, T, K), fp32.
    Empty tuples for what was not asked.
    """

    hidden: Tensor
    hidden_states: tuple[Tensor, ...] = ()
    attentions: tuple[Tensor, ...] = ()


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight  (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# ----------------------------------------------------------------------------- layers


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
    """One layer: pre-norm x + attn(norm(x)), then x + mlp(norm(x)); or post-norm norm(x + attn(x)), ..."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.post_norm = layer_idx < cfg.n_post_ln
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoEMLP.from_config(cfg) if cfg.is_moe_layer(layer_idx) else SwiGLU(cfg)

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
        """x (B, T, d) -> (B, T, d), and the attention probabilities with ``need_weights`` (see Attention)."""
        attn_in = x if self.post_norm else self.attn_norm(x)
        a = self.attn(attn_in, mask, rope, kv_cache, head_mask, need_weights, head_mask_mode)
        a, probs = a if need_weights else (a, None)
        if self.post_norm:
            x = self.attn_norm(x + a)
            x = self.mlp_norm(x + self.mlp(x))
        else:
            x = x + a
            x = x + self.mlp(self.mlp_norm(x))
        return (x, probs) if need_weights else x


# ----------------------------------------------------------------------------- backbone


class Transformer(nn.Module):
    """Token embedding, ``n_layer`` blocks, final RMSNorm; returns hidden states (B, T, d_model).

    ``token_embedding=False`` leaves out ``tok_emb``: the caller passes ``inputs_embeds`` (ELECTRA's generator
    reads the discriminator's embedding table).
    """

    def __init__(self, cfg: TransformerConfig, token_embedding: bool = True) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model) if token_embedding else None
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_linear_factor)
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
            downs = [e.w_down for e in block.mlp.experts] if isinstance(block.mlp, MoEMLP) else [block.mlp.w_down]
            for down in downs:
                nn.init.normal_(down.weight, mean=0.0, std=residual_std)
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_linear_factor)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def head_mask(self, masked_heads: Sequence[Sequence[int]] | None = None, head_mask: Tensor | None = None,
                  device: torch.device | None = None) -> Tensor | None:
        """The (n_layer, n_head) per-head output scale of one forward, or None when no head is masked.

        ``masked_heads`` (layer, head) pairs are zeroed; None takes ``config.masked_heads`` (``[]`` masks none).
        ``head_mask`` (n_layer, n_head) multiplies on top (1 = keep; floats allowed, e.g. for head importance).
        """
        cfg = self.config
        pairs = cfg.masked_heads if masked_heads is None else masked_heads
        if not pairs and head_mask is None:
            return None
        scale = torch.ones(cfg.n_layer, cfg.n_head, device=device)
        for pair in pairs:
            layer, head = (int(i) for i in pair)
            if not (0 <= layer < cfg.n_layer and 0 <= head < cfg.n_head):
                raise ValueError(f"masked head {(layer, head)} outside n_layer={cfg.n_layer}, n_head={cfg.n_head}")
            scale[layer, head] = 0.0
        if head_mask is not None:
            if tuple(head_mask.shape) != (cfg.n_layer, cfg.n_head):
                raise ValueError(f"head_mask must have shape (n_layer, n_head) = {(cfg.n_layer, cfg.n_head)}, "
                                 f"got {tuple(head_mask.shape)}")
            scale = scale.to(head_mask.device) * head_mask
        return scale

    def forward(
        self,
        tokens: Tensor | None,
        positions: Tensor | None = None,
        segments: Tensor | None = None,
        kv_cache: KVCache | None = None,
        *,
        attention: str | None = None,
        prefix: Tensor | None = None,
        mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        masked_heads: Sequence[Sequence[int]] | None = None,
        head_mask: Tensor | None = None,
        head_mask_mode: str | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Tensor | BackboneOutput:
        """tokens (B, T) -> hidden states (B, T, d_model), or a :class:`BackboneOutput` when
        ``output_hidden_states`` / ``output_attentions`` asks for more.

        positions: per-token positions (B, T); None -> 0..T-1, offset by the cache length.
        segments: per-token document ids (B, T), -1 = padding; attention stays inside a segment.
        kv_cache: when given, keys/values are appended to it and attention sees everything cached.
        attention: causal | bidirectional | prefix for this call (None = ``config.attention``); prefix: its
        per-row length (B,) or per-token flag (B, T); mask: an explicit (B, T, T) visibility (see mask.py).
        inputs_embeds: (B, T, d_model) used instead of looking ``tokens`` up.
        masked_heads / head_mask: heads to silence (see :meth:`head_mask`); head_mask_mode: how a masked head is
        silenced, ``zero`` (its output scaled by the mask) or ``uniform`` (its attention weights made uniform over
        the visible keys; AttentionInfluence, Hua et al. 2025); None = ``config.head_mask_mode`` when the config
        has one, else ``zero``. output_attentions runs the eager backend for this call.
        """
        x = self.tok_emb(tokens) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        cfg = self.config
        start = kv_cache.length if kv_cache is not None else 0
        # explicit positions may hold more tokens than the context when every position is inside it (extra
        # query slots at existing positions, e.g. ERNIE-Gram's fine slots); checked only in that rare case
        if start + T > cfg.max_seq_len and (positions is None or int(positions.max()) >= cfg.max_seq_len):
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={cfg.max_seq_len}")
        rope = None
        if cfg.positions == "rope" and positions is None:  # contiguous positions: a slice, shared by the batch
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
            rope = cos[None, None], sin[None, None]  # (1, 1, T, hd/2)
        elif cfg.positions == "rope":  # gather per token: (B, 1, T, hd/2)
            rope = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        elif cfg.positions == "learned":
            pos = positions if positions is not None else torch.arange(start, start + T, device=x.device)
            x = x + self.pos_emb(pos)
        backend = resolve_backend(cfg.attention_backend, x.device, need_weights=output_attentions)
        visible = AttentionMask.build(attention or cfg.attention, backend, q_len=T, device=x.device,
                                      segments=segments, prefix=prefix, explicit=mask, start=start,
                                      cached=kv_cache is not None)
        scale = self.head_mask(masked_heads, head_mask, x.device)
        mode = head_mask_mode or getattr(cfg, "head_mask_mode", "zero")
        if mode not in HEAD_MASK_MODES:
            raise ValueError(f"head_mask_mode must be one of {HEAD_MASK_MODES}, got {mode!r}")

        hidden_states: list[Tensor] = []
        attentions: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if output_hidden_states:
                hidden_states.append(x)
            layer_mask = scale[i] if scale is not None else None
            if output_attentions:
                x, probs = block(x, visible, rope, kv_cache, layer_mask, True, mode)
                attentions.append(probs)
            else:
                x = block(x, visible, rope, kv_cache, layer_mask, False, mode)
        if kv_cache is not None:
            kv_cache.advance(T)
        if not (output_hidden_states or output_attentions):
            return self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        return BackboneOutput(self.norm(x), tuple(hidden_states), tuple(attentions))
