"""Attention backends: a small registry of kernels that compute softmax(q k^T / sqrt(d) + mask) v.

``model.attention_backend`` picks one (``auto`` chooses); every backend gives the same outputs up to float
rounding (tests compare them in fp32):

==========  ===================================================================================================
``sdpa``    ``F.scaled_dot_product_attention`` with a boolean mask (or its mask-free causal path); the default
            on CPU. Key/value heads are repeated for grouped-query attention.
``flex``    FlexAttention block masks for document-masked (segmented) batches (Dong et al. 2024; ``flex.py``),
            GQA without repeating k/v; anything else (no segments, a KV cache, an explicit mask) runs as sdpa.
``eager``   plain matmul + softmax in fp32: the one backend that returns the attention probabilities
            (B, H, T, K). Used for a call that asks for attention maps, whatever the configured backend.
``auto``    flex on CUDA when FlexAttention is importable, else sdpa.
==========  ===================================================================================================

A backend is ``attend(q, k, v, mask, need_weights) -> (y, probs | None)`` with q (B, H, T, hd), k and v
(B, Hkv, K, hd) and ``mask`` an :class:`~kiln.model.mask.AttentionMask` built for it; ``block_masks`` says
whether its masks are FlexAttention block masks. :func:`register_backend` adds one (e.g. a fused kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from kiln.model.flex import HAS_FLEX, flex_attend

if TYPE_CHECKING:
    from kiln.model.mask import AttentionMask

AttendFn = Callable[[Tensor, Tensor, Tensor, "AttentionMask", bool], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Backend:
    """A registered attention kernel (see the module docstring)."""

    name: str
    attend: AttendFn
    block_masks: bool = False
    returns_weights: bool = False


_REGISTRY: dict[str, Backend] = {}


def register_backend(name: str, attend: AttendFn, *, block_masks: bool = False,
                     returns_weights: bool = False) -> Backend:
    """Register (or replace) the backend ``name``; ``auto`` is reserved."""
    if name == "auto":
        raise ValueError("'auto' is not a backend name; it chooses one")
    backend = Backend(name, attend, block_masks, returns_weights)
    _REGISTRY[name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    """Every value ``model.attention_backend`` accepts."""
    return ("auto", *_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"attention backend must be one of {backend_names()}, got {name!r}")
    return _REGISTRY[name]


def resolve_backend(name: str, device: torch.device, need_weights: bool = False) -> str:
    """The concrete backend for ``name`` on ``device``: ``auto`` -> flex on CUDA (when importable) else sdpa;
    a call that needs attention probabilities gets a backend that returns them (eager)."""
    if name == "auto":
        name = "flex" if HAS_FLEX and device.type == "cuda" else "sdpa"
    else:
        get_backend(name)
    if name == "flex" and not HAS_FLEX:
        raise RuntimeError("model.attention_backend=flex needs torch >= 2.5 (torch.nn.attention.flex_attention)")
    if need_weights and not _REGISTRY[name].returns_weights:
        name = "eager"
    return name


def _repeat_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Grouped-query attention: each kv head serves n_head / n_kv_head consecutive query heads."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return k, v


def sdpa_attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, need_weights: bool = False
                ) -> tuple[Tensor, None]:
    k, v = _repeat_kv(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, is_causal=mask.is_causal), None


def flex_backend_attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, need_weights: bool = False
                        ) -> tuple[Tensor, None]:
    if mask.block is None:  # no document mask this call (no segments, a KV cache, an explicit mask)
        return sdpa_attend(q, k, v, mask)
    return flex_attend(q, k, v, mask.block), None


def eager_attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, need_weights: bool = False
                 ) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(hd), masked) v with the probabilities computed in fp32 and returned."""
    k, v = _repeat_kv(q, k, v)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    allowed = mask.materialize(q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.matmul(probs.to(v.dtype), v), probs


register_backend("sdpa", sdpa_attend)
register_backend("flex", flex_backend_attend, block_masks=True)
register_backend("eager", eager_attend, returns_weights=True)
