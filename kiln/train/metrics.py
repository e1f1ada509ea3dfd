"""``metrics.jsonl``: one JSON object per line, appended and flushed as training runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
