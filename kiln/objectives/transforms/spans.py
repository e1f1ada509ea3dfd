"""T5-style span corruption: SpanCorrupt(mu, r) (Raffel et al. 2020, sec. 3.1.4; used by UL2 and CodeGen2).

``random_spans_noise_mask`` follows the design of T5's ``random_spans_noise_mask``: about ``r * L`` noise tokens
form about ``r * L / mu`` spans; the noise and non-noise token counts are each split into that many non-empty
runs by a uniformly random composition, and the runs alternate starting with non-noise. kiln differs in one
documented way: both counts are *stochastically* rounded (floor plus a Bernoulli of the fraction) instead of
rounded to nearest, so that the expected density is exactly ``r`` and the expected mean span is ``mu`` even
for documents only a few spans long (T5's rounding biases, e.g., mu=64 on 512 tokens to one 77-token span).

``corrupt_spans`` replaces span ``i`` by ``<|sentinel_i|>`` in the input and makes the target
``<|sentinel_0|> span_0 <|sentinel_1|> span_1 ...``. There are 100 sentinels: more spans than that either raise
(``overflow="error"``, the default) or are capped (``overflow="cap"``: the span count is reduced to 100 and the
same noise tokens form longer spans, so the mean span exceeds mu on such long documents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.objectives.transforms.common import SENTINEL_IDS, SENTINEL_LO, is_sentinel

Overflow = Literal["error", "cap"]


def stochastic_round(x: float, rng: np.random.Generator) -> int:
    lo = int(np.floor(x))
    return lo + int(rng.random() < x - lo)


def random_composition(n_items: int, n_parts: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random split of ``n_items`` into ``n_parts`` positive integers (in order)."""
    if not 1 <= n_parts <= n_items:
        raise ValueError(f"cannot split {n_items} items into {n_parts} non-empty parts")
    cuts = np.sort(rng.choice(np.arange(1, n_items), size=n_parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]])).astype(np.int64)


def span_counts(length: int, density: float, mean_span: float, rng: np.random.Generator,
                max_spans: int | None = None, overflow: Overflow = "error") -> tuple[int, int]:
    """(noise tokens, noise spans) for a document of ``length`` tokens; see the module docstring."""
    if length < 2:
        raise ValueError(f"span corruption needs a document of at least 2 tokens, got {length}")
    if not 0.0 < density < 1.0 or mean_span < 1.0:
        raise ValueError(f"need 0 < density < 1 and mean_span >= 1, got density={density}, mean_span={mean_span}")
    n_noise = min(max(stochastic_round(length * density, rng), 1), length - 1)
    n_spans = max(stochastic_round(n_noise / mean_span, rng), 1)
    n_spans = min(n_spans, n_noise, length - n_noise)  # every run, noise and non-noise, is non-empty
    if max_spans is not None and n_spans > max_spans:
        if overflow == "error":
            raise ValueError(
                f"span corruption of a {length}-token document with mean span {mean_span} and density {density} "
                f"needs {n_spans} spans but only {max_spans} sentinels exist; use shorter documents or "
                "overflow='cap'"
            )
        n_spans = max_spans
    return n_noise, n_spans


def random_spans_noise_mask(length: int, density: float, mean_span: float, rng: np.random.Generator,
                            max_spans: int | None = None, overflow: Overflow = "error") -> np.ndarray:
    """Boolean (length,) mask: True on noise tokens, forming spans that alternate with kept runs."""
    n_noise, n_spans = span_counts(length, density, mean_span, rng, max_spans, overflow)
    noise_lens = random_composition(n_noise, n_spans, rng)
    keep_lens = random_composition(length - n_noise, n_spans, rng)
    runs = np.stack([keep_lens, noise_lens], axis=1).reshape(-1)  # keep, noise, keep, noise, ...
    is_noise = np.tile([False, True], n_spans)
    return np.repeat(is_noise, runs)


@dataclass
class SpanCorruption:
    """``inputs`` with one sentinel per span; ``targets`` = sentinel_i span_i ...; the ``noise`` mask used."""

    inputs: np.ndarray
    targets: np.ndarray
    noise: np.ndarray

    @property
    def n_spans(self) -> int:
        return int(is_sentinel(self.inputs).sum())


def span_starts(noise: np.ndarray) -> np.ndarray:
    prev = np.concatenate([[False], noise[:-1]])
    return noise & ~prev


def corrupt_spans(tokens: np.ndarray, noise: np.ndarray) -> SpanCorruption:
    """Replace each noise span by its sentinel; the targets list each sentinel followed by its span."""
    if noise.shape != tokens.shape:
        raise ValueError(f"noise mask shape {noise.shape} != tokens shape {tokens.shape}")
    starts = span_starts(noise)
    n_spans = int(starts.sum())
    if n_spans > len(SENTINEL_IDS):
        raise ValueError(f"{n_spans} noise spans but only {len(SENTINEL_IDS)} sentinels")
    span_id = np.cumsum(starts) - 1  # index of the span each noise token belongs to
    sent = SENTINEL_IDS[np.clip(span_id, 0, None)]
    # inputs: kept tokens, and each span's first token turned into its sentinel
    inputs = np.where(starts, sent, tokens)[~noise | starts]
    # targets: each span preceded by its sentinel
    tgt_starts = np.flatnonzero(starts)
    targets = np.insert(tokens[noise], np.searchsorted(np.flatnonzero(noise), tgt_starts), SENTINEL_IDS[:n_spans])
    return SpanCorruption(inputs=inputs.astype(np.int64), targets=targets.astype(np.int64), noise=noise)


def uncorrupt_spans(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The inverse of ``corrupt_spans``: write each target span back in place of its sentinel."""
    spans: dict[int, np.ndarray] = {}
    marks = np.flatnonzero(is_sentinel(targets))
    if len(targets) and (len(marks) == 0 or marks[0] != 0):
        raise ValueError("span-corruption targets must start with a sentinel")
    bounds = np.concatenate([marks, [len(targets)]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        spans[int(targets[a])] = targets[a + 1 : b]
    out: list[np.ndarray] = []
    for tok in inputs:
        if SENTINEL_LO <= tok <= SENTINEL_LO + len(SENTINEL_IDS) - 1:
            if int(tok) not in spans:
                raise ValueError(f"sentinel id {int(tok)} in the inputs has no span in the targets")
            out.append(spans.pop(int(tok)))
        else:
            out.append(np.array([tok], dtype=np.int64))
    if spans:
        raise ValueError(f"target spans for sentinels {sorted(spans)} do not appear in the inputs")
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)
