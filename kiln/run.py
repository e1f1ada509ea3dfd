"""Run directory, stage manifests and fingerprints, rebuild reasons, skip-if-done, and the run lock.

``runs/<name>/`` holds the resolved ``recipe.yaml``, one folder per stage with a ``manifest.json``
(fingerprint of the stage's non-default config, its external inputs' content (:mod:`kiln.inputs`) and its
input stages' fingerprints; the config view and external records themselves, so a rerun can say what
changed), and ``metrics.jsonl``. A stage is complete iff its manifest exists, says ``complete`` and
carries the expected fingerprint; manifests are written last and atomically, so an interrupted stage
never looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from kiln import atomic
from kiln.filehash import sha256_file
from kiln.inputs import changed_inputs, identity
from kiln.recipe import Recipe, fingerprint_of
from kiln.section import config_view

MANIFEST = "manifest.json"


class RunError(RuntimeError):
    """A run directory in a state kiln refuses to use; the message says what to do."""


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def for_recipe(cls, recipe: Recipe, run_dir: str | Path | None = None, runs_root: str | Path = "runs",
                   force_run: bool = False) -> RunDir:
        """``run_dir``, or ``runs/<recipe.name>``; refuses a folder holding another recipe's run (see
        :meth:`check_recipe`) unless ``force_run``."""
        run = cls(Path(run_dir) if run_dir else Path(runs_root) / recipe.name)
        if not force_run:
            run.check_recipe(recipe)
        return run

    def check_recipe(self, recipe: Recipe) -> None:
        """Raise RunError if this folder already holds a run of a recipe with another ``name``.

        A run folder belongs to one recipe: rerunning it with overrides is normal (stages whose sections
        changed are rebuilt), but running a different recipe there would silently replace its corpus and more.
        """
        saved = self.saved_recipe_tree()
        if saved is None or saved.get("name") == recipe.name:
            return
        import yaml

        new = yaml.safe_load(recipe.to_yaml())
        differs = [k for k in new if k != "name" and saved.get(k) != new[k]]
        raise RunError(
            f"{self.root} holds a run of recipe '{saved.get('name')}' (its recipe.yaml), not '{recipe.name}'"
            + (f"; they differ in {', '.join(differs)}" if differs else "")
            + ". Use another --run-dir, or --force-run to reuse this folder (stages whose settings differ are "
            "rebuilt, replacing the old run's artifacts)")

    def saved_recipe_tree(self) -> dict | None:
        """The run's saved ``recipe.yaml`` as a plain mapping (None if there is none or it is unreadable)."""
        import yaml

        try:
            tree = yaml.safe_load(self.recipe_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return None
        return tree if isinstance(tree, dict) else None

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
        """Save the resolved recipe; an equal one already saved is left untouched (bytes and time)."""
        saved = self.saved_recipe_tree()
        if saved is not None:
            try:
                if Recipe.model_validate(saved) == recipe:
                    return
            except ValueError:  # an older or hand-edited recipe.yaml that no longer validates: replace it
                pass
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
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o666)  # less the umask, like any file
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
            rec["sha256"] = sha256_file(p)
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
        elif "sha256" in rec and sha256_file(p) != rec["sha256"]:
            problem = "was modified after the stage completed (sha256 differs)"
        else:
            continue
        stage = manifest.get("stage", folder.name)
        raise RunError(f"{p} {problem}; refusing to use it. Rebuild with --force {stage}")


def make_manifest(name: str, fingerprint: str, seconds: float, stats: dict, inputs: dict[str, str],
                  config: dict | None = None, external: dict[str, dict] | None = None) -> dict:
    """A stage's manifest: ``inputs`` = upstream stages' fingerprints, ``config`` = its sections' non-default
    fields, ``external`` = its files outside the run (:mod:`kiln.inputs`)."""
    return {
        "stage": name,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "config": config or {},
        "external": external or {},
        "complete": True,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "stats": stats,
    }


def stage_config(recipe: Recipe, sections: tuple[str, ...]) -> dict:
    """The stage's recipe sections with default-valued fields left out (:func:`kiln.section.config_view`)."""
    return {s: config_view(getattr(recipe, s)) for s in sections}


def stage_fingerprint(recipe: Recipe, sections: tuple[str, ...], input_fps: dict[str, str],
                      external: dict[str, dict] | None = None, extra: object = None) -> str:
    """Hash of the stage's non-default config, its upstream fingerprints, its external inputs' identities
    (content hashes, versions) and ``extra`` (a registered stage's own parameters)."""
    payload: dict = {"config": stage_config(recipe, sections), "inputs": input_fps}
    if external:
        payload["external"] = {label: identity(rec) for label, rec in external.items()}
    if extra is not None:
        payload["extra"] = extra
    return fingerprint_of(payload)


def config_changes(old: object, new: object, path: str = "") -> list[str]:
    """Dotted paths whose value differs between two config views (``tokenizer.vocab_size: 4096 -> 600``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += config_changes(old.get(k, "<default>"), new.get(k, "<default>"), f"{path}.{k}" if path else str(k))
        return out
    if old == new:
        return []
    short = [json.dumps(v)[:40] if not isinstance(v, str) or v != "<default>" else v for v in (old, new)]
    return [f"{path or '<config>'}: {short[0]} -> {short[1]}"]


def rebuild_reason(old: dict | None, new: dict) -> str:
    """Why a stage runs, from its previous manifest ``old`` and the planned ``new`` (config, inputs,
    external): "source docs.jsonl changed", "config tokenizer.vocab_size: 4096 -> 600", "input tokenizer
    changed"; "" when there is no previous complete manifest to compare with."""
    if not old:
        return ""
    why = changed_inputs(old.get("external") or {}, new.get("external") or {})
    if "config" in old:
        why += [f"config {c}" for c in config_changes(old.get("config") or {}, new.get("config") or {})]
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    why += [f"input {d} changed" for d in sorted(set(old_in) | set(new_in)) if old_in.get(d) != new_in.get(d)]
    if not old.get("complete"):
        why.append("previous build incomplete")
    return "; ".join(why) if why else "fingerprint changed"
