"""``kiln runs [ROOT]``: every run folder under ``ROOT`` (default ``runs/``) with its status and headline numbers.

A run folder is a directory holding a ``recipe.yaml`` or a stage folder with a ``manifest.json``. Per run:
the stages complete (in pipeline order), training progress (the last logged step of ``metrics.jsonl`` out of
the saved recipe's ``train.steps``), and headline metrics: validation bits per byte (the eval stage's when it
ran, else the last training-time validation, marked ``train``), an encoder's validation loss, and probe
accuracies saved by ``kiln eval --probe``. Read only: nothing in a run is written or locked.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.report.build import json_rows

MANIFEST = "manifest.json"


@dataclass
class RunSummary:
    path: Path
    recipe: str
    stages: list[str] = field(default_factory=list)  # complete stages, in pipeline order
    incomplete: list[str] = field(default_factory=list)  # stage folders without a complete manifest
    step: int | None = None
    total_steps: int | None = None
    val_bpb: float | None = None
    val_from: str = ""  # "eval" or "train"
    val_loss: float | None = None
    probes: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0

    @property
    def status(self) -> str:
        if "report" in self.stages:
            return "done"
        if "train" in self.incomplete or ("train" not in self.stages and self.step):
            return "training stopped or running"
        return "partial" if self.stages else "empty"

    @property
    def training(self) -> str:
        if self.step is None:
            return "—"
        return f"{self.step}/{self.total_steps}" if self.total_steps else str(self.step)

    @property
    def headline(self) -> str:
        parts = []
        if self.val_bpb is not None:
            parts.append(f"val bpb {self.val_bpb:.4f} ({self.val_from})")
        elif self.val_loss is not None:
            parts.append(f"val loss {self.val_loss:.4f} ({self.val_from})")
        parts += [f"probe {task} linear {acc:.3f}" for task, acc in sorted(self.probes.items())]
        return ", ".join(parts) or "—"

    @property
    def updated_text(self) -> str:
        return dt.datetime.fromtimestamp(self.updated).strftime("%Y-%m-%d %H:%M") if self.updated else "—"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _last_rows(path: Path, max_bytes: int = 1 << 20) -> list[dict]:
    """The readable rows of the last ``max_bytes`` of a metrics.jsonl (a torn last line is skipped)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - max_bytes, 0))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return json_rows(lines)


def _saved_recipe(folder: Path) -> dict:
    import yaml

    try:
        tree = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return tree if isinstance(tree, dict) else {}


def is_run(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "recipe.yaml").is_file() or any(folder.glob(f"*/{MANIFEST}")))


def summarize(folder: Path) -> RunSummary:
    """One run folder's :class:`RunSummary` (missing or malformed files leave their fields empty)."""
    from kiln.stages import ORDER

    tree = _saved_recipe(folder)
    s = RunSummary(folder, str(tree.get("name") or folder.name))
    stage_dirs = [p for p in folder.iterdir()
                  if p.is_dir() and ((p / MANIFEST).exists() or (p / "fingerprint.json").exists())]
    order = {n: i for i, n in enumerate(ORDER)}
    for p in sorted(stage_dirs, key=lambda p: (order.get(p.name, len(order)), p.name)):
        manifest = _read_json(p / MANIFEST)
        (s.stages if isinstance(manifest, dict) and manifest.get("complete") else s.incomplete).append(p.name)
    rows = _last_rows(folder / "metrics.jsonl")
    train_rows = [r for r in rows if r.get("kind") == "train" and isinstance(r.get("step"), int)]
    if train_rows:
        s.step = train_rows[-1]["step"]
    steps = (tree.get("train") or {}).get("steps") if isinstance(tree.get("train"), dict) else None
    if steps is None and tree:
        from kiln.recipe import TrainConfig

        steps = TrainConfig.model_fields["steps"].default
    s.total_steps = steps if isinstance(steps, int) else None
    ev = _read_json(folder / "eval" / "metrics.json") if "eval" in s.stages else None
    vals = [r for r in rows if r.get("kind") == "val"]
    if isinstance(ev, dict) and (ev.get("val_bpb") is not None or ev.get("val_loss") is not None):
        s.val_bpb, s.val_loss, s.val_from = ev.get("val_bpb"), ev.get("val_loss"), "eval"
    elif vals:
        s.val_bpb, s.val_loss, s.val_from = vals[-1].get("val_bpb"), vals[-1].get("val_loss"), "train"
    for path in sorted((folder / "eval").glob("probe-*.json")):
        probe = _read_json(path)
        if isinstance(probe, dict) and isinstance(probe.get("linear_acc"), int | float):
            s.probes[str(probe.get("task", path.stem))] = float(probe["linear_acc"])
    files = [folder / "metrics.jsonl", *(folder / n / MANIFEST for n in [*s.stages, *s.incomplete])]
    s.updated = max((f.stat().st_mtime for f in files if f.exists()), default=folder.stat().st_mtime)
    return s


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder directly under ``root`` (or ``root`` itself when it is a run), newest first."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (kiln runs ROOT lists the run folders under ROOT)")
    folders = [root] if is_run(root) else [p for p in sorted(root.iterdir()) if is_run(p)]
    return sorted((summarize(f) for f in folders), key=lambda s: s.updated, reverse=True)
