"""Extending a finished training run to more steps (``train.steps=160`` on a run trained to 80).

A complete ``train`` stage whose recipe changed in ``train.steps`` alone, upwards, is continued in place from
its last checkpoint instead of being refused or rebuilt: the resumed trainer keeps its loader position,
optimizer moments and metrics up to the checkpoint and trains on to the new step count. This is only sound
when the steps already trained are exactly those the longer run would have trained, so extension is allowed
only when

- nothing else changed: every other field of the ``data``/``model``/``train`` sections, the upstream
  fingerprints and the external inputs are the same as in the finished stage's manifest;
- the learning rate of every past step is the same under the new step count: true for ``schedule: constant``
  (with the warm-up not shortened by the old run's length), false for ``cosine`` (its decay spans the whole
  run) and ``wsd`` (its decay sits at the end of the run, which already happened);
- the objective does not depend on the total step count (``clm_mlm``'s switch point, ``mixture``'s
  schedule).

Anything else is refused as before, naming what prevents it. A run that ended with a decay cannot be
extended this way; start a new run from its checkpoint with ``train.init_from`` instead.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.recipe import Recipe

STEP_DEPENDENT_OBJECTIVES = ("clm_mlm", "mixture")  # objectives whose behaviour depends on train.steps


def _without_steps(config: dict) -> dict:
    out = copy.deepcopy(config)
    (out.get("train") or {}).pop("steps", None)
    return out


def old_steps(old_config: dict) -> int:
    """The ``train.steps`` of a finished stage's manifest config (default values are left out of it)."""
    from kiln.recipe import TrainConfig

    steps = (old_config.get("train") or {}).get("steps")
    return int(steps if steps is not None else TrainConfig.model_fields["steps"].default)


def extension_check(old: dict | None, new: dict, recipe: Recipe) -> tuple[int, str] | None:
    """Whether a finished train stage (manifest ``old``) can be extended to the planned ``new`` view
    (config, inputs, external). None: not an extension (anything else changed, or steps did not grow).
    ``(old_steps, "")``: extend. ``(old_steps, reason)``: an extension, refused for ``reason``."""
    if not old or not old.get("complete") or "config" not in old:
        return None
    old_cfg, new_cfg = old.get("config") or {}, new.get("config") or {}
    if _without_steps(old_cfg) != _without_steps(new_cfg) or (old.get("inputs") or {}) != (new.get("inputs") or {}):
        return None
    if (old.get("external") or {}) != (new.get("external") or {}):
        return None
    before, after = old_steps(old_cfg), recipe.train.steps
    if after <= before:
        return None
    return before, schedule_blocker(recipe, before)


def schedule_blocker(recipe: Recipe, before: int) -> str:
    """Why training ``recipe.train.steps`` steps would have trained the first ``before`` steps differently
    (learning rate or objective); "" when it would not."""
    from kiln.train.optim import lr_at

    cfg = recipe.train
    if cfg.objective in STEP_DEPENDENT_OBJECTIVES:
        return f"objective '{cfg.objective}' depends on train.steps"
    short = cfg.model_copy(update={"steps": before})
    for step in range(before):
        if lr_at(step, short) != lr_at(step, cfg):
            return (f"schedule '{cfg.schedule}' gives step {step + 1} a different learning rate with "
                    f"train.steps={cfg.steps} ({lr_at(step, cfg):.3g}) than it was trained with "
                    f"({lr_at(step, short):.3g}); only a constant schedule whose warm-up fits the first run "
                    "can be extended")
    return ""
