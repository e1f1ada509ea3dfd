"""Atomic writes: every artifact appears whole or not at all.

Files are written to a temporary sibling, flushed, fsynced and renamed into place;
directories are built under a temporary sibling name and renamed when complete. A failed
write (disk full, file too large, I/O error) removes the temporary and raises ``WriteError``
naming the artifact, so nothing half-written is ever left under the final name.

Modes follow the user's umask like ``open``/``mkdir`` (``tempfile`` would leave 0o600 files and 0o700
folders, and some writers, safetensors among them, create 0o600 files): a run folder shared with a group
stays readable by it.
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


def current_umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file as ``open()`` would create it: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def make_temp_dir(prefix: str, dir: str | Path, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` (private 0o700 while being filled) reset to the mode ``mkdir`` would give it:
    0o777 less the umask, so a stage or export folder renamed into place looks like any other folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def snapshot(root: str | Path) -> dict[Path, tuple[int, int]]:
    """``{path: (inode, mtime)}`` of everything under ``root`` (empty if it does not exist)."""
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.exists() else []
    return {p: (st.st_ino, st.st_mtime_ns) for p in paths if not p.is_symlink() for st in [p.stat()]}


def follow_umask(root: str | Path, before: dict[Path, tuple[int, int]] | None = None) -> None:
    """Give what was written under ``root`` since ``before`` (a :func:`snapshot`; None = everything) the modes
    ``open``/``mkdir`` give under the umask: writers such as ``transformers``' ``save_pretrained`` stage files
    with ``mkstemp`` and leave them 0o600. What was there before and untouched (and ``root`` itself, if it
    existed) keeps its mode."""
    mask = current_umask()
    before = before or {}
    for p, ident in snapshot(root).items():
        if before.get(p) == ident or (p == Path(root) and p in before):  # an existing folder keeps its mode
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)


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
        os.fchmod(fd, file_mode())  # mkstemp creates 0o600; artifacts follow the umask like any file
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
            os.chmod(tmp, file_mode())  # whatever mode the writer chose, the artifact follows the umask
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
    tmp = make_temp_dir(f".{path.name}.", path.parent, suffix=".tmp")
    try:
        yield tmp
        follow_umask(tmp)  # writers such as safetensors' save_file create 0o600 files
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
