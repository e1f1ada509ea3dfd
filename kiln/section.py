"""The base of every recipe section (kept apart from :mod:`kiln.recipe` so step modules can import it cheaply)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def fingerprint(self) -> str:
        return fingerprint_of(self.model_dump(mode="json"))


def fingerprint_of(obj: Any) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
