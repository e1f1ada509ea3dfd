"""The stage store: completed stage folders kept by stage name + fingerprint, shared by runs.

A run that needs a stage whose fingerprint is already in the store takes that folder instead of
rebuilding it (sweeps: variants that differ only in training share corpus, tokenizer and tokens).

- Where: ``$KILN_STAGE_CACHE`` if set (``off`` disables the store), else ``.store/`` next to the run
  directory (``runs/.store/`` for ``runs/<name>``), so runs under one root share it and a test's
  temporary run directories never see another test's. The location is in no fingerprint.
- Layout: ``<store>/<stage>/<fingerprint>/`` = the stage folder with its ``manifest.json``.
- Copy-free: files are hard-linked between the run and the store (copied when the filesystem refuses
  links). kiln never writes an existing artifact in place (every write is a new file renamed into
  place, :mod:`kiln.atomic`), so rebuilding a stage (``--force``) in one run replaces that run's
  links and leaves the store and other runs' files untouched.
- Built once: a run about to build a shareable stage takes a per-(stage, fingerprint) inter-process lock
  (:meth:`StageStore.acquire`, ``<store>/.locks/``), re-checks the store, builds, publishes, releases; a run
  waiting on the lock then reuses the entry (concurrent runs of a sweep build corpus/tokenizer/tokens once).
- Safe: an entry is verified against its manifest's file records (sizes, sha256) before reuse; a
  damaged entry is dropped and the stage rebuilt. Entries appear atomically (built in a temporary
  folder, renamed); two runs publishing the same entry at once keep the first.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kiln.progress import log
from kiln.run import MANIFEST, RunDir, RunError, verify_files

STORE_ENV = "KILN_STAGE_CACHE"
OFF = ("off", "none", "0", "false")
_HELD: dict[tuple[str, str, str], object] = {}  # build locks this process holds: (store, stage, fingerprint)


def link_tree(src: Path, dst: Path) -> None:
    """Recreate folder ``src`` at ``dst`` (new or empty) with hard links, copies where links fail."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:  # another filesystem, or links not allowed: a real copy
            shutil.copy2(p, target)


class StageStore:
    """Completed stage folders by (stage, fingerprint); ``root`` None = disabled."""

    def __init__(self, root: Path | None):
        self.root = Path(root).expanduser() if root is not None else None

    @classmethod
    def for_run(cls, run: RunDir) -> StageStore:
        env = os.environ.get(STORE_ENV)
        if env is not None:
            return cls(None if env.strip().lower() in OFF or not env.strip() else Path(env))
        return cls(run.root.absolute().parent / ".store")

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def acquire(self, stage: str, fingerprint: str) -> None:
        """Hold the build lock of (stage, fingerprint) until :meth:`release`; waits while another process holds
        it (a killed holder's lock is freed by the OS: ``fcntl`` locks via ``fasteners``)."""
        key = (str(self.root), stage, fingerprint)
        if self.root is None or key in _HELD:
            return
        import fasteners

        path = self.root / ".locks" / f"{stage}-{fingerprint}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = fasteners.InterProcessLock(str(path))
        if not lock.acquire(blocking=False):
            log(f"{stage}: another run is building {fingerprint}; waiting for it to reuse its result")
            lock.acquire()
        _HELD[key] = lock

    def release(self, stage: str, fingerprint: str) -> None:
        """Release the build lock taken by :meth:`acquire` (nothing if not held)."""
        lock = _HELD.pop((str(self.root), stage, fingerprint), None)
        if lock is not None:
            lock.release()

    def entry(self, stage: str, fingerprint: str) -> Path:
        assert self.root is not None
        return self.root / stage / fingerprint

    def lookup(self, stage: str, fingerprint: str) -> Path | None:
        """The verified entry for (stage, fingerprint), or None; a damaged entry is removed."""
        if self.root is None:
            return None
        entry = self.entry(stage, fingerprint)
        path = entry / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
            if not (manifest.get("complete") and manifest.get("fingerprint") == fingerprint):
                raise RunError(f"{path}: not a complete {stage} manifest with fingerprint {fingerprint}")
            verify_files(entry, manifest)
        except (RunError, json.JSONDecodeError, OSError) as exc:
            log(f"{stage}: stage store entry {entry} is damaged ({exc}); dropping it")
            self._discard(entry)
            return None
        return entry

    def publish(self, stage: str, fingerprint: str, folder: Path, replace: bool = False) -> Path | None:
        """Add a completed stage folder (hard links); keeps an existing entry unless ``replace``."""
        if self.root is None:
            return None
        entry = self.entry(stage, fingerprint)
        if entry.exists() and not replace:
            return entry
        tmp = entry.parent / f".{fingerprint}.{os.getpid()}.tmp"
        _sweep(entry.parent)
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            link_tree(folder, tmp)
            if entry.exists():
                self._discard(entry)
            os.rename(tmp, entry)
        except OSError as exc:  # a full disk or a concurrent publisher: the run itself is complete
            shutil.rmtree(tmp, ignore_errors=True)
            if not entry.exists():
                log(f"{stage}: could not add to the stage store {self.root} ({exc})")
                return None
        return entry

    def _discard(self, entry: Path) -> None:
        aside = entry.parent / f".{entry.name}.old.{os.getpid()}"
        try:
            os.rename(entry, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _sweep(folder: Path) -> None:
    """Delete what a killed publisher left in ``folder`` (``.<fp>.<pid>.tmp``, ``.<fp>.old.<pid>``)."""
    if not folder.is_dir():
        return
    for p in folder.glob(".*"):
        parts = p.name.split(".")
        pid = parts[-2] if p.name.endswith(".tmp") else parts[-1] if ".old." in p.name else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
