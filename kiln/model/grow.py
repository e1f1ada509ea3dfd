"""Depth up-scaling: a deeper model made from a trained one by repeating some of its layers.

Papers: "Yi: Open Foundation Models", 01.AI (Young et al.), 2024, arXiv:2403.04652 (Yi-9B: Yi-6B's 32 layers
grown to 48 by duplicating the middle 16, then continued pretraining); "SOLAR 10.7B: Scaling Large Language
Models with Simple yet Effective Depth Up-Scaling", Kim et al., 2023, arXiv:2312.15166 (DUS: two copies of an
n-layer model, the last m layers of one and the first m of the other dropped, concatenated: 2(n - m) layers).

A *layer plan* is the list ``src`` with one entry per layer of the grown model: grown layer ``i`` is a copy of
parent layer ``src[i]`` (every tensor of ``backbone.blocks.{src[i]}``, bit for bit). Every other tensor (token
and position embeddings, final norm, LM head, extra heads) is copied unchanged. Two plans are built in:

- :func:`duplicate_plan` ``(n, a, b)``: layers ``a .. b-1`` repeated right after ``b-1`` (Yi);
  ``[0 .. b-1, a .. b-1, b .. n-1]``, n + (b - a) layers;
- :func:`solar_plan` ``(n, m)``: ``[0 .. n-m-1, m .. n-1]``, 2(n - m) layers (SOLAR's DUS).

What the grown config keeps exact, and what is refused (:class:`GrowError`, naming the field):

- ``norm: mix`` (Mix-LN): the first floor(mix_alpha * n_layer) layers are Post-LN, so the count depends on the
  depth. A grown layer keeps its parent's placement; when those Post-LN layers are again a prefix of the grown
  stack, ``mix_alpha`` is re-chosen so that the grown config has exactly that many (the recipe must then set
  that ``model.mix_alpha``; :func:`recipe_overrides` says so); when they are not a prefix (the plan repeats
  Post-LN layers after Pre-LN ones), growing is refused. ``pre`` and ``post`` are always exact.
- ``moe`` (mixture-of-experts MLPs in every ``moe.every``-th layer): a grown layer must be a MoE layer exactly
  when its parent layer was; with ``every: 1`` that always holds (experts and routers are copied), otherwise
  the plan is refused unless it happens to preserve the pattern, naming the first layer that would change kind.
- ``masked_heads``: each grown layer masks the heads its parent layer masked.
- An ELECTRA ``generator`` head has the model's depth: its blocks are grown with the same plan.

The grown model is not the parent's function (a repeated layer adds its update to the residual stream twice),
but it starts close to the parent's loss and far below a random model's (tests/test_grow.py measures both).

Optimizer state: none is carried. The grown checkpoint holds weights only, and continued pretraining through
``train.init_from`` starts fresh AdamW moments (and a fresh step count, learning-rate warm-up and schedule), as
Yi and SOLAR continue pretraining in practice. Duplicated moments would belong to a different loss surface
(each copy of a layer now sees the other's output), and the parent's schedule had usually decayed to its end.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING

import torch

from kiln.model.config import TransformerConfig

if TYPE_CHECKING:
    from kiln.model.heads import LanguageModel

# state-dict prefixes whose next component is a layer index to remap
LAYER_PREFIXES = ("backbone.blocks.", "heads.generator.backbone.blocks.")
_LAYER_KEY = re.compile(r"^(?P<prefix>" + "|".join(map(re.escape, LAYER_PREFIXES)) + r")(?P<i>\d+)\.(?P<rest>.+)$")


class GrowError(ValueError):
    """A layer plan that cannot be applied to this model; the message names the field or option."""


def duplicate_plan(n_layer: int, a: int, b: int) -> list[int]:
    """Yi-style middle duplication: parent layers ``a .. b-1`` repeated right after ``b-1``."""
    if not 0 <= a < b <= n_layer:
        raise GrowError(f"--duplicate {a}:{b}: need 0 <= a < b <= n_layer ({n_layer}); the copied layers are "
                        f"a .. b-1")
    return [*range(b), *range(a, b), *range(b, n_layer)]


def solar_plan(n_layer: int, m: int) -> list[int]:
    """SOLAR's depth up-scaling: the parent without its last ``m`` layers, then the parent without its first
    ``m``: 2(n - m) layers."""
    if not 0 < m < n_layer:
        raise GrowError(f"--solar {m}: need 0 < m < n_layer ({n_layer}); the grown model has 2(n - m) layers")
    return [*range(n_layer - m), *range(m, n_layer)]


def parse_duplicate(spec: str, n_layer: int) -> list[int]:
    """``"a:b"`` -> :func:`duplicate_plan`; a clear error for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if m is None:
        raise GrowError(f"--duplicate {spec!r}: expected a:b (two layer indices, copies layers a .. b-1), e.g. 1:3")
    return duplicate_plan(n_layer, int(m.group(1)), int(m.group(2)))


def _mix_alpha_for(n_post: int, n_layer: int) -> float:
    """A ``mix_alpha`` with floor(alpha * n_layer) == n_post exactly (checked, float rounding included)."""
    for alpha in (n_post / n_layer, (n_post + 0.5) / n_layer):
        if math.floor(alpha * n_layer) == n_post and 0.0 <= alpha <= 1.0:
            return alpha
    raise GrowError(f"model.mix_alpha: no value gives exactly {n_post} Post-LN layers of {n_layer}")


def _check_plan(cfg: TransformerConfig, src: list[int]) -> None:
    if not src:
        raise GrowError("the layer plan is empty")
    bad = [s for s in src if not 0 <= s < cfg.n_layer]
    if bad:
        raise GrowError(f"layer plan names parent layer {bad[0]}, but the parent has n_layer={cfg.n_layer}")


def grow_config(cfg: TransformerConfig, src: list[int]) -> TransformerConfig:
    """The grown model's config: ``n_layer = len(src)``, Mix-LN / MoE / masked heads kept exact or refused
    (see the module docstring)."""
    _check_plan(cfg, src)
    n = len(src)
    changes: dict[str, object] = {"n_layer": n}
    if cfg.norm == "mix":
        post = [s < cfg.n_post_ln for s in src]
        n_post = sum(post)
        if post != [i < n_post for i in range(n)]:
            first = next(i for i in range(n) if post[i] and not all(post[:i]))  # Post-LN after a Pre-LN layer
            raise GrowError(f"model.norm: mix (Mix-LN, {cfg.n_post_ln} leading Post-LN layers): this plan puts "
                            f"Post-LN parent layer {src[first]} at grown layer {first}, after Pre-LN layers; "
                            "Mix-LN needs the Post-LN layers first. Duplicate only Post-LN layers (indices < "
                            f"{cfg.n_post_ln}) or only Pre-LN layers (indices >= {cfg.n_post_ln})")
        changes["mix_alpha"] = _mix_alpha_for(n_post, n)
    if cfg.moe is not None:
        every = cfg.moe["every"]
        for i, s in enumerate(src):
            if cfg.is_moe_layer(s) != ((i + 1) % every == 0):
                kind = "a mixture-of-experts" if cfg.is_moe_layer(s) else "a dense"
                raise GrowError(f"model.moe.every={every}: grown layer {i} would copy parent layer {s}, {kind} "
                                f"layer, but layer {i} of the grown model is "
                                f"{'dense' if cfg.is_moe_layer(s) else 'a mixture of experts'}; growing a MoE "
                                "model is supported when every layer is MoE (every: 1) or the plan keeps the "
                                f"every-{every} pattern (duplicate a multiple of {every} layers starting after a "
                                "MoE layer)")
        if every > n:
            raise GrowError(f"model.moe.every={every} > grown n_layer={n}")
    if cfg.masked_heads:
        changes["masked_heads"] = [[i, h] for i, s in enumerate(src) for layer, h in cfg.masked_heads if layer == s]
    grown = dataclasses.replace(cfg, **changes)
    if grown.n_post_ln != sum(s < cfg.n_post_ln for s in src):  # the invariant the checks above establish
        raise GrowError(f"model.norm: {cfg.norm}: the grown model would not keep each layer's norm placement")
    return grown


def grow_state(state: dict[str, torch.Tensor], src: list[int]) -> dict[str, torch.Tensor]:
    """The grown model's state dict: layer ``i`` of every stack in :data:`LAYER_PREFIXES` from parent layer
    ``src[i]``, every other tensor as it is. Tensors are cloned, never shared between copies."""
    layers: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = tensor.detach().clone()
        else:
            layers.setdefault((m.group("prefix"), int(m.group("i"))), {})[m.group("rest")] = tensor
    for prefix in sorted({p for p, _ in layers}):
        for i, s in enumerate(src):
            if (prefix, s) not in layers:
                raise GrowError(f"the parent's state has no layer {s} under {prefix!r}")
            for rest, tensor in layers[(prefix, s)].items():
                out[f"{prefix}{i}.{rest}"] = tensor.detach().clone()
    return out


def grow_model(model: LanguageModel, src: list[int]) -> LanguageModel:
    """A new, deeper :class:`~kiln.model.heads.LanguageModel` on CPU whose layers follow the plan ``src``."""
    cfg = grow_config(model.config, src)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        grown = cfg.build()
    state = grow_state({k: v.detach().cpu() for k, v in model.state_dict().items()}, src)
    missing, unexpected = grown.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GrowError(f"grown weights do not match the grown config: missing {missing[:6]}, unexpected "
                        f"{unexpected[:6]}")
    return grown


def recipe_overrides(parent: TransformerConfig, grown: TransformerConfig, path: str) -> list[str]:
    """The recipe overrides that continue pretraining from the grown checkpoint at ``path``."""
    out = [f"model.n_layer={grown.n_layer}"]
    if grown.norm == "mix" and grown.mix_alpha != parent.mix_alpha:
        out.append(f"model.mix_alpha={grown.mix_alpha!r}")
    if grown.masked_heads != parent.masked_heads:
        out.append(f"'model.masked_heads={grown.masked_heads}'")
    out.append(f"train.init_from={path}")
    return out
