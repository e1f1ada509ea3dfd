"""Fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle")
with horizon-length prediction targets (Ding et al. 2024, "Horizon-Length Prediction: Advancing
Fill-in-the-Middle Capabilities for Code Generation with Lookahead Planning").

With probability ``rate`` (0.5) a document is split at two uniformly random points into prefix p, middle m and
suffix s -- on characters of its text before tokenization (``fim_text``, the paper's default) or on its token
ids (``fim_tokens``) -- and rearranged, PSM or SPM with probability 1/2 each:

    PSM: <|fim_prefix|> p <|fim_suffix|> s <|fim_middle|> m <|eoi|>
    SPM: <|fim_prefix|> <|fim_suffix|> s <|fim_middle|> p m <|eoi|>

The SPM form is the paper's joint-training variant (sec. 3 and appendix D), in which prefix and middle stay
contiguous so SPM and PSM share token statistics. Otherwise the document is left unchanged (plain
left-to-right). Next-token loss covers the whole sequence. ``fim_invert`` recovers the original ids exactly
(original = PSM-prefix + everything after ``<|fim_middle|>`` up to ``<|eoi|>`` + suffix, which holds for both
layouts) and ``fim_invert_text`` the original text.

HLP: at the position whose next token is middle token t (t = 0..M-1) and at the one predicting ``<|eoi|>``
(t = M), the target is the fraction of the middle still to write, (M - t) / M: it runs 1 -> 0 and the position
predicting ``<|eoi|>`` has target 0 (also when M = 0). All other positions are masked out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.objectives.transforms.common import (
    BOS_ID,
    EOI_ID,
    EOS_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    as_ids,
    reject_ids,
)

FIMMode = Literal["psm", "spm"]
FIM_IDS = np.array([FIM_PREFIX_ID, FIM_SUFFIX_ID, FIM_MIDDLE_ID, EOI_ID], dtype=np.int64)


@dataclass(frozen=True)
class FIMConfig:
    rate: float = 0.5  # fraction of documents transformed
    spm_rate: float = 0.5  # fraction of transformed documents in SPM order

    def __post_init__(self) -> None:
        if not (0.0 <= self.rate <= 1.0 and 0.0 <= self.spm_rate <= 1.0):
            raise ValueError(f"FIM rate and spm_rate must be in [0, 1], got {self.rate}, {self.spm_rate}")


@dataclass
class FIMExample:
    """One document after FIM; ``mode`` is None when it was left unchanged."""

    tokens: np.ndarray
    mode: FIMMode | None
    middle_start: int  # index in ``tokens`` of the first middle token (where it would be when M = 0)
    middle_len: int
    hlp_targets: np.ndarray  # float32, (M - t) / M at the HLP positions, 0 elsewhere
    hlp_mask: np.ndarray  # bool, True at the M + 1 HLP positions

    @property
    def applied(self) -> bool:
        return self.mode is not None


def split_points(n: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two uniform cut points 0 <= i <= j <= n (the paper's uniform split of the document)."""
    a, b = sorted(int(x) for x in rng.integers(0, n + 1, size=2))
    return a, b


def horizon_targets(length: int, middle_start: int, middle_len: int) -> tuple[np.ndarray, np.ndarray]:
    """HLP targets and mask for a sequence whose middle occupies [middle_start, middle_start + middle_len)."""
    targets = np.zeros(length, dtype=np.float32)
    mask = np.zeros(length, dtype=bool)
    pos = np.arange(middle_start - 1, middle_start + middle_len)  # predicts middle token t, then <|eoi|>
    t = np.arange(middle_len + 1)
    targets[pos] = (middle_len - t) / middle_len if middle_len else 0.0
    mask[pos] = True
    return targets, mask


def fim_layout(prefix: np.ndarray, middle: np.ndarray, suffix: np.ndarray, mode: FIMMode) -> FIMExample:
    """Arrange already-split pieces in PSM or SPM order, with HLP targets."""
    P, S = np.array([FIM_PREFIX_ID]), np.array([FIM_SUFFIX_ID])
    M, E = np.array([FIM_MIDDLE_ID]), np.array([EOI_ID])
    if mode == "psm":
        parts = [P, prefix, S, suffix, M]
    elif mode == "spm":
        parts = [P, S, suffix, M, prefix]
    else:
        raise ValueError(f"FIM mode must be 'psm' or 'spm', got {mode!r}")
    start = sum(len(p) for p in parts)
    tokens = np.concatenate([*parts, middle, E]).astype(np.int64)
    targets, mask = horizon_targets(len(tokens), start, len(middle))
    return FIMExample(tokens, mode, start, len(middle), targets, mask)


def unchanged(tokens: np.ndarray) -> FIMExample:
    n = len(tokens)
    return FIMExample(tokens, None, n, 0, np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool))


def draw(rng: np.random.Generator, config: FIMConfig) -> FIMMode | None:
    """Whether to transform (probability ``rate``) and, if so, in which order."""
    if rng.random() >= config.rate:
        return None
    return "spm" if rng.random() < config.spm_rate else "psm"


def fim_tokens(tokens: np.ndarray | Sequence[int], rng: np.random.Generator,
               config: FIMConfig = FIMConfig()) -> FIMExample:
    """Token-level FIM of one document's content ids (without ``<|bos|>``/``<|eos|>``; the caller adds them)."""
    ids = as_ids(tokens)
    reject_ids(ids, FIM_IDS, "FIM")
    mode = draw(rng, config)
    if mode is None:
        return unchanged(ids)
    i, j = split_points(len(ids), rng)
    return fim_layout(ids[:i], ids[i:j], ids[j:], mode)


def fim_document(doc: np.ndarray | Sequence[int], rng: np.random.Generator,
                 config: FIMConfig = FIMConfig()) -> FIMExample:
    """Token-level FIM of a stored document ``<|bos|> content <|eos|>``: transform the content, keep the ends."""
    ids = as_ids(doc)
    if len(ids) < 2 or ids[0] != BOS_ID or ids[-1] != EOS_ID:
        raise ValueError("a stored document is <|bos|> ... <|eos|>")
    inner = fim_tokens(ids[1:-1], rng, config)
    pad = np.zeros(1, dtype=np.float32)
    return FIMExample(
        tokens=np.concatenate([[BOS_ID], inner.tokens, [EOS_ID]]).astype(np.int64),
        mode=inner.mode,
        middle_start=inner.middle_start + 1,
        middle_len=inner.middle_len,
        hlp_targets=np.concatenate([pad, inner.hlp_targets, pad]),
        hlp_mask=np.concatenate([[False], inner.hlp_mask, [False]]),
    )


def fim_text(text: str, rng: np.random.Generator, encode: Callable[[str], Sequence[int]],
             config: FIMConfig = FIMConfig()) -> FIMExample:
    """Character-level FIM: split the text, then encode prefix, middle and suffix separately."""
    mode = draw(rng, config)
    if mode is None:
        ids = as_ids(list(encode(text)))
        reject_ids(ids, FIM_IDS, "FIM")
        return unchanged(ids)
    i, j = split_points(len(text), rng)
    pieces = [as_ids(list(encode(x))) for x in (text[:i], text[i:j], text[j:])]
    for p in pieces:
        reject_ids(p, FIM_IDS, "FIM")
    return fim_layout(*pieces, mode)


def fim_parts(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PSM prefix, everything between <|fim_middle|> and <|eoi|>, suffix) of a FIM sequence."""
    tokens = as_ids(tokens)
    if len(tokens) == 0 or tokens[0] != FIM_PREFIX_ID:
        raise ValueError("not a FIM sequence: it must start with <|fim_prefix|>")
    marks = {}
    for name, tid in (("suffix", FIM_SUFFIX_ID), ("middle", FIM_MIDDLE_ID), ("eoi", EOI_ID)):
        hits = np.flatnonzero(tokens == tid)
        if len(hits) != 1:
            raise ValueError(f"a FIM sequence has exactly one {name} marker, found {len(hits)}")
        marks[name] = int(hits[0])
    s, m, e = marks["suffix"], marks["middle"], marks["eoi"]
    if not 0 < s < m < e == len(tokens) - 1:
        raise ValueError("FIM markers out of order")
    return tokens[1:s], tokens[m + 1 : e], tokens[s + 1 : m]


def fim_invert(tokens: np.ndarray) -> np.ndarray:
    """The original token ids of a FIM-transformed (or unchanged) document."""
    tokens = as_ids(tokens)
    if len(tokens) == 0 or tokens[0] != FIM_PREFIX_ID:
        return tokens
    prefix, tail, suffix = fim_parts(tokens)
    return np.concatenate([prefix, tail, suffix])


def fim_invert_text(tokens: np.ndarray, decode: Callable[[list[int]], str]) -> str:
    """The original text of a character-level FIM document (each piece decoded on its own)."""
    tokens = as_ids(tokens)
    if len(tokens) == 0 or tokens[0] != FIM_PREFIX_ID:
        return decode(tokens.tolist())
    return "".join(decode(p.tolist()) for p in fim_parts(tokens))
