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
ROPE_SCALINGS = ("base", "linear")
# model.moe (kiln/model/moe.py): every key with its default; a saved config.json states them all
MOE_DEFAULTS: dict[str, Any] = {"n_experts": 4, "top_k": 2, "every": 1, "expert_hidden": None,
                                "aux_loss_weight": 0.01, "z_loss_weight": 0.001, "capacity_factor": None}


def moe_settings(moe: dict[str, Any], n_layer: int, ffn_hidden: int) -> dict[str, Any]:
    """``model.moe`` with its defaults filled in (``expert_hidden`` None -> ``ffn_hidden``), or ValueError naming
    the key."""
    if not isinstance(moe, dict):
        raise ValueError(f"moe must be a mapping of {sorted(MOE_DEFAULTS)} or None, got {moe!r}")
    unknown = sorted(set(moe) - set(MOE_DEFAULTS))
    if unknown:
        raise ValueError(f"moe.{unknown[0]}: unknown key; known: {', '.join(MOE_DEFAULTS)}")
    out = {**MOE_DEFAULTS, **moe}
    if out["expert_hidden"] is None:
        out["expert_hidden"] = ffn_hidden
    for key in ("n_experts", "top_k", "every", "expert_hidden"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ValueError(f"moe.{key} must be an integer >= 1, got {out[key]!r}")
    if out["top_k"] > out["n_experts"]:
        raise ValueError(f"moe.top_k ({out['top_k']}) must be <= moe.n_experts ({out['n_experts']})")
    if out["every"] > n_layer:
        raise ValueError(f"moe.every ({out['every']}) must be <= n_layer ({n_layer}): layer i is a mixture of "
                         "experts when (i + 1) % every == 0")
    for key in ("aux_loss_weight", "z_loss_weight"):
        if not isinstance(out[key], int | float) or out[key] < 0:
            raise ValueError(f"moe.{key} must be a number >= 0, got {out[key]!r}")
        out[key] = float(out[key])
    cf = out["capacity_factor"]
    if cf is not None and (not isinstance(cf, int | float) or cf <= 0):
        raise ValueError(f"moe.capacity_factor must be a number > 0 or None (no token is dropped), got {cf!r}")
    return out


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
    ``rope_scaling`` changes the RoPE base or interpolates positions (:attr:`rope_theta`); ``masked_heads``
    lists (layer, head) pairs whose attention output is zeroed in every forward (a call may pass its own);
    ``attention_backend`` picks the kernel (``kiln.model.backends``).
    ``moe`` turns MLPs into routed experts (:data:`MOE_DEFAULTS`, ``kiln/model/moe.py``).
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
    attention_backend: str = "auto"  # auto | sdpa | flex | eager: the attention kernel (kiln/model/backends.py)
    attention: str = "causal"
    norm: str = "pre"
    mix_alpha: float = 0.25  # Mix-LN: the first floor(alpha * n_layer) layers are Post-LN
    positions: str = "rope"
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    rope_scaling: dict[str, Any] | None = None  # {"type": "base" | "linear", "factor": f}: see rope_theta
    masked_heads: list[list[int]] = field(default_factory=list)  # [[layer, head], ...] masked in every forward
    moe: dict[str, Any] | None = None  # mixture-of-experts MLPs (MOE_DEFAULTS, kiln/model/moe.py); None = dense

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
        from kiln.model.backends import backend_names

        if self.attention_backend not in backend_names():
            raise ValueError(f"attention_backend must be one of {backend_names()}, got {self.attention_backend!r}")
        self._check_rope_scaling()
        if self.moe is not None:
            self.moe = moe_settings(self.moe, self.n_layer, self.ffn_hidden)
        self.masked_heads = [list(map(int, pair)) for pair in self.masked_heads]
        for pair in self.masked_heads:
            if len(pair) != 2 or not (0 <= pair[0] < self.n_layer and 0 <= pair[1] < self.n_head):
                raise ValueError(f"masked_heads: {pair} is not a [layer, head] pair with layer < n_layer "
                                 f"({self.n_layer}) and head < n_head ({self.n_head})")

    def _check_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict) or set(rs) != {"type", "factor"} or rs["type"] not in ROPE_SCALINGS:
            raise ValueError(f"rope_scaling must be {{type: {' | '.join(ROPE_SCALINGS)}, factor: > 0}} or None, "
                             f"got {rs!r}")
        if not isinstance(rs["factor"], int | float) or rs["factor"] <= 0:
            raise ValueError(f"rope_scaling.factor must be a number > 0, got {rs['factor']!r}")
        if rs["type"] == "base" and self.head_dim <= 2:
            raise ValueError("rope_scaling type base needs a head dimension d_model/n_head > 2")
        if self.positions != "rope":
            raise ValueError(f"rope_scaling needs positions: rope (positions is {self.positions!r})")

    @property
    def rope_theta(self) -> float:
        """The RoPE base actually used. ``rope_scaling: {type: base, factor: s}`` is the NTK-aware base change
        (bloc97 2023; Peng et al. 2023, "YaRN", sec. 3.1): base * s^(d / (d - 2)) for head dimension d, which
        stretches the lowest frequency s times so a model sees ~s times its trained context. Without it (or
        with ``linear``), ``rope_base``."""
        rs = self.rope_scaling
        if rs is None or rs["type"] != "base":
            return self.rope_base
        return self.rope_base * float(rs["factor"]) ** (self.head_dim / (self.head_dim - 2))

    @property
    def rope_linear_factor(self) -> float:
        """``rope_scaling: {type: linear, factor: s}``: positions divided by s (position interpolation, Chen et al.
        2023, "Extending Context Window of Large Language Models via Positional Interpolation"); else 1."""
        rs = self.rope_scaling
        return float(rs["factor"]) if rs is not None and rs["type"] == "linear" else 1.0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` has a mixture-of-experts MLP: ``(layer_idx + 1) % moe.every == 0``
        (every = 2: the second, fourth, ... layers, as in Switch / ST-MoE)."""
        return self.moe is not None and (layer_idx + 1) % self.moe["every"] == 0

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
