"""Shared pieces of the objective transforms: the ignore index and the reserved special-token ids.

Every transform here is a pure, model-free function of token ids, a random generator and a config. Special
tokens occupy the first ``NUM_SPECIAL`` ids of every kiln vocabulary (``kiln.tokenizer.special``), so a token
is special iff its id is below ``NUM_SPECIAL``.
"""

from __future__ import annotations

import numpy as np
import torch

from kiln.tokenizer.special import (
    BOS,
    EOI,
    EOS,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    MASK,
    MODE_R,
    MODE_S,
    MODE_X,
    NUM_SENTINELS,
    PAD,
    SEP,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    sentinel,
)

IGNORE = -100
NUM_SPECIAL = len(SPECIAL_TOKENS)

BOS_ID = SPECIAL_IDS[BOS]
EOS_ID = SPECIAL_IDS[EOS]
PAD_ID = SPECIAL_IDS[PAD]
MASK_ID = SPECIAL_IDS[MASK]
SEP_ID = SPECIAL_IDS[SEP]
FIM_PREFIX_ID = SPECIAL_IDS[FIM_PREFIX]
FIM_SUFFIX_ID = SPECIAL_IDS[FIM_SUFFIX]
FIM_MIDDLE_ID = SPECIAL_IDS[FIM_MIDDLE]
EOI_ID = SPECIAL_IDS[EOI]
MODE_IDS: dict[str, int] = {"r": SPECIAL_IDS[MODE_R], "x": SPECIAL_IDS[MODE_X], "s": SPECIAL_IDS[MODE_S]}
SENTINEL_IDS: np.ndarray = np.array([SPECIAL_IDS[sentinel(i)] for i in range(NUM_SENTINELS)], dtype=np.int64)
SENTINEL_LO, SENTINEL_HI = int(SENTINEL_IDS[0]), int(SENTINEL_IDS[-1])  # contiguous, checked below
assert SENTINEL_HI - SENTINEL_LO + 1 == NUM_SENTINELS


def is_special(tokens: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Elementwise: is this id one of the reserved special tokens?"""
    return tokens < NUM_SPECIAL


def is_sentinel(tokens: np.ndarray) -> np.ndarray:
    return (tokens >= SENTINEL_LO) & (tokens <= SENTINEL_HI)


def as_ids(tokens: np.ndarray | list[int] | torch.Tensor) -> np.ndarray:
    """A 1-D int64 numpy copy of one document's token ids."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens, dtype=np.int64).copy()
    if arr.ndim != 1:
        raise ValueError(f"expected one document's 1-D token ids, got shape {arr.shape}")
    return arr


def reject_ids(tokens: np.ndarray, forbidden: np.ndarray, what: str) -> None:
    """Raise if the document already contains ids the transform reserves (its output would not invert)."""
    bad = np.isin(tokens, forbidden)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: the document already contains reserved token id {int(tokens[i])} at index {i}")


def next_token_targets(tokens: np.ndarray, loss_from: int) -> np.ndarray:
    """targets[i] = tokens[i+1] for every i + 1 >= ``loss_from``, else IGNORE (decoder-only layouts)."""
    targets = np.full(len(tokens), IGNORE, dtype=np.int64)
    start = max(loss_from, 1)
    if start < len(tokens):
        targets[start - 1 : -1] = tokens[start:]
    return targets
