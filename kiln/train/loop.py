"""One small optimisation loop for the jobs that are not a pretraining run: probe fine-tuning
(kiln/eval/probe.py) and the MiniLM MLM continuation (kiln/train/bert_mlm.py).

:func:`run_loop` owns what every such loop repeats: AdamW over parameter groups (each group's own ``lr``),
linear warmup then a constant rate, gradient accumulation over ``accumulation`` micro-batches (each micro
loss divided by their number), clipping of the global gradient norm, ``zero_grad``/``step``. The caller
supplies only ``loss_fn(step, micro) -> loss`` (draw its batch, run its model). The pretraining
:class:`~kiln.train.trainer.Trainer` adds what a run needs on top (data stream, distributed sync, checkpoints,
fault guard, callbacks) and keeps its own step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LoopConfig:
    steps: int
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr, then constant
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    accumulation: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)


def lr_factor(step: int, warmup_steps: int) -> float:
    """The learning-rate multiplier at 0-based ``step``: (step + 1) / warmup during warmup, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def param_groups(groups: Iterable[nn.Parameter] | list[dict], lr: float | None = None) -> list[dict]:
    """``[{"params": [...], "lr": ...}, ...]`` from a list of such dicts, or from parameters and one ``lr``."""
    groups = list(groups)
    if groups and isinstance(groups[0], dict):
        return [{**g, "params": list(g["params"])} for g in groups]
    if lr is None:
        raise ValueError("run_loop: give lr with a flat list of parameters")
    return [{"params": groups, "lr": lr}]


def run_loop(groups: Iterable[nn.Parameter] | list[dict], loss_fn: Callable[[int, int], torch.Tensor],
             cfg: LoopConfig, lr: float | None = None) -> list[float]:
    """Train ``groups`` for ``cfg.steps`` AdamW steps on ``loss_fn``; the per-step losses (mean over micro)."""
    if cfg.steps < 0 or cfg.accumulation < 1:
        raise ValueError(f"run_loop: steps must be >= 0 and accumulation >= 1, got {cfg.steps}, {cfg.accumulation}")
    groups = param_groups(groups, lr)
    base = [g["lr"] for g in groups]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=cfg.betas)
    losses = []
    for step in range(cfg.steps):
        factor = lr_factor(step, cfg.warmup_steps)
        for g, lr0 in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr0 * factor
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(cfg.accumulation):
            loss = loss_fn(step, micro)
            (loss / cfg.accumulation if cfg.accumulation > 1 else loss).backward()
            total += float(loss.detach())
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(total / cfg.accumulation)
    return losses
