"""Objectives that switch between objectives: the biphasic CLM -> MLM schedule and weighted mixtures.

- :class:`CLMThenMLM` (Gisserot-Boukhlef et al. 2025): causal LM (causal mask) for the first
  ``round(clm_fraction * steps)`` optimizer steps, then MLM (bidirectional mask) on the same backbone.
- :class:`Mixture`: one named objective per (step, micro-batch), drawn with ``weights`` as a pure function of
  (seed, step, micro) (``transforms.schedule.ObjectiveMixture``), so resume reproduces the choice; each
  micro-batch's loss is normalised with the others' by the step's total target count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.transforms.schedule import ObjectiveMixture, biphasic_objective


class Switching(Objective):
    """Delegates to one of ``self.objectives`` per micro-batch, chosen by :meth:`choose`."""

    objectives: dict[str, Objective]

    def choose(self) -> str:
        raise NotImplementedError

    @property
    def heads(self) -> dict[str, dict[str, Any]]:
        heads: dict[str, dict[str, Any]] = {}
        for obj in self.objectives.values():
            for name, kw in obj.heads.items():
                if heads.setdefault(name, kw) != kw:
                    raise ValueError(f"objectives disagree on head {name!r}: {heads[name]} vs {kw}")
        return heads

    def configure(self, **kwargs: Any) -> None:
        super().configure(**kwargs)
        for obj in self.objectives.values():
            obj.loss_chunk_tokens = self.loss_chunk_tokens
            obj.configure(**kwargs)

    def set_compile_loss(self, on: bool) -> None:
        super().set_compile_loss(on)
        for obj in self.objectives.values():
            obj.set_compile_loss(on)

    def fit(self, docs: Sequence[np.ndarray]) -> None:
        for obj in self.objectives.values():
            obj.fit(docs)

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        for obj in self.objectives.values():
            obj.begin_step(step)

    def prepare(self, batch: Batch) -> Prepared:
        name = self.choose()
        self.micro += 1
        p = self.objectives[name].prepare(batch)
        p.extra["objective"] = name
        return p

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objectives[prepared.extra["objective"]].loss(model, prepared)


class CLMThenMLM(Switching):
    name = "clm_mlm"
    lm_eval = False  # it ends as an MLM encoder

    def __init__(self, clm_fraction: float = 0.5, mlm_ratio: float = 0.3) -> None:
        from kiln.objectives.clm import CausalLM
        from kiln.objectives.encoder import MaskedLM

        self.clm_fraction = clm_fraction
        self.objectives = {"clm": CausalLM(), "mlm": MaskedLM(ratio=mlm_ratio)}

    def choose(self) -> str:
        return biphasic_objective(self.step, self.total_steps, self.clm_fraction)


class Mixture(Switching):
    name = "mixture"

    def __init__(self, weights: dict[str, float], args: dict[str, dict[str, Any]] | None = None,
                 seed: int = 0) -> None:
        from kiln.objectives import build_objective

        if "mixture" in weights:
            raise ValueError("a mixture cannot contain a mixture")
        self.mixture = ObjectiveMixture(dict(weights), seed)
        self.objectives = {name: build_objective(name, **(args or {}).get(name, {})) for name in weights}
        self.lm_eval = all(obj.lm_eval for obj in self.objectives.values())

    def choose(self) -> str:
        return self.mixture.sample(self.step, self.micro)
