"""AdamW (Loshchilov & Hutter 2019) with learning-rate schedules.

Schedules: linear warmup then cosine decay to ``min_lr_ratio * lr``; WSD
(warmup-stable-decay, Hu et al. 2024 "MiniCPM"): constant after warmup, then a linear
decay over the last ``decay_fraction`` of steps; or constant.

Warm-up never takes more than half the run: ``train.warmup_steps`` above ``steps // 2`` (the default 50
against ``train.steps=30``) is shortened to ``steps // 2`` so the schedule still decays to its floor instead
of ending at the peak learning rate; :func:`schedule_warnings` says so before the run starts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kiln.recipe import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices (dim >= 2), none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused)


def effective_warmup(cfg: TrainConfig) -> int:
    """Warm-up steps actually used: ``train.warmup_steps``, at most half of ``train.steps``."""
    return min(cfg.warmup_steps, cfg.steps // 2)


def schedule_warnings(cfg: TrainConfig) -> list[str]:
    """Plain-language warnings about a schedule that would not do what its numbers suggest."""
    warmup = effective_warmup(cfg)
    if warmup == cfg.warmup_steps:
        return []
    return [f"train.warmup_steps={cfg.warmup_steps} is more than half of train.steps={cfg.steps}: warm-up "
            f"shortened to {warmup} steps so the learning rate still decays (set train.warmup_steps<={warmup} "
            "to silence this)"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    total = cfg.steps
    warmup = effective_warmup(cfg)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(total - warmup - 1, 1)
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_steps = max(int(round(cfg.decay_fraction * total)), 1)
    decay_start = total - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start + 1) / decay_steps
    return cfg.lr + (floor - cfg.lr) * min(progress, 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
