"""Reading one number out of a run's nested metrics (``eval/metrics.json``) by a "/"-separated path.

Shared by the sweep comparison (:mod:`kiln.experiments.collect`) and by steps that rank models by an eval
result (PreSelect's ``rank_by``): ``metric_value(m, "tasks/shakespeare-cloze/acc")``.
"""

from __future__ import annotations

import math
from typing import Any


def metric_value(metrics: Any, path: str) -> float | None:
    """Walk "/"-separated ``path`` through nested mappings; a finite number (bools are not numbers) or None."""
    node: Any = metrics
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)
