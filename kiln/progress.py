"""Progress for long steps: bars (rich) on a terminal, plain lines in logs; nothing when KILN_QUIET=1.

On a terminal a live bar; without one (piped, CI, nohup, Slurm logs) a bar prints nothing until it ends, so
long loops also write :class:`PlainLines`: one plain ``label: step 40/160 (25%) loss ... ETA 1m12s`` line
every ``every_s`` seconds (``KILN_PROGRESS_SECONDS``, default 30) or every tenth of the run, whichever comes
first, flushed at once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(stderr=True, soft_wrap=True)


def enabled() -> bool:
    return os.environ.get("KILN_QUIET") != "1" and sys.stderr.isatty()


def plain_enabled() -> bool:
    """Plain progress lines: stderr is not a terminal (where a bar would stay silent) and not quiet."""
    return os.environ.get("KILN_QUIET") != "1" and not sys.stderr.isatty()


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainLines:
    """Plain progress lines of a loop over ``total`` steps (see the module docstring); ``active`` defaults
    to :func:`plain_enabled`. :meth:`update` prints when a line is due, with an ETA from the steps done in
    this session (a resumed loop starts counting at ``start``)."""

    def __init__(self, label: str, total: int, start: int = 0, every_s: float | None = None,
                 every_steps: int | None = None, active: bool | None = None) -> None:
        self.label, self.total, self.start = label, total, start
        self.every_s = float(os.environ.get("KILN_PROGRESS_SECONDS", 30)) if every_s is None else every_s
        self.every_steps = every_steps if every_steps is not None else max(total // 10, 1)
        self.active = plain_enabled() if active is None else active
        self.t0 = self.last_t = time.perf_counter()
        self.last_step = start

    def due(self, step: int) -> bool:
        return self.active and (step >= self.total or step - self.last_step >= self.every_steps
                                or time.perf_counter() - self.last_t >= self.every_s)

    def line(self, step: int, fields: str = "") -> str:
        now = time.perf_counter()
        done = step - self.start
        eta = (now - self.t0) / done * (self.total - step) if done > 0 else None
        pct = 100 * step / max(self.total, 1)
        parts = [f"{self.label}: step {step}/{self.total} ({pct:.0f}%)", fields,
                 f"elapsed {format_seconds(now - self.t0)}", f"ETA {format_seconds(eta)}" if eta is not None else ""]
        return " ".join(p for p in parts if p)

    def update(self, step: int, fields: str = "", force: bool = False) -> bool:
        """Print a line for ``step`` if one is due (or ``force``, when active); whether one was printed."""
        if not (self.active and (force or self.due(step))):
            return False
        print(self.line(step, fields), file=sys.stderr, flush=True)
        self.last_t, self.last_step = time.perf_counter(), step
        return True


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled(),
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (a no-op wrapper when bars are disabled)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)


def log(message: str) -> None:
    """A one-line status message on stderr (always shown unless KILN_QUIET=1)."""
    if os.environ.get("KILN_QUIET") != "1":
        console.print(message, highlight=False)
