"""Optional metric loggers (``train.loggers: [tensorboard, wandb]``), trainer callbacks fed every logged train
row (``train/loss``, ``train/lr``, ``train/tokens_per_s``, ...) and validation row (``val/val_bpb``, ...) at
the row's step, on rank 0 only.

- ``tensorboard``: event files in ``<run>/train/tensorboard`` (``tensorboard --logdir runs``); a resumed or
  extended run purges events after the step it resumes from, so a restart never leaves two curves.
- ``wandb``: Weights & Biases in ``<run>/train/wandb``, **offline** unless ``WANDB_MODE`` is set (no network,
  no account: ``wandb sync`` uploads later); one W&B run id per kiln run (kept in
  ``<run>/train/wandb/kiln-run-id``), so a resumed run continues the same W&B run. Project and entity come
  from ``WANDB_PROJECT`` / ``WANDB_ENTITY`` (default project ``kiln``).

Neither package is a dependency: ``pip install 'kiln[loggers]'``; a missing one is named when training starts.
Loggers are not fingerprinted: switching them on or off never rebuilds a stage.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
from pathlib import Path
from typing import Any

from kiln.train.callbacks import TrainerCallback, TrainState

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> the package it needs


def require(logger: str) -> None:
    """ImportError naming ``train.loggers`` and the install command when ``logger``'s package is missing."""
    package = PACKAGES[logger]
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"train.loggers: '{logger}' needs the {package} package, which is not installed: "
                          f"pip install 'kiln[loggers]' (or pip install {package}), or remove it from train.loggers")


def scalars(row: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a metrics row as ``prefix/name`` (step and kind left out)."""
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in ("step", "kind") and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v)}


def _folder(state: TrainState, name: str) -> Path:
    base = state.out_dir if state.out_dir is not None else Path.cwd()
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class TensorBoardLogger(TrainerCallback):
    name = "tensorboard"

    def __init__(self) -> None:
        require("tensorboard")
        self.writer: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(_folder(state, "tensorboard")),
                                    purge_step=state.step + 1 if state.step > 0 else None)

    def _write(self, state: TrainState, prefix: str) -> None:
        if self.writer is None:
            return
        step = int(state.metrics.get("step", state.step))
        for tag, value in scalars(state.metrics, prefix).items():
            self.writer.add_scalar(tag, value, step)

    def on_log(self, state: TrainState) -> None:
        self._write(state, "train")

    def on_eval(self, state: TrainState) -> None:
        self._write(state, "val")
        if self.writer is not None:
            self.writer.flush()

    def on_train_end(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(TrainerCallback):
    name = "wandb"

    def __init__(self) -> None:
        require("wandb")
        self.run: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        import wandb

        folder = _folder(state, "wandb")
        id_file = folder / "kiln-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        if not id_file.is_file():
            from kiln import atomic

            atomic.write_text(id_file, run_id)
        name = state.out_dir.parent.name if state.out_dir is not None else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "kiln"), name=name, id=run_id,
                              dir=str(folder), mode=os.environ.get("WANDB_MODE", "offline"), resume="allow")

    def _write(self, state: TrainState, prefix: str) -> None:
        if self.run is None:
            return
        step = int(state.metrics.get("step", state.step))
        self.run.log(scalars(state.metrics, prefix), step=step)

    def on_log(self, state: TrainState) -> None:
        self._write(state, "train")

    def on_eval(self, state: TrainState) -> None:
        self._write(state, "val")

    def on_train_end(self, state: TrainState) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


LOGGERS: dict[str, type[TrainerCallback]] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def build_loggers(names: list[str]) -> list[TrainerCallback]:
    """The callbacks of ``train.loggers``, in order (ImportError naming a missing package)."""
    return [LOGGERS[n]() for n in names]
