"""The 24 compact-model size presets of "Well-Read Students Learn Better" (``model.preset``).

Turc, Chang, Lee, Toutanova 2019, "Well-Read Students Learn Better: On the Importance of Pre-training Compact
Models", arXiv:1908.08962: 24 BERT sizes, layers L in {2, 4, 6, 8, 10, 12} x hidden H in {128, 256, 512, 768},
attention heads H/64 (head width 64) and a feed-forward width of 4H (google-research/bert README,
``uncased_L-*_H-*_A-*``).

Names: ``bert-L{L}-H{H}`` (``bert-L4-H256``), plus the README's five named sizes as aliases (``bert-tiny`` 2/128,
``bert-mini`` 4/256, ``bert-small`` 4/512, ``bert-medium`` 8/512, ``bert-base`` 12/768).

**FFN width.** BERT's MLP is GELU with two matrices of H x 4H: 8H^2 weights. kiln's MLP is SwiGLU (three matrices
of H x F), so a preset sets ``ffn_hidden`` to the *parameter-matched* width F = 8H/3 (2/3 of 4H), rounded up to a
multiple of 64 (:func:`kiln.model.config.swiglu_hidden`, kiln's default): 384, 704, 1408, 2048 for H = 128, 256,
512, 768 (exact for H = 768: 3 * 768 * 2048 = 8 * 768^2). A preset therefore has BERT's per-layer MLP parameter
count (to rounding), not BERT's 4H hidden width. Attention has no biases and RMSNorm has no shift, so a
block holds 4H^2 + 3HF + 2H weights (:func:`preset_params`).

Torch-free: :mod:`kiln.recipe` imports this table to validate ``model.preset``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.model.config import swiglu_hidden

LAYERS = (2, 4, 6, 8, 10, 12)
HIDDEN = (128, 256, 512, 768)
HEAD_DIM = 64
ALIASES = {"bert-tiny": "bert-L2-H128", "bert-mini": "bert-L4-H256", "bert-small": "bert-L4-H512",
           "bert-medium": "bert-L8-H512", "bert-base": "bert-L12-H768"}
# the fields a preset sets; every other model field keeps its own value
PRESET_FIELDS = ("n_layer", "d_model", "n_head", "ffn_hidden")


@dataclass(frozen=True)
class Preset:
    name: str
    n_layer: int
    d_model: int

    @property
    def n_head(self) -> int:
        return self.d_model // HEAD_DIM

    @property
    def ffn_hidden(self) -> int:
        return swiglu_hidden(self.d_model)

    def fields(self) -> dict[str, int]:
        """The model-section values this preset sets (:data:`PRESET_FIELDS`)."""
        return {"n_layer": self.n_layer, "d_model": self.d_model, "n_head": self.n_head,
                "ffn_hidden": self.ffn_hidden}


def preset_name(n_layer: int, d_model: int) -> str:
    return f"bert-L{n_layer}-H{d_model}"


PRESETS: dict[str, Preset] = {preset_name(n, h): Preset(preset_name(n, h), n, h) for n in LAYERS for h in HIDDEN}
PRESET_NAMES: tuple[str, ...] = (*PRESETS, *ALIASES)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (one of the 24 or an alias), or ValueError listing the accepted names."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {name!r}; presets are bert-L{{L}}-H{{H}} with L in "
                         f"{list(LAYERS)} and H in {list(HIDDEN)}, or {', '.join(ALIASES)}")
    return PRESETS[key]


def resolve_preset(data: dict, where: str = "model") -> dict:
    """A model section's raw mapping with its ``preset`` applied: the preset's fields filled in; a field also
    given explicitly must equal the preset's value, else ValueError naming the field, both values and the preset
    (set ``model.preset`` to another size, or drop the preset and give the fields)."""
    name = data.get("preset")
    if name is None:
        return data
    if not isinstance(name, str):
        raise ValueError(f"{where}.preset: expected a preset name such as 'bert-L4-H256', got {name!r}")
    preset = get_preset(name)
    out = dict(data)
    for key, value in preset.fields().items():
        given = out.get(key)
        if given is not None and given != value:
            raise ValueError(f"{where}.{key}: {given!r} conflicts with {where}.preset {name!r} ({key} {value}); "
                             f"drop {where}.{key} or choose another preset")
        out[key] = value
    return out


def preset_params(name: str, vocab_size: int, tie_embeddings: bool = True) -> int:
    """Parameter count of a kiln model built from preset ``name`` with default options (RoPE, pre-norm,
    n_kv_head = n_head, no extra heads): embeddings V*H (+ V*H untied head), per layer attention 4H^2 + SwiGLU
    3HF + two RMSNorm gains 2H, and the final norm H."""
    p = get_preset(name)
    h, f = p.d_model, p.ffn_hidden
    per_layer = 4 * h * h + 3 * h * f + 2 * h
    return vocab_size * h * (1 if tie_embeddings else 2) + p.n_layer * per_layer + h
