"""Fault injection for the reliability suite (tests/test_faults_*.py, docs/reliability.md).

``KILN_FAULT_POINT=name:count`` makes the ``count``-th call (1-based, in this process) of
``maybe_fail(name)`` kill the process with SIGKILL, as a crash or the OOM killer would: no
``finally`` blocks, no atexit, no flush. Without the variable ``maybe_fail`` is a dictionary lookup.

Named points: ``atomic_rename`` (a file written, fsynced, not yet renamed), ``staged_dir_rename`` (a
stage or checkpoint folder complete, not yet renamed), ``checkpoint`` (a checkpoint half assembled),
``shard_close`` (a shard's tokens written, its index and metadata not), ``train_step`` (between a
step's backward and its optimizer step).
"""

from __future__ import annotations

import os
import signal

ENV = "KILN_FAULT_POINT"
_calls: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or 1)


def maybe_fail(name: str) -> None:
    """Count a call of point ``name``; SIGKILL this process if it is the one ``KILN_FAULT_POINT`` names."""
    target = _target()
    if target is None:
        return
    _calls[name] = _calls.get(name, 0) + 1  # every point counts while the variable is set (for tests)
    if name == target[0] and _calls[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
