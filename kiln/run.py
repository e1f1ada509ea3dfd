"""Run directory, stage manifests and fingerprints, skip-if-done, and the run lock.

``runs/<name>/`` holds the resolved ``recipe.yaml``, one folder per stage with a
``manifest.json`` (fingerprint of the stage's config sections and of its inputs'
manifests), and ``metrics.jsonl``. A stage is complete iff its manifest exists,
says ``complete`` and carries the expected fingerprint; manifests are written last
and atomically, so an interrupted stage never looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from kiln import atomic
from kiln.recipe import Recipe, fingerprint_of

MANIFEST = "manifest.json"


class RunError(RuntimeError):
    """A run directory in a state kiln refuses to use; the message says what to do."""


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def for_recipe(cls, recipe: Recipe, run_dir: str | Path | None = None, runs_root: str | Path = "runs") -> RunDir:
        return cls(Path(run_dir) if run_dir else Path(runs_root) / recipe.name)

    # -- paths
    def stage(self, name: str) -> Path:
        return self.root / name

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    # -- manifests
    def manifest(self, name: str) -> dict | None:
        path = self.stage(name) / MANIFEST
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}: corrupt manifest ({exc}); rerun with --force {name}") from None

    def is_complete(self, name: str, fingerprint: str) -> bool:
        m = self.manifest(name)
        return bool(m and m.get("complete") and m.get("fingerprint") == fingerprint)

    def require(self, name: str) -> dict:
        m = self.manifest(name)
        if not (m and m.get("complete")):
            raise RunError(f"stage '{name}' has not completed in {self.root}; run it first (kiln {name} ...)")
        return m

    def write_recipe(self, recipe: Recipe) -> None:
        atomic.write_text(self.recipe_path, recipe.to_yaml())

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete what an interrupted process left half-written (``.*.tmp``, ``.*.old.*``); call under the lock."""
        stale = [p for pattern in (".*.tmp", ".*.old.*") for p in self.root.rglob(pattern)]
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return stale

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the run directory: a second kiln process on it refuses at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"{self.root} is in use by another kiln process (lock {self.root / '.lock'})") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)


HASH_LIMIT = 64 << 20  # files up to this size are hashed (sha256), larger ones checked by size


def file_records(folder: Path) -> dict[str, dict]:
    """``{relative path: {"bytes", "sha256"?}}`` for every file under ``folder`` but the manifest."""
    out: dict[str, dict] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel == MANIFEST:
            continue
        rec: dict = {"bytes": p.stat().st_size}
        if rec["bytes"] <= HASH_LIMIT:
            rec["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        out[rel] = rec
    return out


def verify_files(folder: Path, manifest: dict) -> None:
    """Raise RunError if a file the manifest records is missing, resized or (when hashed) changed."""
    for rel, rec in (manifest.get("files") or {}).items():
        p = folder / rel
        if not p.is_file():
            problem = "is missing"
        elif p.stat().st_size != rec["bytes"]:
            problem = f"has {p.stat().st_size} bytes, the stage wrote {rec['bytes']} (truncated or replaced?)"
        elif "sha256" in rec and hashlib.sha256(p.read_bytes()).hexdigest() != rec["sha256"]:
            problem = "was modified after the stage completed (sha256 differs)"
        else:
            continue
        stage = manifest.get("stage", folder.name)
        raise RunError(f"{p} {problem}; refusing to use it. Rebuild with --force {stage}")


def make_manifest(name: str, fingerprint: str, seconds: float, stats: dict, inputs: dict[str, str]) -> dict:
    return {
        "stage": name,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "complete": True,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "stats": stats,
    }


def stage_fingerprint(recipe: Recipe, sections: tuple[str, ...], input_fps: dict[str, str]) -> str:
    config = {s: getattr(recipe, s).model_dump(mode="json") for s in sections}
    return fingerprint_of({"config": config, "inputs": input_fps})
