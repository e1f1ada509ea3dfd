"""Atomic writes: every artifact appears whole or not at all.

Files are written to a temporary sibling, flushed, fsynced and renamed into place;
directories are built under a temporary sibling name and renamed when complete. A failed
write (disk full, file too large, I/O error) removes the temporary and raises ``WriteError``
naming the artifact, so nothing half-written is ever left under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.faults import maybe_fail


class WriteError(OSError):
    """Writing an artifact failed (disk full, quota, I/O error); nothing was left under its name."""


def write_error(path: Path, exc: BaseException) -> WriteError:
    """A WriteError naming ``path`` for a failed write (with the disk-space hint when it looks like one)."""
    if not isinstance(exc, OSError):  # torch/safetensors writers raise their own types
        exc = OSError(errno.EIO, f"{str(exc).splitlines()[0][:200]} (disk full?)")
    why = exc.strerror or str(exc)
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(w in why for w in ("space", "large", "full"))
    hint = "; free disk space (or point --run-dir elsewhere) and rerun" if full else ""
    return WriteError(exc.errno, f"could not write {path}: {why}{hint}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        maybe_fail("atomic_rename")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def staged_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` if the block succeeds.

    For writers that want a filename (pyarrow, numpy, safetensors, tokenizers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as exc:
            if isinstance(exc, WriteError) or not tmp.exists():
                raise
            raise write_error(path, exc) from exc
        maybe_fail("atomic_rename")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        maybe_fail("staged_dir_rename")
        if path.exists():
            trash = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
