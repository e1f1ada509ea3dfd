"""Which objective is active when: the biphasic CLM -> MLM switch and seeded weighted mixtures.

Biphasic (Gisserot-Boukhlef et al. 2025, "Should We Still Pretrain Encoders with Masked Language Modeling?"):
train with CLM (causal mask) for the first ``round(clm_fraction * total_steps)`` steps, then switch to
bidirectional attention and MLM for the rest. ``ObjectiveMixture`` picks one named objective per (step,
micro-batch) with the given weights, as a pure function of (seed, step, micro): resuming or re-running a step
reproduces its choice, whatever was sampled before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def switch_step(total_steps: int, clm_fraction: float) -> int:
    """The first step (0-based) of the second phase."""
    if total_steps < 0 or not 0.0 <= clm_fraction <= 1.0:
        raise ValueError(f"need total_steps >= 0 and 0 <= clm_fraction <= 1, got {total_steps}, {clm_fraction}")
    return round(clm_fraction * total_steps)


def biphasic_objective(step: int, total_steps: int, clm_fraction: float,
                       phases: tuple[str, str] = ("clm", "mlm")) -> str:
    """``phases[0]`` for steps before ``switch_step``, ``phases[1]`` from it on (steps count from 0)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return phases[0] if step < switch_step(total_steps, clm_fraction) else phases[1]


@dataclass(frozen=True)
class ObjectiveMixture:
    weights: Mapping[str, float]
    seed: int = 0

    def __post_init__(self) -> None:
        w = np.array(list(self.weights.values()), dtype=np.float64)
        if len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, got {dict(self.weights)}")

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def probabilities(self) -> np.ndarray:
        w = np.array(list(self.weights.values()), dtype=np.float64)
        return w / w.sum()

    def sample(self, step: int, micro: int = 0) -> str:
        """The objective for micro-batch ``micro`` of ``step`` (deterministic given the seed)."""
        if step < 0 or micro < 0:
            raise ValueError(f"step and micro must be >= 0, got {step}, {micro}")
        rng = np.random.default_rng([self.seed, step, micro])
        return self.names[int(rng.choice(len(self.names), p=self.probabilities()))]
