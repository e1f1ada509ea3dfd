"""Universal Knowledge-Text Prediction masking for the ``ernie3`` objective (model-free, token ids only).

ERNIE 3.0 (Sun et al. 2021, "ERNIE 3.0: Large-scale Knowledge Enhanced Pre-training for Language Understanding
and Generation", arXiv:2107.02137, sec. 3.2.2) concatenates a knowledge triple with the sentence it comes from
and masks words in both. The corpus step ``knowledge_triples`` (``kiln/corpus/steps/knowledge.py``) writes the
triples in front of a document as ``<|bos|><|sep|>HEAD<|sep|>REL<|sep|>TAIL<|sep|>...<|sep|><|sep|>TEXT``.

:func:`find_knowledge` finds, in a packed batch, every block that starts a document piece (``<|bos|><|sep|>``),
its fields (runs between ``<|sep|>``; an empty one closes the block), the entities (fields 0 and 2 of each
triple; equal token sequences are one entity) and each entity's mentions in the document's text (the same token
sequence after the block, up to the next ``<|bos|>`` or segment change). :func:`uktp_mask` then selects each
entity with probability ``kg_prob`` and replaces every token of it, in the triple and in all its text mentions
at once, by ``<|mask|>`` (the joint masking of a triple and its text); the other eligible tokens get BERT
masking (``transforms.mlm``, ``ratio`` of them per row or packed segment, 80/10/10). Targets are the original
tokens at every masked position. Documents without a block get plain MLM masking. All randomness comes from
the given generator: deterministic per (tokens, segments, generator state, arguments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kiln.objectives.transforms.common import BOS_ID, EOS_ID, IGNORE, MASK_ID, SEP_ID
from kiln.objectives.transforms.mlm import MLMConfig, mlm_mask


@dataclass
class Entity:
    """One entity of a knowledge block: its tokens, its spans in the block and its mentions in the text."""

    row: int
    tokens: tuple[int, ...]
    in_block: list[tuple[int, int]] = field(default_factory=list)  # [start, end) positions in the row
    mentions: list[tuple[int, int]] = field(default_factory=list)

    def positions(self) -> list[int]:
        return [i for s, e in self.in_block + self.mentions for i in range(s, e)]


def _occurrences(row: np.ndarray, pattern: tuple[int, ...], start: int, end: int) -> list[tuple[int, int]]:
    """Non-overlapping occurrences of ``pattern`` in ``row[start:end]``, left to right."""
    out, n, i = [], len(pattern), start
    while i + n <= end:
        if tuple(row[i : i + n].tolist()) == pattern:
            out.append((i, i + n))
            i += n
        else:
            i += 1
    return out


def find_knowledge(tokens: torch.Tensor, segments: torch.Tensor | None = None) -> list[Entity]:
    """Every knowledge block's entities with their mentions, in row and position order (module docstring)."""
    toks = tokens.cpu().numpy()
    segs = segments.cpu().numpy() if segments is not None else np.zeros_like(toks)
    entities: list[Entity] = []
    B, L = toks.shape
    for b in range(B):
        row, seg = toks[b], segs[b]
        for i in np.flatnonzero((row[:-1] == BOS_ID) & (row[1:] == SEP_ID) & (seg[:-1] >= 0)):
            s = seg[i]
            fields, j, cur, closed = [], i + 2, i + 2, False
            while j < L and seg[j] == s and row[j] not in (BOS_ID, EOS_ID):
                if row[j] == SEP_ID:
                    if j == cur:
                        closed = True
                        j += 1
                        break
                    fields.append((cur, j))
                    cur = j + 1
                j += 1
            text_end = j
            while closed and text_end < L and seg[text_end] == s and row[text_end] != BOS_ID:
                text_end += 1
            found: dict[tuple[int, ...], Entity] = {}
            for k, (fs, fe) in enumerate(fields):
                if k % 3 == 1:  # the relation
                    continue
                key = tuple(row[fs:fe].tolist())
                ent = found.setdefault(key, Entity(b, key))
                ent.in_block.append((fs, fe))
            for ent in found.values():
                if closed:
                    ent.mentions = _occurrences(row, ent.tokens, j, text_end)
                entities.append(ent)
    return entities


@dataclass
class UKTPExample:
    """NLU ``inputs``; ``targets`` (original ids where masked, else IGNORE); ``knowledge`` (bool): the positions
    masked jointly as knowledge (entity tokens in triples and their text mentions)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    knowledge: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def uktp_mask(tokens: torch.Tensor, vocab_size: int, generator: torch.Generator, config: MLMConfig | None = None,
              segments: torch.Tensor | None = None, per_segment: bool = False,
              kg_prob: float = 0.5) -> UKTPExample:
    """Joint knowledge masking, then BERT masking of the remaining tokens (module docstring)."""
    if not 0.0 <= kg_prob <= 1.0:
        raise ValueError(f"kg_prob must be in [0, 1], got {kg_prob}")
    knowledge = torch.zeros(tokens.shape, dtype=torch.bool)
    for ent in find_knowledge(tokens, segments):
        if float(torch.rand(1, generator=generator)) < kg_prob:
            pos = ent.positions()
            knowledge[ent.row, pos] = True
    knowledge = knowledge.to(tokens.device)
    seg = segments if segments is not None else torch.zeros_like(tokens)
    rest = mlm_mask(tokens, vocab_size, generator, config or MLMConfig(), segments=torch.where(knowledge, -1, seg),
                    per_segment=per_segment)
    inputs = torch.where(knowledge, torch.full_like(tokens, MASK_ID), rest.inputs)
    targets = torch.where(knowledge, tokens, rest.targets)
    return UKTPExample(inputs=inputs, targets=targets, knowledge=knowledge)
