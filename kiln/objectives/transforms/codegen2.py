"""The CodeGen2 objective mixture (Nijkamp et al. 2023, "CodeGen2: Lessons for Training LLMs on Programming and
Natural Languages", sec. 3.2 and lesson 2): per document, causal LM with probability ``p_clm`` (0.5), else span
corruption with the sentinels and their spans moved to the end of the sequence -- a causal decoder then learns
to infill by ordinary next-token prediction.

Span-corruption layout (CodeGen2's ``<mask_N>``, ``<sep>`` and ``<eom>`` map to kiln's ``<|sentinel_N|>``,
``<|sep|>`` and ``<|eoi|>``)::

    corrupted-input <|sep|> <|sentinel_0|> span_0 <|sentinel_1|> span_1 ... <|eoi|>

``loss_on="all"`` (default) trains next-token prediction on the whole rearranged sequence, as for a causal LM
(InCoder-style causal masking); ``"targets"`` restricts it to the part after ``<|sep|>``. Span statistics default
to SpanCorrupt(3, 0.15). The exact span distribution and loss region of the paper are marked [verify] in the
spec. The CLM branch returns the document unchanged with next-token targets everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.objectives.transforms.common import EOI_ID, SENTINEL_IDS, SEP_ID, as_ids, next_token_targets, reject_ids
from kiln.objectives.transforms.spans import Overflow, corrupt_spans, random_spans_noise_mask, uncorrupt_spans


@dataclass(frozen=True)
class CodeGen2Config:
    p_clm: float = 0.5
    mean_span: float = 3.0
    density: float = 0.15
    loss_on: Literal["all", "targets"] = "all"
    overflow: Overflow = "error"

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_clm <= 1.0:
            raise ValueError(f"p_clm must be in [0, 1], got {self.p_clm}")
        if self.loss_on not in ("all", "targets"):
            raise ValueError(f"loss_on must be 'all' or 'targets', got {self.loss_on!r}")


@dataclass
class CodeGen2Example:
    tokens: np.ndarray
    targets: np.ndarray  # next-token targets (-100 = ignore)
    kind: Literal["clm", "span"]
    sep_index: int  # index of <|sep|> (len(tokens) for the CLM branch)

    @property
    def loss_mask(self) -> np.ndarray:
        return self.targets != -100


def codegen2_span(tokens: np.ndarray | Sequence[int], rng: np.random.Generator,
                  config: CodeGen2Config = CodeGen2Config()) -> CodeGen2Example:
    """The span-corruption branch: corrupted input, ``<|sep|>``, sentinel/span pairs, ``<|eoi|>``."""
    ids = as_ids(tokens)
    reject_ids(ids, np.concatenate([SENTINEL_IDS, [SEP_ID, EOI_ID]]), "CodeGen2 span corruption")
    noise = random_spans_noise_mask(len(ids), config.density, config.mean_span, rng,
                                    max_spans=len(SENTINEL_IDS), overflow=config.overflow)
    sc = corrupt_spans(ids, noise)
    out = np.concatenate([sc.inputs, [SEP_ID], sc.targets, [EOI_ID]]).astype(np.int64)
    sep = len(sc.inputs)
    loss_from = 1 if config.loss_on == "all" else sep + 1
    return CodeGen2Example(out, next_token_targets(out, loss_from), "span", sep)


def codegen2_transform(tokens: np.ndarray | Sequence[int], rng: np.random.Generator,
                       config: CodeGen2Config = CodeGen2Config()) -> CodeGen2Example:
    """Per document: CLM with probability ``p_clm``, else ``codegen2_span``."""
    if rng.random() < config.p_clm:
        ids = as_ids(tokens)
        return CodeGen2Example(ids, next_token_targets(ids, 1), "clm", len(ids))
    return codegen2_span(tokens, rng, config)


def codegen2_invert(example: CodeGen2Example) -> np.ndarray:
    """The original document of either branch."""
    if example.kind == "clm":
        return example.tokens.copy()
    t, sep = example.tokens, example.sep_index
    if t[sep] != SEP_ID or t[-1] != EOI_ID:
        raise ValueError("not a CodeGen2 span-corruption sequence")
    return uncorrupt_spans(t[:sep], t[sep + 1 : -1])
