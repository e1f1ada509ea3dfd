"""UL2 mixture-of-denoisers in a decoder-only layout (Tay et al. 2022, "UL2: Unifying Language Learning
Paradigms", sec. 3.1-3.3).

Seven denoisers: R = SpanCorrupt(3, .15), SpanCorrupt(8, .15); X = SpanCorrupt(3, .5), (8, .5), (64, .15),
(64, .5); S = prefix-LM with a uniformly random split. Each example is prefixed by its paradigm's mode token
(``<|mode_r|>`` = [NLU], ``<|mode_x|>`` = [NLG], ``<|mode_s|>`` = [S2S]). Default mixture: 0.4 R / 0.4 X /
0.2 S, split evenly inside each group (0.2, 0.2 | 0.1 x 4 | 0.2) -- the spec marks these weights [verify].

Decoder-only layout: ``[mode] corrupted-input targets``. The loss is next-token prediction on the targets only
(``targets[i]`` is the token at ``i + 1`` when that lies in the target part, else -100). ``prefix_len`` is the
length of ``[mode] corrupted-input``: a prefix-LM attends bidirectionally inside it; plain causal attention also
works with the same tensors. ``ul2_invert`` writes the targets back into the sentinels (or, for S, appends the
suffix) and returns the original document exactly.

Pass a document's content tokens; they must not contain sentinels or mode tokens (the result would not invert).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kiln.objectives.transforms.common import (
    MODE_IDS,
    SENTINEL_IDS,
    as_ids,
    next_token_targets,
    reject_ids,
)
from kiln.objectives.transforms.spans import Overflow, corrupt_spans, random_spans_noise_mask, uncorrupt_spans

Mode = Literal["r", "x", "s"]


@dataclass(frozen=True)
class Denoiser:
    """One denoiser: span corruption (``mean_span``, ``density``) or, for mode "s", a prefix-LM split."""

    name: str
    mode: Mode
    mean_span: float | None = None
    density: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODE_IDS:
            raise ValueError(f"denoiser mode must be one of {sorted(MODE_IDS)}, got {self.mode!r}")
        if self.mode != "s" and (self.mean_span is None or self.density is None):
            raise ValueError(f"span-corruption denoiser {self.name!r} needs mean_span and density")


DENOISERS: tuple[Denoiser, ...] = (
    Denoiser("r3", "r", 3, 0.15),
    Denoiser("r8", "r", 8, 0.15),
    Denoiser("x3", "x", 3, 0.5),
    Denoiser("x8", "x", 8, 0.5),
    Denoiser("x64a", "x", 64, 0.15),
    Denoiser("x64b", "x", 64, 0.5),
    Denoiser("s", "s"),
)
DEFAULT_WEIGHTS: dict[str, float] = {"r3": 0.2, "r8": 0.2, "x3": 0.1, "x8": 0.1, "x64a": 0.1, "x64b": 0.1, "s": 0.2}


@dataclass(frozen=True)
class UL2Config:
    denoisers: tuple[Denoiser, ...] = DENOISERS
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    overflow: Overflow = "error"  # more spans than the 100 sentinels: raise, or cap the span count

    def __post_init__(self) -> None:
        names = [d.name for d in self.denoisers]
        if len(set(names)) != len(names):
            raise ValueError(f"denoiser names must be unique, got {names}")
        if set(self.weights) != set(names):
            raise ValueError(f"weights must name exactly the denoisers {names}, got {sorted(self.weights)}")
        w = np.array([self.weights[n] for n in names], dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {self.weights}")

    def probabilities(self) -> np.ndarray:
        w = np.array([self.weights[d.name] for d in self.denoisers], dtype=np.float64)
        return w / w.sum()

    def mode_probabilities(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for d, p in zip(self.denoisers, self.probabilities(), strict=True):
            out[d.mode] = out.get(d.mode, 0.0) + float(p)
        return out


@dataclass
class UL2Example:
    """One decoder-only UL2 example; ``tokens[:prefix_len]`` is ``[mode] corrupted-input``."""

    tokens: np.ndarray
    targets: np.ndarray  # next-token targets, -100 outside the target part
    prefix_len: int
    denoiser: Denoiser
    noise: np.ndarray  # (original length,) True where the original token was moved to the targets

    @property
    def loss_mask(self) -> np.ndarray:
        return self.targets != -100

    @property
    def mode_id(self) -> int:
        return int(self.tokens[0])


def sample_denoiser(rng: np.random.Generator, config: UL2Config = UL2Config()) -> Denoiser:
    return config.denoisers[int(rng.choice(len(config.denoisers), p=config.probabilities()))]


def apply_denoiser(tokens: np.ndarray | list[int], denoiser: Denoiser, rng: np.random.Generator,
                   overflow: Overflow = "error") -> UL2Example:
    """Corrupt one document with the given denoiser into the decoder-only layout."""
    ids = as_ids(tokens)
    reject_ids(ids, np.concatenate([SENTINEL_IDS, list(MODE_IDS.values())]), "UL2")
    if len(ids) < 2:
        raise ValueError(f"UL2 needs a document of at least 2 tokens, got {len(ids)}")
    mode = np.array([MODE_IDS[denoiser.mode]], dtype=np.int64)
    if denoiser.mode == "s":
        split = int(rng.integers(1, len(ids)))  # non-empty prefix and suffix
        noise = np.arange(len(ids)) >= split
        inputs, target_part = ids[:split], ids[split:]
    else:
        assert denoiser.mean_span is not None and denoiser.density is not None
        noise = random_spans_noise_mask(len(ids), denoiser.density, denoiser.mean_span, rng,
                                        max_spans=len(SENTINEL_IDS), overflow=overflow)
        sc = corrupt_spans(ids, noise)
        inputs, target_part = sc.inputs, sc.targets
    prefix_len = 1 + len(inputs)
    out = np.concatenate([mode, inputs, target_part])
    return UL2Example(tokens=out, targets=next_token_targets(out, prefix_len), prefix_len=prefix_len,
                      denoiser=denoiser, noise=noise)


def ul2_transform(tokens: np.ndarray | list[int], rng: np.random.Generator,
                  config: UL2Config = UL2Config()) -> UL2Example:
    """Sample a denoiser from the mixture and apply it (see the module docstring)."""
    return apply_denoiser(tokens, sample_denoiser(rng, config), rng, config.overflow)


def ul2_invert(tokens: np.ndarray, prefix_len: int) -> np.ndarray:
    """The original document from a UL2 example's ``tokens`` and ``prefix_len``."""
    tokens = as_ids(tokens)
    mode = int(tokens[0])
    if mode not in MODE_IDS.values():
        raise ValueError(f"a UL2 example starts with a mode token, got id {mode}")
    inputs, target_part = tokens[1:prefix_len], tokens[prefix_len:]
    if mode == MODE_IDS["s"]:
        return np.concatenate([inputs, target_part])
    return uncorrupt_spans(inputs, target_part)
