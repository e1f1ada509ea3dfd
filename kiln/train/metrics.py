"""``metrics.jsonl``: one JSON object per line, appended and flushed as training runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from kiln import atomic


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash: everything after it is dropped
        return out

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step`` (used on resume so the curve has no duplicates)."""
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        atomic.write_text(self.path, "")

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


class ObjectiveMetrics:
    """An objective's named metrics (``loss``'s second value), summed over a step's micro-batches on the device.

    Logged in the step's train row like the objective's validation metrics (kiln/eval/objective_val.py): each
    sum over micro-batches and ranks divided by the step's target count, named ``<name without _sum>_per_target``
    (``mlm_loss_sum`` -> ``mlm_loss_per_target``, ``disc_correct`` -> ``disc_correct_per_target``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, named: dict[str, torch.Tensor | float]) -> None:
        for key, value in named.items():
            t = torch.as_tensor(value, device=self.device).detach().double().sum()
            self.sums[key] = self.sums[key] + t if key in self.sums else t

    def agree(self, keys_per_rank: list[list[str]]) -> None:
        """Add zero sums for keys other ranks reported (a switching objective may run different objectives on
        different ranks), so every rank all-reduces the same list."""
        for keys in keys_per_rank:
            for key in keys:
                if key not in self.sums:
                    self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)

    def values(self) -> list[float]:
        """The sums in key order (one device read for all of them)."""
        return torch.stack([self.sums[k] for k in sorted(self.sums)]).tolist() if self.sums else []

    def per_target(self, totals: list[float], n_targets: int) -> dict[str, float]:
        """``totals`` (:meth:`values`, summed over ranks) divided by the step's target count, renamed."""
        return {k.removesuffix("_sum") + "_per_target": v / n_targets for k, v in zip(sorted(self.sums), totals,
                                                                                    strict=True)}
