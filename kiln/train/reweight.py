"""``reweight_stats``: logs the loss-based sample weights of the ``reweight`` objective in every train row.

Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic Loss-Based Sample Reweighting for Improved
Large Language Model Pretraining", ICLR 2025 (arXiv:2502.06733). The weighting itself is the objective
(kiln/objectives/reweight.py: it needs every sample's loss before the step's first backward, which only the
objective sees); this callback copies the step's statistics into ``state.metrics``:

- ``reweight_active``: 0 during the warm-up (plain token-mean loss), 1 once the weights apply;
- ``reweight_w_min`` / ``reweight_w_max``: the smallest and largest weight of the step's global batch;
- ``reweight_w_entropy_ratio``: entropy of the weights / log N (1 = uniform, lower = more concentrated);
- ``reweight_samples``: N, the samples in the global batch; ``reweight_loss_min`` / ``_max``: their mean-CE range.

Recipe: ``train.callbacks: [{name: reweight_stats}]`` (or ``kiln.train.reweight:ReweightStats``). The objective
is found directly or inside a switching objective (``mixture``); training with none is refused.

This module imports no torch at import time: the recipe validates callback specs through it.
"""

from __future__ import annotations

from typing import Any

from kiln.train.callbacks import TrainerCallback, TrainState


def find_reweighting(objective: Any) -> list[Any]:
    """The ``reweight`` objectives in ``objective`` (itself, or sub-objectives of a switching objective)."""
    if getattr(objective, "name", None) == "reweight" and hasattr(objective, "stats"):
        return [objective]
    subs = getattr(objective, "objectives", None)
    if isinstance(subs, dict):
        return [o for sub in subs.values() for o in find_reweighting(sub)]
    return []


class ReweightStats(TrainerCallback):
    name = "reweight_stats"

    def __init__(self) -> None:
        self.objectives: list[Any] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.objectives = find_reweighting(state.objective)
        if not self.objectives:
            raise ValueError(f"train.callbacks: reweight_stats logs the weights of the 'reweight' objective, but "
                             f"train.objective is {getattr(state.objective, 'name', state.objective)!r}")

    def after_optimizer_step(self, state: TrainState) -> None:
        for objective in self.objectives:
            state.metrics.update(objective.stats)
