"""kiln's Transformer as Hugging Face remote code: KilnModel, KilnForMaskedLM, KilnForCausalLM.

``kiln export --format hf`` ships this file into a folder when the model has no exact twin among
``transformers``' own classes (a kiln encoder with its MLM head; a Post-LN / Mix-LN, learned- or
no-position, or prefix-LM decoder). Load it with ``trust_remote_code=True``::

    AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)   # encoder + MLM head
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)   # decoder
    AutoModel.from_pretrained(folder, trust_remote_code=True)              # hidden states

Self-contained: imports only ``torch`` and ``transformers``. The computation is kiln's
(``kiln/model/transformer.py``, ``attention.py``, ``heads.py``), operation for operation:

    tokens -> embedding (+ learned positions) -> n_layer x Block -> RMSNorm -> hidden (B, T, d)
    Block(x) = x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))     (Pre-LN)
    Block(x) = RMSNorm(x + Attn(x)), then RMSNorm(x + SwiGLU(x))     (Post-LN: the first post_norm_layers blocks)

- RMSNorm without bias; RoPE in the rotate-half layout (angles computed in float64, as kiln does);
  grouped-query attention (kv head j serves query heads j*g .. j*g+g-1); SwiGLU ``down(silu(gate(x)) * up(x))``;
  no biases in the backbone.
- MLM head (BERT's): ``LayerNorm(gelu(dense(h))) @ tok_emb.weight.T + bias``; the decoder *is* the token
  embedding table. A tied causal LM head is the embedding table too; an untied one is ``lm_head``.
- ``attention_mask`` (1 = token, 0 = padding) hides padding keys; when ``position_ids`` is not given,
  positions count real tokens only (``cumsum(attention_mask) - 1``), so left and right padding give every
  real token the outputs it has unpadded. Padding rows' outputs are meaningless.
- ``prefix`` (prefix-LM, ``attention="prefix"`` only): per-row prefix length (B,) or per-token flag (B, T);
  each contiguous run of prefix tokens is a bidirectional block, the rest is causal. Not with a KV cache.
- Causal models decode with a ``transformers`` ``Cache`` (``generate`` works); encoders do not cache.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, MaskedLMOutput

from .configuration_kiln import KilnConfig

# transformers renamed the KV cache argument and output field from `past_key_values` to `cache` (5.x): accept both
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class KilnRMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos/sin (B, 1, T, head_dim / 2) for integer ``positions`` (B, T); pair i turns by p * base^(-2i/d)."""
    dtype = torch.float32 if positions.device.type == "mps" else torch.float64
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=dtype, device=positions.device) / head_dim))
    angles = positions.to(dtype)[..., None] * inv_freq
    return angles.cos().float().unsqueeze(1), angles.sin().float().unsqueeze(1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, hd): the two halves of the head dimension are the rotated pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def prefix_runs(prefix: Tensor, T: int) -> Tensor:
    """(B, T): the id of the contiguous prefix run of each token, -1 outside any prefix."""
    if prefix.dim() == 1:
        prefix = torch.arange(T, device=prefix.device)[None, :] < prefix[:, None]
    prefix = prefix.bool()
    starts = prefix.clone()
    starts[:, 1:] &= ~prefix[:, :-1]
    runs = torch.cumsum(starts.long(), dim=1)
    return torch.where(prefix, runs, torch.full_like(runs, -1))


class KilnAttention(nn.Module):
    """Multi-head self-attention with RoPE and grouped-query key/value heads, no biases."""

    def __init__(self, config: KilnConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        d = config.hidden_size
        self.wq = nn.Linear(d, self.n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_head * self.head_dim, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, mask: Tensor | None, is_causal: bool,
                cache=None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class KilnSwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: KilnConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w_up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w_down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class KilnBlock(nn.Module):
    """Pre-LN x + attn(norm(x)), x + mlp(norm(x)); or Post-LN norm(x + attn(x)), norm(x + mlp(x))."""

    def __init__(self, config: KilnConfig, layer_idx: int) -> None:
        super().__init__()
        self.post_norm = layer_idx < config.post_norm_layers
        self.attn_norm = KilnRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = KilnAttention(config, layer_idx)
        self.mlp_norm = KilnRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = KilnSwiGLU(config)

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, mask: Tensor | None, is_causal: bool,
                cache=None) -> Tensor:
        if self.post_norm:
            x = self.attn_norm(x + self.attn(x, cos, sin, mask, is_causal, cache))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.mlp_norm(x))


class KilnPreTrainedModel(PreTrainedModel):
    config_class = KilnConfig
    base_model_prefix = "model"
    _no_split_modules = ["KilnBlock"]
    supports_gradient_checkpointing = False


class KilnModel(KilnPreTrainedModel):
    """Embedding, blocks, final RMSNorm: ``last_hidden_state`` (B, T, hidden_size)."""

    def __init__(self, config: KilnConfig) -> None:
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(KilnBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = KilnRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def _mask(self, T: int, start: int, attention_mask: Tensor | None, prefix: Tensor | None,
              device: torch.device) -> tuple[Tensor | None, bool]:
        """(attn_mask (B or 1, 1, T, start + T) bool or None, is_causal) for SDPA, as kiln builds it."""
        mode = self.config.attention
        if mode == "prefix" and prefix is None:
            mode = "causal"  # an empty prefix is causal, as in kiln
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        K = start + T
        keys, queries = torch.arange(K, device=device)[None, :], torch.arange(start, K, device=device)[:, None]
        allowed = None
        if mode == "prefix":
            if start:
                raise ValueError("prefix attention cannot decode with a KV cache")
            runs = prefix_runs(prefix.to(device), T)
            allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None] | (
                (runs[:, :, None] == runs[:, None, :]) & (runs[:, None, :] >= 0))
        elif mode == "causal" and (padded or start):
            allowed = keys <= queries
        if padded:
            real = attention_mask.to(device).bool()[:, -K:][:, None, :]  # (B, 1, K)
            allowed = real if allowed is None else allowed & real
            allowed = allowed | (keys == queries)  # every query keeps itself: a padding row is never empty
        if allowed is None:
            return None, mode == "causal"
        if allowed.dim() == 2:
            allowed = allowed[None]
        return allowed.unsqueeze(1), False

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, cache=None,
                use_cache: bool | None = None, prefix: Tensor | None = None, return_dict: bool | None = None,
                past_key_values=None, **kwargs) -> BaseModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        cfg = self.config
        cache = cache if cache is not None else past_key_values
        if cfg.attention == "bidirectional":  # an encoder does not decode
            cache = None
        elif use_cache and cache is None:
            cache = DynamicCache()
        start = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:].to(x.device)
            else:
                position_ids = torch.arange(start, start + T, device=x.device)[None].expand(B, T)
        cos = sin = None
        if cfg.positions == "rope":
            cos, sin = rope_cos_sin(position_ids, cfg.hidden_size // cfg.num_attention_heads, cfg.rope_base)
        elif cfg.positions == "learned":
            if int(position_ids.max()) >= cfg.max_position_embeddings:
                raise ValueError(f"position {int(position_ids.max())} is beyond the learned position table "
                                 f"(max_position_embeddings={cfg.max_position_embeddings})")
            x = x + self.pos_emb(position_ids)
        mask, is_causal = self._mask(T, start, attention_mask, prefix, x.device)
        for block in self.blocks:
            x = block(x, cos, sin, mask, is_causal, cache)
        x = self.norm(x)
        if return_dict is False:
            return (x, cache)
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_FIELD: cache})


class KilnMLMHead(nn.Module):
    """BERT's MLM transform (dense, GELU, LayerNorm) and the decoder bias; the decoder is the embedding table."""

    def __init__(self, config: KilnConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.mlm_layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), embedding, self.bias)


class KilnForMaskedLM(KilnPreTrainedModel):
    """A kiln encoder with its MLM head: ``logits`` (B, T, vocab_size); ``labels`` -100 = ignored."""

    def __init__(self, config: KilnConfig) -> None:
        super().__init__(config)
        self.model = KilnModel(config)
        self.mlm_head = KilnMLMHead(config)
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                labels: Tensor | None = None, return_dict: bool | None = None, **kwargs) -> MaskedLMOutput | tuple:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, return_dict=False)[0]
        logits = self.mlm_head(hidden, self.model.tok_emb.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits)


class KilnForCausalLM(KilnPreTrainedModel, GenerationMixin):
    """A kiln decoder: ``logits`` (B, T, vocab_size); ``labels`` are shifted inside (-100 = ignored)."""

    def __init__(self, config: KilnConfig) -> None:
        super().__init__(config)
        self.model = KilnModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, cache=None,
                use_cache: bool | None = None, labels: Tensor | None = None, prefix: Tensor | None = None,
                logits_to_keep: int = 0, return_dict: bool | None = None, past_key_values=None,
                **kwargs) -> CausalLMOutputWithPast | tuple:
        hidden, cache = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, cache=cache if cache is not None else past_key_values,
                                   use_cache=use_cache, prefix=prefix, return_dict=False)
        hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        weight = self.model.tok_emb.weight if self.config.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(hidden, weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
        if return_dict is False:
            return (logits, cache) if loss is None else (loss, logits, cache)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})
