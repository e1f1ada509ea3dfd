"""ERNIE-Gram explicit n-gram masking (Xiao et al. 2021, sec. 3.1-3.2: explicitly n-gram MLM and comprehensive
n-gram prediction).

A document is segmented by maximum matching against the t-test lexicon (``ngram_lexicon``). Whole units are
drawn in random order until they cover ``ratio`` (0.15) of its non-special tokens (the token budget is
stochastically rounded, a unit that would overshoot it is skipped). Each masked n-gram collapses to a single
``<|mask|>``, so the sequence shortens by sum(n - 1). Targets:

* coarse: at each ``<|mask|>``, the n-gram's identity over V_tokens + V_ngrams (``NgramLexicon.coarse_id``);
* fine: one slot per token of each masked unit (unigrams included), predicting that token. Fine slots are
  extra query positions for the model: each carries its token's original position, sees the whole collapsed
  sequence (the context and the coarse ``<|mask|>``) and itself, and no other slot (``fine_slot_attention``).

``positions`` gives every collapsed token its original index (a ``<|mask|>`` the index of its n-gram's first
token). ``ernie_gram_invert`` expands the masks back with the fine targets and recovers the document exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kiln.objectives.transforms.common import IGNORE, MASK_ID, NUM_SPECIAL, as_ids
from kiln.objectives.transforms.ngram_lexicon import NgramLexicon, max_match
from kiln.objectives.transforms.spans import stochastic_round


@dataclass(frozen=True)
class ERNIEGramConfig:
    ratio: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"masking ratio must be in (0, 1), got {self.ratio}")


@dataclass
class ERNIEGramExample:
    inputs: np.ndarray  # collapsed sequence: kept tokens and one <|mask|> per masked unit
    positions: np.ndarray  # original index of each collapsed token
    coarse_targets: np.ndarray  # coarse id at each <|mask|>, IGNORE elsewhere
    fine_targets: np.ndarray  # (F,) the token each fine slot predicts
    fine_positions: np.ndarray  # (F,) its original index (for position embeddings)
    fine_anchor: np.ndarray  # (F,) index in ``inputs`` of the coarse <|mask|> it belongs to
    fine_offset: np.ndarray  # (F,) 0..n-1 within its n-gram
    unit_starts: np.ndarray  # (K,) original start of each masked unit
    unit_lengths: np.ndarray  # (K,) its n
    n_eligible: int  # non-special tokens of the document

    @property
    def n_masked_tokens(self) -> int:
        return int(self.unit_lengths.sum())


def choose_units(units: list[tuple[int, int]], tokens: np.ndarray, ratio: float,
                 rng: np.random.Generator) -> tuple[list[tuple[int, int]], int]:
    """Masked units (sorted by start) covering the stochastically rounded budget, and the eligible count."""
    eligible = [(s, n) for s, n in units if bool((tokens[s : s + n] >= NUM_SPECIAL).all())]
    n_eligible = int((tokens >= NUM_SPECIAL).sum())
    budget = stochastic_round(ratio * n_eligible, rng)
    chosen, covered = [], 0
    for k in rng.permutation(len(eligible)):
        if covered == budget:
            break
        s, n = eligible[int(k)]
        if covered + n <= budget:
            chosen.append((s, n))
            covered += n
    return sorted(chosen), n_eligible


def ernie_gram_mask(tokens: np.ndarray | Sequence[int], lexicon: NgramLexicon, rng: np.random.Generator,
                    config: ERNIEGramConfig = ERNIEGramConfig()) -> ERNIEGramExample:
    """Segment, choose n-grams, collapse them, and build coarse and fine targets (module docstring)."""
    ids = as_ids(tokens)
    chosen, n_eligible = choose_units(max_match(ids, lexicon), ids, config.ratio, rng)
    starts = {s: n for s, n in chosen}
    inputs, positions, coarse = [], [], []
    f_tgt, f_pos, f_anchor, f_off = [], [], [], []
    i = 0
    while i < len(ids):
        n = starts.get(i)
        if n is None:
            inputs.append(int(ids[i]))
            positions.append(i)
            coarse.append(IGNORE)
            i += 1
            continue
        anchor = len(inputs)
        inputs.append(MASK_ID)
        positions.append(i)
        coarse.append(lexicon.coarse_id(ids[i : i + n]))
        for k in range(n):
            f_tgt.append(int(ids[i + k]))
            f_pos.append(i + k)
            f_anchor.append(anchor)
            f_off.append(k)
        i += n

    def arr(x: list[int]) -> np.ndarray:
        return np.asarray(x, dtype=np.int64)

    return ERNIEGramExample(
        inputs=arr(inputs), positions=arr(positions), coarse_targets=arr(coarse),
        fine_targets=arr(f_tgt), fine_positions=arr(f_pos), fine_anchor=arr(f_anchor), fine_offset=arr(f_off),
        unit_starts=arr([s for s, _ in chosen]), unit_lengths=arr([n for _, n in chosen]), n_eligible=n_eligible,
    )


def ernie_gram_invert(ex: ERNIEGramExample) -> np.ndarray:
    """The original document: each coarse ``<|mask|>`` replaced by its fine targets in order."""
    out: list[int] = []
    for j, tok in enumerate(ex.inputs.tolist()):
        if ex.coarse_targets[j] == IGNORE:
            out.append(tok)
        else:
            out += ex.fine_targets[ex.fine_anchor == j].tolist()
    return np.asarray(out, dtype=np.int64)


def fine_slot_attention(n_inputs: int, n_slots: int) -> torch.Tensor:
    """Boolean (n_inputs + n_slots) square mask, True = query row may attend key column.

    The collapsed sequence attends to itself bidirectionally and never to a slot; a slot attends to the whole
    collapsed sequence and to itself only, so fine predictions of one n-gram are made independently.
    """
    T = n_inputs + n_slots
    allowed = torch.zeros(T, T, dtype=torch.bool)
    allowed[:, :n_inputs] = True
    idx = torch.arange(n_inputs, T)
    allowed[idx, idx] = True
    return allowed
