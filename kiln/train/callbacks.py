"""Trainer callbacks: code that runs at fixed points of the training loop without editing it.

A :class:`TrainerCallback` overrides any of the no-op methods below; each receives the :class:`TrainState`
(step, model, optimizer, objective, rank, and ``metrics``: a dict the callback may add numbers to, which the
trainer writes into that step's ``metrics.jsonl`` train row, or the validation row for ``on_eval``). Points,
in the order a step meets them:

- ``on_train_begin``: once, after resume / ``init_from``, before the first step;
- ``on_step_begin``: before each step's batches are prepared and run, ``state.step`` counting the steps done so
  far (a step skipped by ``train.on_nonfinite=skip`` included; after a rollback, the checkpoint's step);
- ``micro_loss(state, prepared, loss_sum)``: per micro-batch, returns the loss to backpropagate (default:
  ``loss_sum``); sample weights and auxiliary losses go here. The logged loss stays the objective's;
- ``after_backward``: gradients of the whole step accumulated (and synchronised under DDP), before clipping;
- ``after_optimizer_step``: after ``optimizer.step()`` of an accepted step (not of a skipped one), gradients
  already cleared, ``state.step`` counting that step (the step its train row is logged under);
- ``on_log``: after each logged train row (every ``log_every`` steps), ``state.metrics`` holding that row
  (step, loss, lr, tokens, tokens_per_s, ...): progress lines and metric loggers read it;
- ``on_eval``: after each validation, ``state.metrics`` holding the validation row;
- ``on_checkpoint(state, path)``: after a checkpoint was written;
- ``on_train_end``: once, after the loop.

Every rank runs every callback (under DDP all ranks hold the same weights and synchronised gradients, so
callbacks see identical state); only rank 0 writes metrics. Callbacks come from the recipe
(``train.callbacks: [{name: param_norm}, {name: magnitude_mask, sparsity: 0.5}]``, validated when the recipe
loads) or are passed to ``Trainer(callbacks=[...])``. ``name`` is a registered name (:data:`CALLBACKS`,
:func:`register_callback`) or ``package.module:ClassName`` for a callback outside kiln.

This module imports no torch at import time: the recipe validates callback specs through it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kiln.objectives.base import Objective, Prepared


@dataclass
class TrainState:
    """What a callback sees: the live training objects and a dict for its own numbers."""

    step: int  # optimizer steps completed so far
    model: nn.Module  # the inner LanguageModel (parameters, gradients, state dict)
    optimizer: torch.optim.Optimizer
    objective: Objective
    rank: int = 0
    world_size: int = 1
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None  # the train stage's folder (loggers write there)


class TrainerCallback:
    """Base class: every method is a no-op (see the module docstring for when each runs)."""

    name = "callback"

    def on_train_begin(self, state: TrainState) -> None:
        pass

    def on_step_begin(self, state: TrainState) -> None:
        pass

    def micro_loss(self, state: TrainState, prepared: Prepared, loss_sum: torch.Tensor) -> torch.Tensor:
        return loss_sum

    def after_backward(self, state: TrainState) -> None:
        pass

    def after_optimizer_step(self, state: TrainState) -> None:
        pass

    def on_log(self, state: TrainState) -> None:
        pass

    def on_eval(self, state: TrainState) -> None:
        pass

    def on_checkpoint(self, state: TrainState, path: Path) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass


CALLBACKS: dict[str, str] = {  # name -> "module:Class", imported on use so this module stays light
    "param_norm": "kiln.train.callbacks_builtin:ParamNorm",
    "magnitude_mask": "kiln.train.callbacks_builtin:MagnitudeMask",
    "moe_aux": "kiln.train.moe_aux:MoEAux",
    "spdf": "kiln.train.sparsity:StaticMask",
    "gradual_pruning": "kiln.train.sparsity:GradualPruning",
    "reweight_stats": "kiln.train.reweight:ReweightStats",
}


def register_callback(name: str, target: str | type[TrainerCallback]) -> None:
    """Make ``name`` usable in ``train.callbacks``: a class, or ``"module:Class"`` imported on use."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    CALLBACKS[name] = target


def resolve_callback(name: str) -> type[TrainerCallback]:
    """The callback class for a registered ``name`` or a ``module:Class`` path; ValueError naming the choices."""
    target = CALLBACKS.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown callback {name!r}; registered: {', '.join(sorted(CALLBACKS))} "
                         "(or give package.module:ClassName)")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"callback {name!r}: cannot import {target} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
        raise ValueError(f"callback {name!r}: {target} is not a TrainerCallback subclass")
    return cls


def check_args(cls: type, args: dict[str, Any], where: str) -> None:
    """Raise ValueError naming ``where.<key>`` when ``args`` do not fit ``cls``'s keyword arguments."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown argument of {cls.__name__}; accepted: "
                         f"{', '.join(accepted) or '(none)'}")
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in args]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: required argument of {cls.__name__} is missing")


def validate_spec(spec: dict[str, Any], where: str) -> None:
    """Check one ``train.callbacks`` entry (``{name: ..., **args}``) without building it."""
    if not isinstance(spec.get("name"), str):
        raise ValueError(f"{where}.name: each callback needs a `name` (registered: {', '.join(sorted(CALLBACKS))})")
    try:
        cls = resolve_callback(spec["name"])
    except ValueError as exc:
        raise ValueError(f"{where}.name: {exc}") from None
    check_args(cls, {k: v for k, v in spec.items() if k != "name"}, where)


def build_callbacks(specs: list[dict[str, Any]]) -> list[TrainerCallback]:
    """The callbacks named by ``train.callbacks``, in order."""
    out = []
    for spec in specs:
        args = {k: v for k, v in spec.items() if k != "name"}
        out.append(resolve_callback(spec["name"])(**args))
    return out
