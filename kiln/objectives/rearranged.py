"""Decoder objectives on rearranged documents: FIM + horizon length, UL2, CodeGen2.

Each transforms every packed segment at batch time and re-lays the rows out (``relayout.py``: pieces kept in
order, rows truncated or padded to ``seq_len``), then trains next-token prediction through the LM head.

- :class:`FIM` (Bavarian et al. 2022; Ding et al. 2024): token-level FIM of each segment's content (its
  ``<|bos|>``/``<|eos|>`` kept at the ends), loss on the whole sequence, plus the ``hlp`` head's L1 against
  the horizon targets at the middle positions: L = L_NTP + ``hlp_weight`` (0.1) x mean L1. The L1 sum is
  scaled by (NTP targets / HLP targets) of its micro-batch so the trainer's division yields that mean.
- :class:`UL2` (Tay et al. 2022): the mixture of seven denoisers per segment, ``[mode] corrupted targets``,
  loss on targets only; ``attention: prefix`` (bidirectional over ``[mode] corrupted``) or ``causal``.
- :class:`CodeGen2` (Nijkamp et al. 2023): per segment CLM or span corruption with the spans moved to the end.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.clm import lm_loss_sum
from kiln.objectives.relayout import Piece, relayout, split_ends
from kiln.objectives.transforms.codegen2 import CodeGen2Config, codegen2_transform
from kiln.objectives.transforms.common import IGNORE, next_token_targets
from kiln.objectives.transforms.fim import FIMConfig, fim_tokens
from kiln.objectives.transforms.ul2 import DEFAULT_WEIGHTS, UL2Config, ul2_transform


def plain(ids: np.ndarray) -> Piece:
    """An untransformed segment: next-token targets inside it."""
    return Piece(ids, next_token_targets(ids, 1))


class Rearranged(Objective):
    """Shared prepare/loss: ``piece(ids, rng)`` per segment, next-token CE on ``targets``."""

    extra_fill: dict[str, float] = {}

    def piece(self, ids: np.ndarray, rng: np.random.Generator) -> Piece:
        raise NotImplementedError

    def prepare(self, batch: Batch) -> Prepared:
        _, rng = self.next_generators()
        t = relayout(batch, lambda ids: self.piece(ids, rng), self.extra_fill)
        if batch.attention != "document":
            t.pop("segments")
        return Prepared(tensors=t, n_targets=int((t["targets"] != IGNORE).sum()))

    def hidden(self, model: nn.Module, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.backbone(t["tokens"], t["positions"], t.get("segments"), attention="causal")

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        return lm_loss_sum(model, self.hidden(model, t), t["targets"], self.loss_chunk_tokens, self.compile_loss), {}


class FIM(Rearranged):
    """Fill-in-the-middle with horizon-length prediction (see the module docstring)."""

    name = "fim"
    extra_fill = {"hlp_targets": 0.0, "hlp_mask": False}

    def __init__(self, rate: float = 0.5, spm_rate: float = 0.5, hlp_weight: float = 0.1) -> None:
        self.config = FIMConfig(rate, spm_rate)
        self.hlp_weight = hlp_weight

    @property
    def heads(self) -> dict[str, dict]:
        return {"hlp": {}} if self.hlp_weight > 0 else {}

    def piece(self, ids: np.ndarray, rng: np.random.Generator) -> Piece:
        head, inner, tail = split_ends(ids)
        if len(inner) < 2:
            return Piece(ids, next_token_targets(ids, 1), {"hlp_targets": np.zeros(len(ids), np.float32),
                                                           "hlp_mask": np.zeros(len(ids), bool)})
        ex = fim_tokens(inner, rng, self.config)
        tokens = np.concatenate([head, ex.tokens, tail]).astype(np.int64)
        pad_h, pad_t = np.zeros(len(head), np.float32), np.zeros(len(tail), np.float32)
        return Piece(tokens, next_token_targets(tokens, 1), {
            "hlp_targets": np.concatenate([pad_h, ex.hlp_targets, pad_t]),
            "hlp_mask": np.concatenate([pad_h.astype(bool), ex.hlp_mask, pad_t.astype(bool)])})

    def prepare(self, batch: Batch) -> Prepared:
        p = super().prepare(batch)
        n_hlp = int(p.tensors["hlp_mask"].sum())
        p.extra["hlp_scale"] = p.n_targets / max(n_hlp, 1)
        return p

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        hidden = self.hidden(model, t)
        ntp = lm_loss_sum(model, hidden, t["targets"], self.loss_chunk_tokens, self.compile_loss)
        if self.hlp_weight <= 0:
            return ntp, {}
        mask = t["hlp_mask"]
        pred = model.heads["hlp"](hidden[mask]).float()
        l1_sum = (pred - t["hlp_targets"][mask]).abs().sum()
        loss = ntp + self.hlp_weight * prepared.extra["hlp_scale"] * l1_sum
        return loss, {"ntp_sum": ntp.detach(), "hlp_l1_sum": l1_sum.detach(), "hlp_n": mask.sum()}


class UL2(Rearranged):
    """UL2's mixture of denoisers in a decoder (see the module docstring)."""

    name = "ul2"
    extra_fill = {"prefix": False}

    def __init__(self, attention: Literal["prefix", "causal"] = "prefix", weights: dict[str, float] | None = None,
                 overflow: Literal["error", "cap"] = "cap") -> None:
        if attention not in ("prefix", "causal"):
            raise ValueError(f"ul2 attention must be 'prefix' or 'causal', got {attention!r}")
        self.attention = attention
        self.config = UL2Config(weights=dict(weights or DEFAULT_WEIGHTS), overflow=overflow)

    def piece(self, ids: np.ndarray, rng: np.random.Generator) -> Piece:
        if len(ids) < 2:
            return Piece(ids, np.full(len(ids), IGNORE, dtype=np.int64), {"prefix": np.zeros(len(ids), bool)})
        ex = ul2_transform(ids, rng, self.config)
        return Piece(ex.tokens, ex.targets, {"prefix": np.arange(len(ex.tokens)) < ex.prefix_len})

    def hidden(self, model: nn.Module, t: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.attention == "causal":
            return super().hidden(model, t)
        return model.backbone(t["tokens"], t["positions"], t.get("segments"), attention="prefix", prefix=t["prefix"])


class CodeGen2(Rearranged):
    """CodeGen2's per-document CLM / span-corruption mixture (see the module docstring)."""

    name = "codegen2"

    def __init__(self, p_clm: float = 0.5, mean_span: float = 3.0, density: float = 0.15,
                 loss_on: Literal["all", "targets"] = "all") -> None:
        self.config = CodeGen2Config(p_clm, mean_span, density, loss_on, overflow="cap")

    def piece(self, ids: np.ndarray, rng: np.random.Generator) -> Piece:
        if len(ids) < 2:
            return plain(ids)
        ex = codegen2_transform(ids, rng, self.config)
        return Piece(ex.tokens, ex.targets)



