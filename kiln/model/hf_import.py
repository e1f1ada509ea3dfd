"""Hugging Face import: a ``LlamaForCausalLM`` folder as a kiln :class:`LanguageModel`.

The inverse of :mod:`kiln.model.hf` (same name table, read backwards). It reads ``config.json`` and the
safetensors weights directly (one file or an ``*.index.json`` of shards), so it needs no ``transformers``.
A Llama whose configuration kiln cannot reproduce exactly (biases, rope scaling, a head_dim other than
hidden_size / heads, an activation other than SiLU, ...) is refused with :class:`ImportError_`.

The tokenizer is not converted: a kiln tokenizer reserves its special tokens at fixed ids
(``kiln/tokenizer/special.py``), which an arbitrary Llama vocabulary does not. A folder exported by kiln
round-trips exactly, tokenizer included (its ``tokenizer.json`` is kiln's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from kiln.model.config import TransformerConfig
from kiln.model.heads import LanguageModel
from kiln.model.hf import _LAYER_MAP, _TOP_MAP


class ImportError_(ValueError):  # noqa: N801 - "ImportError" is a builtin with another meaning
    """The checkpoint cannot be imported exactly."""


_TOP_INV = {v: k for k, v in _TOP_MAP.items()}
_LAYER_INV = {v: k for k, v in _LAYER_MAP.items()}


def llama_key_to_kiln(key: str) -> str | None:
    """The kiln state-dict key of a ``LlamaForCausalLM`` weight name (None: not a weight kiln has)."""
    if key in _TOP_INV:
        return _TOP_INV[key]
    parts = key.split(".", 3)  # model.layers.{i}.{rest}
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_INV:
        return f"backbone.blocks.{parts[2]}.{_LAYER_INV[parts[3]]}"
    return None


def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = params.get("rope_type", "default")
    if scaling or rope_type != "default":
        raise ImportError_(f"RoPE scaling ({scaling or rope_type}) has no kiln equivalent")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_llama(hf: dict[str, Any]) -> TransformerConfig:
    """The kiln config of a Llama ``config.json`` dict (refuses what kiln cannot reproduce)."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise ImportError_(f"not a Llama checkpoint (model_type={hf.get('model_type')!r}, architectures={arch})")
    problems = []
    if hf.get("attention_bias", False) or hf.get("mlp_bias", False):
        problems.append("attention_bias/mlp_bias: kiln has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r}: kiln's MLP is SwiGLU (silu)")
    n_head, d_model = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") not in (None, d_model // n_head):
        problems.append(f"head_dim={hf['head_dim']} != hidden_size / num_attention_heads ({d_model // n_head})")
    if hf.get("pretraining_tp", 1) not in (None, 1):
        problems.append(f"pretraining_tp={hf['pretraining_tp']}")
    if problems:
        raise ImportError_("this Llama has no exact kiln twin:\n  " + "\n  ".join(problems))
    return TransformerConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_model=d_model,
        ffn_hidden=hf["intermediate_size"],
        rope_base=_rope_theta(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``folder``'s ``model.safetensors`` or of the shards its index names (on CPU)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def load_llama(folder: str | Path) -> LanguageModel:
    """A kiln :class:`LanguageModel` (fp32, CPU) with the weights of a ``LlamaForCausalLM`` folder."""
    folder = Path(folder)
    cfg = config_from_llama(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    state, unknown = {}, []
    for key, tensor in read_safetensors(folder).items():
        name = llama_key_to_kiln(key)
        if name is None:
            if not key.endswith("rotary_emb.inv_freq"):  # old exports saved the RoPE table; kiln derives it
                unknown.append(key)
        else:
            state[name] = tensor.float()
    if unknown:
        raise ImportError_(f"{folder}: weights kiln has no place for: {', '.join(unknown[:8])}")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["backbone.tok_emb.weight"]
    model = cfg.build()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ImportError_(f"{folder}: missing weights {missing}, unexpected {unexpected}")
    return model
