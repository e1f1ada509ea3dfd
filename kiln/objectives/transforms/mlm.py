"""Masked language modelling inputs and targets (Devlin et al. 2019, "BERT", sec. 3.1 "Task #1: Masked LM").

Of the eligible positions of each row (not padding, not a special token such as ``<|bos|>``), exactly
``round(ratio * n_eligible)`` are selected, uniformly without replacement. A selected position becomes
``<|mask|>`` with probability ``mask_prob`` (0.8), a uniformly random non-special token with probability
``random_prob`` (0.1), and stays unchanged otherwise (0.1). Targets hold the original token at selected
positions and ``IGNORE`` (-100) everywhere else. ELECTRA (Clark et al. 2020) reuses this with 85% / 0% / 15%.

Selection is per row, or per packed segment when ``segments`` are given with ``per_segment=True`` (each
document of a packed row then gets its own share). Everything is drawn from the given ``torch.Generator``, so
the result is a deterministic function of (tokens, segments, generator state, config).

The special ids default to kiln's registry (ids below ``NUM_SPECIAL``, ``<|mask|>``); another vocabulary
passes its own: for BERT's WordPiece, ``mask_id=103`` and ``num_special=999`` ([PAD], [unused*], [UNK],
[CLS], [SEP], [MASK] are ids 0-998), as ``kiln.train.bert_mlm`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.objectives.transforms.common import IGNORE, MASK_ID, NUM_SPECIAL


@dataclass(frozen=True)
class MLMConfig:
    ratio: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"mlm ratio must be in (0, 1), got {self.ratio}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise ValueError(
                f"need mask_prob, random_prob >= 0 with sum <= 1, got {self.mask_prob}, {self.random_prob}"
            )


@dataclass
class MLMExample:
    """``inputs`` for the encoder; ``targets`` (original ids at ``selected``, else -100); ``selected`` (bool)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    selected: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int(self.selected.sum())


def eligible_positions(tokens: torch.Tensor, segments: torch.Tensor | None = None,
                       num_special: int = NUM_SPECIAL) -> torch.Tensor:
    """Positions MLM may select: real (non-padding) tokens that are not special (id >= ``num_special``)."""
    ok = tokens >= num_special
    if segments is not None:
        ok &= segments >= 0
    return ok


def select_exact(eligible: torch.Tensor, ratio: float, generator: torch.Generator,
                 groups: torch.Tensor | None = None, min_per_group: int = 0) -> torch.Tensor:
    """Pick ``round(ratio * n)`` of the ``n`` eligible positions of each row (or each group id within a row).

    Uniform without replacement: random keys, then a position is chosen iff its key ranks below its group's
    quota (at least ``min_per_group`` when the group has that many). ``groups`` (same shape, ints >= 0 on
    eligible positions) splits rows into independent groups.
    """
    B, L = eligible.shape
    if groups is None:
        groups = torch.zeros_like(eligible, dtype=torch.long)
    n_groups = int(groups.max()) + 1 if groups.numel() else 1
    gid = torch.arange(B, device=eligible.device)[:, None] * n_groups + groups.clamp(min=0)  # global group id
    gid = torch.where(eligible, gid, torch.full_like(gid, B * n_groups))  # ineligible -> a dump group
    keys = torch.rand(B, L, generator=generator, device=eligible.device)
    flat_g, flat_k = gid.flatten(), keys.flatten()
    order = torch.argsort(flat_k)  # by key, then stably by group: positions sorted by (group, key)
    order = order[torch.argsort(flat_g[order], stable=True)]
    sizes = torch.bincount(flat_g, minlength=B * n_groups + 1)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(flat_g)
    rank[order] = torch.arange(flat_g.numel(), device=eligible.device) - starts[flat_g[order]]
    quota = torch.maximum(torch.round(sizes.double() * ratio).long(), sizes.clamp(max=min_per_group))
    quota[-1] = 0  # the dump group
    return (rank < quota[flat_g]).view(B, L)


def mlm_mask(tokens: torch.Tensor, vocab_size: int, generator: torch.Generator, config: MLMConfig = MLMConfig(),
             segments: torch.Tensor | None = None, per_segment: bool = False, mask_id: int = MASK_ID,
             num_special: int = NUM_SPECIAL) -> MLMExample:
    """BERT masking of a (B, L) batch of token ids; see the module docstring."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
    if vocab_size <= num_special:
        raise ValueError(f"vocab_size {vocab_size} leaves no non-special token to sample")
    eligible = eligible_positions(tokens, segments, num_special)
    groups = segments if (per_segment and segments is not None) else None
    selected = select_exact(eligible, config.ratio, generator, groups)
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    random_ids = torch.randint(num_special, vocab_size, tokens.shape, generator=generator, device=tokens.device)
    to_mask = selected & (u < config.mask_prob)
    to_random = selected & (u >= config.mask_prob) & (u < config.mask_prob + config.random_prob)
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, random_ids, inputs)
    targets = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    return MLMExample(inputs=inputs, targets=targets, selected=selected)
