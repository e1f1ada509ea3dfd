"""A task-specific representation module: a small Transformer stack on a shared backbone's hidden states.

ERNIE 3.0 (Sun et al. 2021, "ERNIE 3.0: Large-scale Knowledge Enhanced Pre-training for Language Understanding
and Generation", arXiv:2107.02137, sec. 3.1) puts task-specific representation modules, shallower and narrower
Transformers than the shared universal representation module, on top of it. :class:`TaskModule` reads the
backbone's residual stream at some layer (B, T, d_model): RMSNorm, a projection d_model -> d_task
(``ratio`` x d_model, heads scaled alike), ``layers`` pre-norm blocks with the attention mask the caller passes
(``attention=`` per call: bidirectional for the NLU module), a final RMSNorm, and BERT's MLM head decoding with
the token embedding table passed at call time (tied, as :class:`~kiln.model.heads.MLMHead`).

The model head ``task_module`` (arguments ``layers``, ``ratio``; ``kiln.model.heads.HEADS``), so a checkpoint
rebuilds it from ``config.heads``.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from kiln.model.config import TransformerConfig, swiglu_hidden
from kiln.model.heads import MLMHead
from kiln.model.transformer import RMSNorm, Transformer


def task_config(cfg: TransformerConfig, layers: int, ratio: float) -> TransformerConfig:
    """The module's own shape: ``layers`` blocks, width / heads scaled by ``ratio``, pre-norm, dense MLPs."""
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"task_module layers must be an integer >= 1, got {layers!r}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"task_module ratio must be in (0, 1], got {ratio!r}")
    n_head = max(1, round(cfg.n_head * ratio))
    head_dim = max(2, 2 * round(cfg.d_model * ratio / n_head / 2))
    d_model = n_head * head_dim
    return dataclasses.replace(cfg, n_layer=layers, d_model=d_model, n_head=n_head, n_kv_head=n_head, norm="pre",
                               ffn_hidden=swiglu_hidden(d_model, 16), heads={}, masked_heads=[], moe=None)


class TaskModule(nn.Module):
    """RMSNorm -> Linear(d -> d_task) -> ``layers`` blocks -> MLM head on the tied embedding (module docstring)."""

    def __init__(self, cfg: TransformerConfig, layers: int = 1, ratio: float = 1.0) -> None:
        super().__init__()
        tcfg = task_config(cfg, layers, ratio)
        self.in_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.in_proj = nn.Linear(cfg.d_model, tcfg.d_model, bias=False)
        self.stack = Transformer(tcfg, token_embedding=False)
        self.mlm = MLMHead(tcfg.d_model, cfg.d_model, cfg.vocab_size, cfg.norm_eps)

    def forward(self, hidden: Tensor, embedding: Tensor, positions: Tensor | None = None,
                segments: Tensor | None = None, *, attention: str = "bidirectional",
                select: Tensor | None = None) -> Tensor:
        """hidden (B, T, d_model) -> logits (B, T, V), or (n, V) where ``select`` (B, T) is True."""
        x = self.stack(None, positions, segments, attention=attention,
                       inputs_embeds=self.in_proj(self.in_norm(hidden)))
        if select is not None:
            x = x[select]
        return self.mlm(x, embedding)

