"""The built-in progress callback: plain progress lines of a training run written to a log, not a terminal.

Without a terminal the trainer's progress bar prints nothing between "running" and "done"; this callback
(added by the trainer to every run, active only when stderr is not a TTY and ``KILN_QUIET`` is unset, on rank
0) prints ``train: step 40/160 (25%) loss 3.412 lr 3.00e-03 12.3k tok/s elapsed 41s ETA 2m03s`` at most every
``KILN_PROGRESS_SECONDS`` seconds (default 30) or every tenth of the run, and one line per validation.
"""

from __future__ import annotations

from kiln.progress import PlainLines, plain_enabled
from kiln.train.callbacks import TrainerCallback, TrainState


class ProgressLines(TrainerCallback):
    name = "progress_lines"

    def __init__(self, total: int, every_s: float | None = None, every_steps: int | None = None,
                 active: bool | None = None) -> None:
        self.total, self.every_s, self.every_steps, self.active = total, every_s, every_steps, active
        self.lines: PlainLines | None = None

    def on_train_begin(self, state: TrainState) -> None:
        active = (plain_enabled() if self.active is None else self.active) and state.rank == 0
        self.lines = PlainLines("train", self.total, start=state.step, every_s=self.every_s,
                                every_steps=self.every_steps, active=active)

    def on_log(self, state: TrainState) -> None:
        row = state.metrics
        if self.lines is None or "loss" not in row:
            return
        self.lines.update(int(row["step"]), f"loss {row['loss']:.4f} lr {row['lr']:.2e} "
                                            f"{row.get('tokens_per_s', 0.0) / 1e3:.1f}k tok/s")

    def on_eval(self, state: TrainState) -> None:
        row = state.metrics
        if self.lines is None or not self.lines.active:
            return
        value = (f"val bpb {row['val_bpb']:.4f}" if row.get("val_bpb") is not None
                 else f"val {row.get('val_objective', 'objective')} loss {row['val_loss']:.4f}")
        self.lines.update(int(row["step"]), value, force=True)
