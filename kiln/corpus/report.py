"""Funnel bookkeeping shared by every corpus step: the document type, byte counts, one funnel row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Doc = dict[str, Any]
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 200
SAMPLE = 4096  # scores kept per funnel row for the report's histogram


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass
class StepReport:
    """One funnel row. ``bytes_removed`` is input minus output bytes (so normalisation may count too)."""

    step: str
    docs_in: int = 0
    docs_out: int = 0
    docs_removed: int = 0
    docs_changed: int = 0
    bytes_removed: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    def example(self, doc: Doc, reason: str, **extra: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"id": doc["id"], "reason": reason, "text": doc["text"][:EXAMPLE_CHARS], **extra})

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for extra in ("errors", "scores", "selection", "summary"):  # on_error: skip; scorers; select; any step
            if getattr(self, extra, None):
                out[extra] = getattr(self, extra)
        return out


def merge_rows(label: str, parts: list[StepReport]) -> StepReport:
    """One funnel row from shard rows in shard order: counts summed, the first examples in corpus order,
    score summaries merged."""
    rep = StepReport(label)
    for part in parts:
        for name in ("docs_in", "docs_out", "docs_removed", "docs_changed", "bytes_removed"):
            setattr(rep, name, getattr(rep, name) + getattr(part, name))
        rep.examples.extend(part.examples[:MAX_EXAMPLES - len(rep.examples)])
    scores = merge_summaries([getattr(p, "scores", None) for p in parts])
    if scores is not None:
        rep.scores = scores  # type: ignore[attr-defined]
    selection = next((p.selection for p in parts if getattr(p, "selection", None)), None)  # type: ignore[attr-defined]
    if selection is not None:
        rep.selection = selection  # type: ignore[attr-defined]
    return rep


def score_summary(scores: np.ndarray, column: str) -> dict[str, Any]:
    """The funnel row's ``scores`` entry for one task's scores."""
    finite = scores[np.isfinite(scores)]
    stride = max(1, -(-len(finite) // SAMPLE))
    return {"field": column, "n": int(len(scores)), "n_nan": int(len(scores) - len(finite)),
            "min": float(finite.min()) if len(finite) else None, "max": float(finite.max()) if len(finite) else None,
            "sample": [float(f"{x:.6g}") for x in finite[::stride]]}


def merge_summaries(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One ``scores`` entry from shard entries in shard order (the sample thinned back to :data:`SAMPLE`)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    lows = [p["min"] for p in parts if p["min"] is not None]
    highs = [p["max"] for p in parts if p["max"] is not None]
    sample = [x for p in parts for x in p["sample"]]
    stride = max(1, -(-len(sample) // SAMPLE))
    return {"field": parts[0]["field"], "n": sum(p["n"] for p in parts), "n_nan": sum(p["n_nan"] for p in parts),
            "min": min(lows) if lows else None, "max": max(highs) if highs else None,
            "sample": sample[::stride]}
