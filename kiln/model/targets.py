"""Next-token targets of a packed batch: what a causal LM is scored against.

Shared by the CLM objective, evaluation (bits per byte) and the corpus's reference-model scoring, so all
three count exactly the same targets. It lives with the model, which every one of them may import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kiln.data.loader import Batch

IGNORE = -100  # cross-entropy's ignore_index: a position with no target


def next_token_targets(batch: Batch) -> torch.Tensor:
    """targets[b, i] = tokens[b, i+1] where that is a valid next token, else IGNORE.

    A next token is valid when it is not padding (segment -1) and, under document attention, in the same
    packed segment (targets never cross a document boundary).
    """
    tokens, seg = batch.tokens, batch.segments
    targets = torch.full_like(tokens, IGNORE)
    nxt_seg = seg[:, 1:]
    valid = nxt_seg >= 0
    if batch.attention == "document":
        valid &= nxt_seg == seg[:, :-1]
    targets[:, :-1] = torch.where(valid, tokens[:, 1:], torch.full_like(tokens[:, 1:], IGNORE))
    return targets
