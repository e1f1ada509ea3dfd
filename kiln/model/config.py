"""TransformerConfig: the typed shape of a kiln language model.

Built from the recipe's ``model`` section plus the two numbers that come from earlier stages
(vocabulary size from the tokenizer, context length from the data section), saved next to every
checkpoint as ``config.json`` and turned into a model with :meth:`TransformerConfig.build`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.model.heads import LanguageModel
    from kiln.recipe import ModelConfig


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Default SwiGLU width: 8/3 * d_model (same parameter count as a 4*d GELU MLP, Shazeer 2020),
    rounded up to a multiple of ``multiple_of`` for matmul-friendly shapes."""
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


ATTENTIONS = ("causal", "bidirectional", "prefix")
NORMS = ("pre", "post", "mix")
POSITIONS = ("rope", "learned", "none")


def post_ln_layers(norm: str, mix_alpha: float, n_layer: int) -> int:
    """How many of the first layers are Post-LN: none (pre), all (post), or floor(alpha * n_layer) (Mix-LN,
    Li et al. 2024, "Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and Post-LN")."""
    return {"pre": 0, "post": n_layer, "mix": math.floor(mix_alpha * n_layer)}[norm]


@dataclass
class TransformerConfig:
    """Transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP; by default a pre-norm causal decoder.

    ``attention`` (causal | bidirectional | prefix) is the default mask (objectives may pass another per
    call); ``norm`` places the norms (pre | post | mix, with ``mix_alpha``); ``positions`` is rope | learned
    (absolute embeddings, Vaswani et al. 2017) | none (MP3). ``heads`` names the extra heads an objective
    needs and their arguments (``kiln.model.heads.HEADS``), so a checkpoint rebuilds them.
    ``n_kv_head`` and ``ffn_hidden`` are resolved in ``__post_init__`` (None -> ``n_head`` and
    :func:`swiglu_hidden`), so a saved ``config.json`` states the exact shape it was trained with.
    """

    vocab_size: int
    max_seq_len: int
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 256
    ffn_hidden: int | None = None
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    attention_backend: str = "auto"  # auto | sdpa | flex: how document masks run (kiln/model/flex.py)
    attention: str = "causal"
    norm: str = "pre"
    mix_alpha: float = 0.25  # Mix-LN: the first floor(alpha * n_layer) layers are Post-LN
    positions: str = "rope"
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_hidden is None:
            self.ffn_hidden = swiglu_hidden(self.d_model)
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2 and self.positions == "rope":
            raise ValueError(f"head dimension d_model/n_head ({self.head_dim}) must be even for RoPE")
        for name, allowed in (("attention", ATTENTIONS), ("norm", NORMS), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.mix_alpha <= 1.0:
            raise ValueError(f"mix_alpha must be in [0, 1], got {self.mix_alpha}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def n_post_ln(self) -> int:
        """Number of leading Post-LN layers (see :func:`post_ln_layers`)."""
        return post_ln_layers(self.norm, self.mix_alpha, self.n_layer)

    @classmethod
    def from_recipe(cls, model: ModelConfig, vocab_size: int, max_seq_len: int,
                    heads: dict[str, dict[str, Any]] | None = None) -> TransformerConfig:
        """The recipe's ``model`` section plus the tokenizer's vocabulary, the data's ``seq_len`` and the
        objective's extra heads."""
        return cls(vocab_size=vocab_size, max_seq_len=max_seq_len, heads=dict(heads or {}), **model.model_dump())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def build(self) -> LanguageModel:
        """A freshly initialised :class:`~kiln.model.heads.LanguageModel` (on the default device)."""
        from kiln.model.heads import LanguageModel

        return LanguageModel(self)
