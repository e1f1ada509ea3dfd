"""Funnel bookkeeping shared by every corpus step: the document type, byte counts, one funnel row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Doc = dict[str, Any]
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 200


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
        return asdict(self)
