"""Heads on top of the backbone, and the LanguageModel that pairs the backbone with an LM head.

Objectives call ``model.backbone(...)`` and then the head they need, so further heads (MLM,
replaced-token detection, horizon length, pooler) can sit next to ``lm_head`` without touching
the backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import TransformerConfig
from kiln.model.transformer import Transformer

if TYPE_CHECKING:
    from kiln.infer.generate import KVCache


class LMHead(nn.Module):
    """Linear d_model -> vocab_size, no bias. Its weight is the embedding table when tied
    (Press & Wolf 2017)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight)


class LanguageModel(nn.Module):
    """Backbone + LM head; ``forward`` returns next-token logits (B, T, vocab_size)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Transformer(config)
        self.lm_head = LMHead(config.d_model, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.tok_emb.weight
        else:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=config.init_std)

    def init_weights(self) -> None:
        """Re-initialise every weight (see :meth:`Transformer.init_weights`)."""
        self.backbone.init_weights()
        if not self.config.tie_embeddings:
            with torch.no_grad():
                nn.init.normal_(self.lm_head.weight, mean=0.0, std=self.config.init_std)

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        segments: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        return self.lm_head(self.backbone(tokens, positions, segments, kv_cache))

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, each shared tensor once. ``non_embedding`` leaves out the token
        embedding table (and with it a tied LM head); an untied LM head is counted, it is a matmul."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.backbone.tok_emb.weight.numel()
        return n

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.backbone.tok_emb.weight

    def save_state(self, path: str | Path) -> None:
        """Write the weights to a safetensors file (a tied weight stored once)."""
        from kiln.model.io import save_state

        save_state(self, path)

    def load_state(self, path: str | Path, map_location: str | torch.device = "cpu") -> None:
        """Read weights written by :meth:`save_state` into this model; ties are kept."""
        from kiln.model.io import load_state

        load_state(self, path, map_location)
