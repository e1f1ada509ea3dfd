"""Heads on top of the backbone, and the LanguageModel that pairs the backbone with an LM head.

Objectives call ``model.backbone(...)`` and then the head they need. ``lm_head`` is always there (evaluation
and generation use only it); the extra heads an objective needs are named in ``config.heads`` and live in
``model.heads`` (an ``nn.ModuleDict``), so checkpoints save and rebuild them:

=============  ==========================================================================================
``mlm``        BERT's MLM head: dense, GELU, LayerNorm, then the tied embedding decoder + bias (Devlin 2019)
``rtd``        replaced-token detection: Linear(d -> 1) logit per token (ELECTRA, Clark et al. 2020)
``hlp``        horizon length: sigmoid(Linear(d -> 1)) per token (Ding et al. 2024)
``position``   MP3 position classifier: Linear(d -> n_positions) (Zhai et al. 2022)
``generator``  ELECTRA's small MLM generator reading the shared token embeddings (Clark et al. 2020)
``ngram``      ERNIE-Gram's coarse head over V_tokens + V_ngrams: the MLM transform, then the tied token
               decoder next to its own n-gram embedding table (Xiao et al. 2021)
=============  ==========================================================================================

:class:`Pooler` (mean or first token, no parameters) turns hidden states into one vector per sequence for
classification or embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import TransformerConfig, swiglu_hidden
from kiln.model.transformer import BackboneOutput, Transformer

if TYPE_CHECKING:
    from kiln.model.cache import KVCache


class LMHead(nn.Module):
    """Linear d_model -> vocab_size, no bias. Its weight is the embedding table when tied
    (Press & Wolf 2017)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight)


@torch.no_grad()
def init_head(module: nn.Module, std: float) -> None:
    """N(0, std) for linear and embedding weights, zero biases, unit LayerNorm gains (BERT's initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MLMHead(nn.Module):
    """BERT's masked-LM head (Devlin et al. 2019): LayerNorm(GELU(dense(h))) @ embedding.T + bias.

    The decoder is the token embedding table, passed in at call time (tied, never stored twice); ``in_dim``
    may differ from the embedding width (ELECTRA's small generator projects up to it).
    """

    def __init__(self, in_dim: int, d_model: int, vocab_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), embedding, self.bias)


class NgramHead(nn.Module):
    """ERNIE-Gram's coarse head (Xiao et al. 2021, sec. 3.1): one distribution over V_tokens + V_ngrams.

    h' = LayerNorm(GELU(dense(h))); logits = h' @ [token embedding; n-gram table].T + bias. The token part is
    the tied embedding (passed at call time, as in :class:`MLMHead`), the n-gram part a learned table of
    ``n_ngrams`` rows: the lexicon's configured size, fixed before the lexicon is built. ``n_used`` keeps only
    the first rows (a lexicon smaller than its configured size leaves the rest out of the softmax).
    """

    def __init__(self, d_model: int, vocab_size: int, n_ngrams: int, eps: float = 1e-5) -> None:
        super().__init__()
        if n_ngrams < 0:
            raise ValueError(f"n_ngrams must be >= 0, got {n_ngrams}")
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.ngrams = nn.Embedding(n_ngrams, d_model)
        self.bias = nn.Parameter(torch.zeros(vocab_size + n_ngrams))

    def forward(self, hidden: Tensor, embedding: Tensor, n_used: int | None = None) -> Tensor:
        """(n, d) hidden states -> (n, vocab_size + n_used) logits (coarse id = token id or vocab_size + index)."""
        n_used = self.ngrams.num_embeddings if n_used is None else n_used
        table = torch.cat([embedding, self.ngrams.weight[:n_used].to(embedding.dtype)])
        return F.linear(self.norm(F.gelu(self.dense(hidden))), table, self.bias[: table.shape[0]])


class ScalarHead(nn.Module):
    """Linear(d -> 1) per token: a logit (``rtd``, ELECTRA's discriminator) or, with ``sigmoid``, a value in
    (0, 1) (``hlp``, the fraction of the middle still to write)."""

    def __init__(self, d_model: int, sigmoid: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        self.sigmoid = sigmoid

    def forward(self, hidden: Tensor) -> Tensor:
        out = self.proj(hidden).squeeze(-1)
        return torch.sigmoid(out) if self.sigmoid else out


class PositionHead(nn.Module):
    """MP3's position classifier: Linear(d -> n_positions) logits per token (Zhai et al. 2022)."""

    def __init__(self, d_model: int, n_positions: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, n_positions)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden)


class Pooler(nn.Module):
    """One vector per sequence (or packed segment): the mean over its real tokens, or its first token."""

    def __init__(self, mode: Literal["mean", "first"] = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "first"):
            raise ValueError(f"pooler mode must be 'mean' or 'first', got {mode!r}")
        self.mode = mode

    def forward(self, hidden: Tensor, valid: Tensor | None = None) -> Tensor:
        """hidden (B, T, d), valid (B, T) bool (None = all) -> (B, d)."""
        if valid is None:
            valid = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if self.mode == "first":
            first = valid.int().argmax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
        w = valid.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)


def generator_config(cfg: TransformerConfig, ratio: float) -> TransformerConfig:
    """ELECTRA's generator: the discriminator's depth, width / heads / FFN scaled by ``ratio`` (1/4 for
    Small, 1/3 for Base; Clark et al. 2020, sec. 3.2 and appendix), bidirectional, pre-norm, no extra heads."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"generator ratio must be in (0, 1], got {ratio}")
    n_head = max(1, round(cfg.n_head * ratio))
    head_dim = max(2, 2 * round(cfg.d_model * ratio / n_head / 2))
    d_model = n_head * head_dim
    return dataclasses.replace(cfg, d_model=d_model, n_head=n_head, n_kv_head=n_head, attention="bidirectional",
                               norm="pre", ffn_hidden=swiglu_hidden(d_model, 16), heads={}, masked_heads=[])


class Generator(nn.Module):
    """ELECTRA's generator: a small bidirectional Transformer on the discriminator's token embeddings
    (projected d -> d_g), with an MLM head projecting back to d and decoding with the same embedding table
    (the reference's shared embeddings with ``embedding_size`` != ``hidden_size``)."""

    def __init__(self, cfg: TransformerConfig, ratio: float = 0.25) -> None:
        super().__init__()
        from kiln.model.transformer import Transformer

        gcfg = generator_config(cfg, ratio)
        self.in_proj = nn.Linear(cfg.d_model, gcfg.d_model, bias=False)
        self.backbone = Transformer(gcfg, token_embedding=False)
        self.mlm = MLMHead(gcfg.d_model, cfg.d_model, cfg.vocab_size, cfg.norm_eps)

    def forward(self, tokens: Tensor, embedding: nn.Embedding, positions: Tensor | None = None,
                segments: Tensor | None = None, select: Tensor | None = None) -> Tensor:
        """MLM logits (B, T, V), or (n, V) at the positions where ``select`` (B, T) is True."""
        hidden = self.backbone(None, positions, segments, inputs_embeds=self.in_proj(embedding(tokens)))
        if select is not None:
            hidden = hidden[select]
        return self.mlm(hidden, embedding.weight)


def _task_module(cfg: TransformerConfig, layers: int = 1, ratio: float = 1.0) -> nn.Module:
    from kiln.model.task_module import TaskModule  # ERNIE 3.0's NLU module (imports this file)

    return TaskModule(cfg, layers, ratio)


HEADS: dict[str, Callable[..., nn.Module]] = {
    "mlm": lambda cfg: MLMHead(cfg.d_model, cfg.d_model, cfg.vocab_size, cfg.norm_eps),
    "rtd": lambda cfg: ScalarHead(cfg.d_model),
    "hlp": lambda cfg: ScalarHead(cfg.d_model, sigmoid=True),
    "position": lambda cfg, n_positions=None: PositionHead(cfg.d_model, n_positions or cfg.max_seq_len),
    "generator": lambda cfg, ratio=0.25: Generator(cfg, ratio),
    "ngram": lambda cfg, n_ngrams: NgramHead(cfg.d_model, cfg.vocab_size, n_ngrams, cfg.norm_eps),
    "task_module": _task_module,
}


def build_head(name: str, cfg: TransformerConfig, **kwargs: Any) -> nn.Module:
    """The head called ``name`` (see ``HEADS``), initialised N(0, init_std)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; available: {', '.join(sorted(HEADS))}")
    head = HEADS[name](cfg, **kwargs)
    init_head(head, cfg.init_std)
    if isinstance(head, Generator):
        head.backbone.init_weights()
    return head


@dataclass
class ModelOutput:
    """LM logits plus what the backbone returned (see :class:`~kiln.model.transformer.BackboneOutput`)."""

    logits: Tensor
    hidden: Tensor
    hidden_states: tuple[Tensor, ...] = ()
    attentions: tuple[Tensor, ...] = ()


class LanguageModel(nn.Module):
    """Backbone + LM head (+ ``heads`` from ``config.heads``); ``forward`` returns LM logits (B, T, vocab)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Transformer(config)
        self.lm_head = LMHead(config.d_model, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.tok_emb.weight
        else:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=config.init_std)
        self.heads = nn.ModuleDict({name: build_head(name, config, **kw) for name, kw in config.heads.items()})

    def init_weights(self) -> None:
        """Re-initialise every weight (see :meth:`Transformer.init_weights`)."""
        self.backbone.init_weights()
        if not self.config.tie_embeddings:
            with torch.no_grad():
                nn.init.normal_(self.lm_head.weight, mean=0.0, std=self.config.init_std)
        for head in self.heads.values():
            init_head(head, self.config.init_std)
            if isinstance(head, Generator):
                head.backbone.init_weights()

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        segments: Tensor | None = None,
        kv_cache: KVCache | None = None,
        **kwargs: Any,
    ) -> Tensor | ModelOutput:
        """LM logits (B, T, vocab); ``kwargs`` (``attention=``, ``prefix=``, ``mask=``, ``masked_heads=``,
        ``head_mask=``, ``output_hidden_states=``, ``output_attentions=``) go to the backbone. When hidden states or
        attention maps are asked for, a :class:`ModelOutput` (logits + the backbone's outputs)."""
        out = self.backbone(tokens, positions, segments, kv_cache, **kwargs)
        if isinstance(out, BackboneOutput):
            return ModelOutput(self.lm_head(out.hidden), out.hidden, out.hidden_states, out.attentions)
        return self.lm_head(out)

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
