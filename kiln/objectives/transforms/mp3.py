"""MP3 position prediction (Zhai et al. 2022, "Position Prediction as an Effective Pretraining Strategy", sec. 3).

The model gets tokens without position embeddings. A random ``1 - eta`` subset of each document (eta = 0.75
masked, so 25% kept; at least one token) is the *context*: in every layer all tokens are queries but keys and
values come from context tokens only. A linear head classifies each token's position; the target is its true
position. Padding is never context and never a target.

``mp3_context`` draws the context of one document (numpy); ``mp3_batch`` does it for a packed ``Batch``
(torch), per document under document attention or per row under plain causal attention, and returns the key
mask and a (B, L, L) boolean attention mask (True = query row may attend key column): keys must be context and,
under document attention, in the query's document. A padding query attends only to itself so no row is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kiln.data.loader import Batch
from kiln.objectives.transforms.common import IGNORE
from kiln.objectives.transforms.mlm import select_exact


@dataclass(frozen=True)
class MP3Config:
    eta: float = 0.75  # fraction of tokens that are *not* context

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta < 1.0:
            raise ValueError(f"eta must be in [0, 1), got {self.eta}")


@dataclass
class MP3Batch:
    is_context: torch.Tensor  # (B, L) bool: this token serves as key/value
    targets: torch.Tensor  # (B, L) true positions, IGNORE on padding
    attention: torch.Tensor  # (B, L, L) bool: query i may attend key j


def n_context(length: int, eta: float) -> int:
    return min(length, max(1, round((1.0 - eta) * length)))


def mp3_context(length: int, rng: np.random.Generator, config: MP3Config = MP3Config()) -> np.ndarray:
    """(length,) bool: exactly ``max(1, round((1 - eta) * length))`` context positions, uniformly chosen."""
    if length < 1:
        raise ValueError("MP3 needs at least one token")
    mask = np.zeros(length, dtype=bool)
    mask[rng.choice(length, size=n_context(length, config.eta), replace=False)] = True
    return mask


def key_attention(is_context: torch.Tensor, segments: torch.Tensor, document: bool) -> torch.Tensor:
    """(B, L, L) bool: keys only context tokens (of the query's document when ``document``)."""
    allowed = is_context[:, None, :].expand(-1, is_context.shape[1], -1).clone()
    if document:
        allowed &= segments[:, :, None] == segments[:, None, :]
    pad = segments < 0
    eye = torch.eye(is_context.shape[1], dtype=torch.bool, device=is_context.device)
    allowed = torch.where(pad[:, :, None], eye[None], allowed)
    return allowed


def mp3_batch(batch: Batch, generator: torch.Generator, config: MP3Config = MP3Config()) -> MP3Batch:
    """Context selection, position targets and the key mask for a packed batch."""
    real = batch.segments >= 0
    document = batch.attention == "document"
    groups = batch.segments if document else None
    is_context = select_exact(real, 1.0 - config.eta, generator, groups, min_per_group=1)
    targets = torch.where(real, batch.positions, torch.full_like(batch.positions, IGNORE))
    return MP3Batch(is_context, targets, key_attention(is_context, batch.segments, document))
