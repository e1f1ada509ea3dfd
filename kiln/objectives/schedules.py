"""Objectives that switch between objectives: the biphasic CLM -> MLM schedule and weighted mixtures.

- :class:`CLMThenMLM` (Gisserot-Boukhlef et al. 2025): causal LM (causal mask) for the first
  ``round(clm_fraction * steps)`` optimizer steps, then MLM (bidirectional mask) on the same backbone.
- :class:`Mixture`: one named objective per (step, micro-batch), drawn with ``weights`` as a pure function of
  (seed, step, micro) (``transforms.schedule.ObjectiveMixture``), so resume reproduces the choice; the seed is
  ``train.seed`` (passed by ``configure``) unless the ``seed`` argument pins it. Each micro-batch's loss is
  normalised with the others' by the step's total target count.
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

    same_metrics_on_every_rank = False

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

    @property
    def uses_every_head(self) -> bool:  # type: ignore[override]
        """True only when every sub-objective trains the same parameters (same heads, same LM-head use)."""
        objs = list(self.objectives.values())
        return all(o.uses_every_head and o.heads == objs[0].heads and o.lm_eval == objs[0].lm_eval for o in objs)

    def heads_used(self, prepared: Prepared) -> set[str]:
        name = prepared.extra["objective"]
        return self.objectives[name].heads_used(prepared)

    def frozen_modules(self) -> dict[str, nn.Module]:
        out = super().frozen_modules()
        for name, obj in self.objectives.items():
            out.update({f"{name}.{k}": m for k, m in obj.frozen_modules().items()})
        return out

    def attach(self, device: torch.device) -> None:
        from kiln.objectives.teacher import share_teachers

        super().attach(device)
        share_teachers(self.objectives.values(), device)  # one copy of a teacher several of them name

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

    def begin_step(self, step: int, micro_offset: int = 0) -> None:
        super().begin_step(step, micro_offset)
        for obj in self.objectives.values():
            obj.begin_step(step, micro_offset)

    def prepare(self, batch: Batch) -> Prepared:
        name = self.choose()
        chosen = self.objectives[name]
        chosen.micro = self.micro  # its draws keyed by the step-wide micro-batch index, whichever rank prepares it
        self.micro += 1
        p = chosen.prepare(batch)
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
                 seed: int | None = None) -> None:
        """``seed``: the draws' seed, fixed whatever ``train.seed`` is; None (default): ``train.seed``."""
        from kiln.objectives import build_objective

        if "mixture" in weights:
            raise ValueError("a mixture cannot contain a mixture")
        self.pinned_seed = seed
        self.mixture = ObjectiveMixture(dict(weights), 0 if seed is None else seed)
        self.objectives = {name: build_objective(name, **(args or {}).get(name, {})) for name in weights}
        self.lm_eval = all(obj.lm_eval for obj in self.objectives.values())

    def configure(self, **kwargs: Any) -> None:
        super().configure(**kwargs)
        seed = self.seed if self.pinned_seed is None else self.pinned_seed
        self.mixture = ObjectiveMixture(dict(self.mixture.weights), seed)

    def choose(self) -> str:
        return self.mixture.sample(self.step, self.micro)
