"""``train.init_from``: start a run's weights from a finished model instead of a random init.

The source is anything ``kiln.model.load.load_model`` reads (a checkpoint step folder, a run directory or
its ``train/`` folder = latest checkpoint, a ``kiln export`` folder). Its architecture must be the one the
recipe's model section builds: every field that shapes the weights (vocabulary size, width, depth, heads,
FFN width, tied embeddings, positions, norm placement) must match, or the run is refused naming each
difference. Fields that do not shape weights (RoPE base, default attention mask, norm eps, backend) may
differ: continuing with a new RoPE base or as an encoder is a legitimate use. The backbone and LM head are
copied; extra heads are copied where the source has the same head, and start fresh otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kiln.model.config import TransformerConfig

# fields of TransformerConfig that decide which weights exist and their shapes
SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden", "tie_embeddings",
                "positions", "norm", "n_post_ln")


class InitFromError(ValueError):
    """``train.init_from`` names a model whose architecture differs from the recipe's."""


def _value(cfg: TransformerConfig, name: str) -> object:
    return getattr(cfg, name)  # n_kv_head and ffn_hidden are resolved to ints when a config is built


def architecture_differences(source: TransformerConfig, target: TransformerConfig) -> list[str]:
    """``field: source X, recipe Y`` for every weight-shaping field that differs (vocabulary first)."""
    out = [f"{f}: init_from {_value(source, f)!r}, recipe {_value(target, f)!r}"
           for f in SHAPE_FIELDS if _value(source, f) != _value(target, f)]
    if target.positions == "learned" and source.max_seq_len < target.max_seq_len:
        out.append(f"max_seq_len: init_from {source.max_seq_len} learned positions, recipe needs "
                   f"{target.max_seq_len}")
    return out


def init_weights_from(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the weights of the model at ``path`` into ``model`` (before any wrapping); the heads left fresh.

    Raises :class:`InitFromError` naming every differing field when the architectures differ.
    """
    from kiln.model.load import load_model

    source = load_model(path, "cpu")
    diffs = architecture_differences(source.config, model.config)
    if diffs:
        vocab = " (the vocabulary differs: was it trained with the same tokenizer?)" if any(
            d.startswith("vocab_size") for d in diffs) else ""
        raise InitFromError(f"train.init_from {path}: architecture differs from the recipe's model section"
                            f"{vocab}: " + "; ".join(diffs))
    src = source.state_dict()
    own = model.state_dict()
    fresh = sorted({k.split(".")[1] for k in own if k.startswith("heads.")
                    and (k not in src or src[k].shape != own[k].shape)})
    with torch.no_grad():
        for key, tensor in own.items():
            head = key.split(".")[1] if key.startswith("heads.") else None
            if head in fresh:
                continue
            if key not in src:
                raise InitFromError(f"train.init_from {path}: the source has no weight {key}")
            tensor.copy_(src[key].to(tensor.dtype))
    return fresh
