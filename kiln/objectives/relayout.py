"""Re-laying out packed rows after a document-level transform that changes lengths (FIM, UL2, CodeGen2).

The loader packs documents into rows of ``seq_len`` before any objective runs, but FIM adds four marker tokens,
UL2 a mode token and sentinels, CodeGen2 sentinels and ``<|sep|>``/``<|eoi|>``. So these objectives transform
*per packed segment at batch time*: every segment of a row (a whole document or one piece of a long one) is
transformed on its own, and the row is laid out again from the transformed pieces in their original order,
padded to ``seq_len`` -- or truncated, the overflow of the last piece that does not fit being dropped (its
next-token target at the cut is dropped too, so no target points at a missing token). A segment keeps its id;
positions restart per segment under document attention and run 0..seq_len-1 under causal attention, as in
:class:`kiln.data.loader.Batch`. Under causal attention (no segments for the model) targets still stay inside
a piece. This costs a few tokens per row and keeps packing, the loader and its exact resume untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kiln.data.loader import Batch
from kiln.objectives.transforms.common import BOS_ID, EOS_ID, IGNORE, PAD_ID


@dataclass
class Piece:
    """One transformed segment: its tokens, next-token ``targets`` (IGNORE = no loss) and per-token extras."""

    tokens: np.ndarray
    targets: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def split_ends(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head, inner, tail): a leading ``<|bos|>`` and a trailing ``<|eos|>`` (when present) and what is between."""
    lo = 1 if len(ids) and ids[0] == BOS_ID else 0
    hi = len(ids) - 1 if len(ids) > lo and ids[-1] == EOS_ID else len(ids)
    return ids[:lo], ids[lo:hi], ids[hi:]


def relayout(batch: Batch, transform: Callable[[np.ndarray], Piece],
             extra_fill: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Transform every segment of every row and lay the rows out again (see the module docstring).

    Returns ``tokens``, ``segments``, ``positions``, ``targets`` (B, T) and one (B, T) tensor per extra (dtype
    of the piece's array, ``extra_fill`` where no piece wrote), on the batch's device.
    """
    tokens, segments = batch.tokens.cpu().numpy(), batch.segments.cpu().numpy()
    B, T = tokens.shape
    out = {"tokens": np.full((B, T), PAD_ID, dtype=np.int64), "segments": np.full((B, T), -1, dtype=np.int64),
           "positions": np.zeros((B, T), dtype=np.int64), "targets": np.full((B, T), IGNORE, dtype=np.int64)}
    extras: dict[str, np.ndarray] = {}
    for b in range(B):
        at = 0
        for s in dict.fromkeys(segments[b][segments[b] >= 0].tolist()):  # segment ids in row order
            piece = transform(tokens[b][segments[b] == s])
            n = min(len(piece.tokens), T - at)
            if n <= 0:
                break
            span = slice(at, at + n)
            out["tokens"][b, span] = piece.tokens[:n]
            out["segments"][b, span] = s
            out["positions"][b, span] = np.arange(n)
            out["targets"][b, span] = piece.targets[:n]
            if n < len(piece.tokens):  # truncated: the cut token is gone, so is its target
                out["targets"][b, at + n - 1] = IGNORE
            for name, values in piece.extra.items():
                if name not in extras:
                    extras[name] = np.full((B, T), (extra_fill or {}).get(name, 0), dtype=values.dtype)
                extras[name][b, span] = values[:n]
            at += n
    if batch.attention != "document":
        out["positions"][:] = np.arange(T)
    device = batch.tokens.device
    return {k: torch.from_numpy(v).to(device) for k, v in {**out, **extras}.items()}
