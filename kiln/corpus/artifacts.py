"""Where corpus steps put their own files (a trained classifier, a program log): the corpus stage folder.

The pipeline sets ``ctx.out_dir`` to the (staged) corpus folder; a step called without one (a unit test,
a notebook) writes nothing and says so in its report, rather than guessing a location.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def stage_dir(ctx: Any) -> Path | None:
    """The corpus stage folder of ``ctx`` (``ctx.out_dir``), created if needed; None when the context has none."""
    out = getattr(ctx, "out_dir", None)
    if out is None:
        return None
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path
