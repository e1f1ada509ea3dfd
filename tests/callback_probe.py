"""Callbacks used by tests through ``train.callbacks: [{name: tests.callback_probe:...}]`` (also under torchrun)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kiln.train.callbacks import TrainerCallback, TrainState


def digest(tensors) -> float:
    return float(sum(t.detach().double().abs().sum() + t.detach().double().sum() for t in tensors))


class StateDigest(TrainerCallback):
    """Writes, per rank, a digest of the parameters and gradients at every callback point to ``out``."""

    def __init__(self, out: str) -> None:
        self.out, self.rows = Path(out), []

    def _record(self, point: str, state: TrainState) -> None:
        params = list(state.model.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        self.rows.append({"point": point, "step": state.step, "params": digest(params),
                          "grads": digest(grads) if grads else None})

    def after_backward(self, state: TrainState) -> None:
        self._record("after_backward", state)

    def after_optimizer_step(self, state: TrainState) -> None:
        self._record("after_optimizer_step", state)

    def on_train_end(self, state: TrainState) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{state.rank}.json").write_text(json.dumps(self.rows))


class Events(TrainerCallback):
    """Records every callback point it meets, with the step and a few facts, in ``self.events``."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.grad_norms: list[float] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.events.append(("on_train_begin", state.step))

    def after_backward(self, state: TrainState) -> None:
        norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in state.model.parameters() if p.grad is not None))
        self.grad_norms.append(float(norm))
        self.events.append(("after_backward", state.step))

    def after_optimizer_step(self, state: TrainState) -> None:
        self.events.append(("after_optimizer_step", state.step))
        state.metrics["probe_step_seen"] = state.step

    def on_eval(self, state: TrainState) -> None:
        self.events.append(("on_eval", state.step, state.metrics["val_loss"]))
        state.metrics["probe_eval"] = 1.0

    def on_checkpoint(self, state: TrainState, path: Path) -> None:
        self.events.append(("on_checkpoint", state.step, Path(path).is_dir()))

    def on_train_end(self, state: TrainState) -> None:
        self.events.append(("on_train_end", state.step))


class ZeroLoss(TrainerCallback):
    """``micro_loss`` scaled to 0: nothing is learned (a sample weight of 0 for every row)."""

    def micro_loss(self, state: TrainState, prepared, loss_sum: torch.Tensor) -> torch.Tensor:
        return loss_sum * 0.0
