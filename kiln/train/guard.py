"""Training fault guard: non-finite losses/gradients and loss spikes (``train.on_nonfinite``).

A step is *faulty* if its loss or its gradient norm is NaN/inf, or (``train.spike_factor`` = k) its loss
exceeds k x the median of the last ``spike_window`` accepted losses (once at least half the window is
filled). The trainer then, per ``train.on_nonfinite``:

- ``stop``: raises ``TrainingFault`` (the last checkpoint is intact; the message says what to change);
- ``skip``: drops the step's gradients, takes no optimizer step, and moves on to the next batch (the step
  counter still advances, so the run ends after ``train.steps`` batches);
- ``rollback``: reloads the latest checkpoint (weights, optimizer, loader, RNG; a step-0 checkpoint is
  written at the start for this), multiplies the LR by ``rollback_lr_factor`` and goes on from there.

More than ``train.max_faults`` skips + rollbacks stop the run. Each event is a ``{"kind": "fault"}`` row in
metrics.jsonl and counted in the train stage's stats. The guard's state (window, LR scale, counts) is part
of ``trainer_state.json``, so a resumed run judges spikes exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from kiln.recipe import TrainConfig


class TrainingFault(FloatingPointError):
    """Training cannot go on (non-finite loss, a spike, too many faults); the message says what to change."""


class TrainingOOM(MemoryError):
    """A batch did not fit in memory; the message names the settings that reduce memory."""


def oom_message(step: int, exc: BaseException) -> str:
    return (f"train: out of memory at step {step} ({str(exc).splitlines()[0][:200]}); lower "
            "train.micro_batch_size (the batch is accumulated, so results do not change), set "
            "parallel.activation_checkpointing=full, or set train.loss_chunk_tokens (e.g. 4096) to avoid full logits")


def is_oom(exc: BaseException) -> bool:
    """A CUDA/host out-of-memory error (``torch.OutOfMemoryError`` is a RuntimeError saying so)."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class FaultGuard:
    cfg: TrainConfig
    history: list[float] = field(default_factory=list)
    lr_scale: float = 1.0
    skipped: int = 0
    rollbacks: int = 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """The fault reason for a step's loss and gradient norm, or None if the step is fine."""
        if not math.isfinite(loss):
            return "nonfinite_loss"
        if not math.isfinite(grad_norm):
            return "nonfinite_grad"
        k, window = self.cfg.spike_factor, self.cfg.spike_window
        if k is not None and len(self.history) >= max(window // 2, 1):
            median = statistics.median(self.history)
            if loss > k * median:
                return "loss_spike"
        return None

    def accept(self, loss: float) -> None:
        self.history = (self.history + [loss])[-self.cfg.spike_window:]

    def action(self, reason: str, step: int, loss: float) -> str:
        """Count a fault and return what to do ('skip' or 'rollback'); raise TrainingFault to stop."""
        what = {"nonfinite_loss": f"loss is {loss}", "nonfinite_grad": "the gradient norm is not finite",
                "loss_spike": f"loss {loss:.4g} > {self.cfg.spike_factor} x the median of recent losses"}[reason]
        mode = self.cfg.on_nonfinite
        if mode == "stop":
            raise TrainingFault(f"train: {what} at step {step + 1}; stopped (train.on_nonfinite=stop). Lower "
                                "train.lr, check the data, or set train.on_nonfinite=skip|rollback")
        if self.skipped + self.rollbacks >= self.cfg.max_faults:
            raise TrainingFault(f"train: {what} at step {step + 1}, after {self.skipped} skipped steps and "
                                f"{self.rollbacks} rollbacks (train.max_faults={self.cfg.max_faults}); stopped")
        if mode == "skip":
            self.skipped += 1
        else:
            self.rollbacks += 1
            self.lr_scale *= self.cfg.rollback_lr_factor
        return mode

    def state_dict(self) -> dict:
        return {"history": list(self.history), "lr_scale": self.lr_scale, "skipped": self.skipped,
                "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}
        self.history = list(state.get("history", []))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.skipped = int(state.get("skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
