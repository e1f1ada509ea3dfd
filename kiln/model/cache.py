"""The key/value cache of incremental decoding, owned by the model package (attention reads and fills it).

Generation (``kiln/infer/generate.py``) creates one per request; the backbone passes it to every attention
layer, which appends its new keys/values and attends to all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from kiln.model.heads import LanguageModel


class KVCache:
    """Per-layer keys and values, preallocated as (B, n_kv_head, max_len, head_dim).

    Attention layer ``i`` calls :meth:`update` with the new keys/values (rotated by RoPE already)
    and gets back all of them so far; the backbone calls :meth:`advance` once every layer has seen
    the new tokens.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(
        cls,
        model: LanguageModel,
        batch_size: int = 1,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A cache shaped for ``model``, on its device and (by default) in its parameters' dtype."""
        cfg = model.config
        param = next(model.parameters())
        return cls(
            cfg.n_layer,
            batch_size,
            cfg.n_kv_head,
            max_len or cfg.max_seq_len,
            cfg.head_dim,
            device=param.device,
            dtype=dtype or param.dtype,
        )

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, n_kv_head, T, head_dim) after the cached ones; return keys/values 0..length+T."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > max_len={self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end].to(k.dtype), self.v[layer][:, :, :end].to(v.dtype)

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0
