"""Read finished runs for a comparison: final metrics, validation curves, tokens and FLOPs trained.

A run is read from its own folder only: ``recipe.yaml``, ``eval/metrics.json`` (flat keys such as ``val_bpb``
and the nested ``tasks`` / ``probes`` mappings), ``metrics.jsonl`` (``kind: val`` rows give the curve), the
train stage's manifest (steps and tokens) and the model's shape (FLOPs). Nothing here raises on a broken run:
it comes back with ``ok`` False and ``error`` naming the file and what was wrong, so a report can list it.

Metric paths are "/"-separated paths into ``eval/metrics.json``: ``val_bpb``, ``tasks/shakespeare-cloze/acc``,
``probes/genre/linear_acc``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kiln.metric_path import metric_value
from kiln.report.build import json_rows

METRICS_FILE = Path("eval") / "metrics.json"


@dataclass
class RunResult:
    """What a comparison needs of one run. ``status`` is the sweep's (done | failed | pending | running) or
    ``done`` for a run read directly; ``ok`` = finished with readable metrics."""

    run_dir: Path
    seed: int | None
    status: str = "done"
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # eval/metrics.json as written
    curve: list[dict[str, float]] = field(default_factory=list)  # val rows: step, tokens, val_bpb / val_loss
    steps: int | None = None
    tokens: int | None = None
    flops_per_token: float | None = None
    recipe: dict[str, Any] | None = None  # recipe.yaml as a plain mapping

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.error is None

    @property
    def flops(self) -> float | None:
        if self.tokens is None or self.flops_per_token is None:
            return None
        return self.tokens * self.flops_per_token

    def value(self, path: str) -> float | None:
        """The number at metric ``path`` (None when absent, null or not a number)."""
        return metric_value(self.metrics, path)

    def report_path(self) -> Path | None:
        """The run's own report page, when it has one."""
        page = self.run_dir / "report" / "index.html"
        return page if page.is_file() else None


def metric_paths(metrics: dict[str, Any], prefix: str = "") -> list[str]:
    """Every path to a number in ``metrics`` (lists, such as intervals, are skipped)."""
    out: list[str] = []
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out += metric_paths(value, path + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(path)
    return out


def _curve(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Validation points by step (the last row of a step wins: a resumed run may repeat one)."""
    by_step: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.get("kind") != "val" or not isinstance(r.get("step"), int):
            continue
        point = {k: float(r[k]) for k in ("tokens", "val_bpb", "val_loss")
                 if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)}
        by_step[r["step"]] = {"step": float(r["step"]), **point}
    return [by_step[s] for s in sorted(by_step)]


def _trained(run_dir: Path, rows: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """(steps, tokens) trained: the train manifest's stats, else the last training-log row."""
    try:
        stats = json.loads((run_dir / "train" / "manifest.json").read_text(encoding="utf-8")).get("stats") or {}
    except (OSError, ValueError, AttributeError):
        stats = {}
    steps, tokens = stats.get("steps"), stats.get("tokens")
    logged = [r for r in rows if r.get("kind") in ("train", "val") and isinstance(r.get("tokens"), int)]
    if logged and tokens is None:
        tokens = logged[-1]["tokens"]
    if logged and steps is None and isinstance(logged[-1].get("step"), int):
        steps = logged[-1]["step"]
    return (steps if isinstance(steps, int) else None), (tokens if isinstance(tokens, int) else None)


def _flops_per_token(run_dir: Path, tree: dict[str, Any]) -> float | None:
    """Training FLOPs per token of the run's model (:func:`kiln.model.flops.flops_per_token`).

    The final checkpoint's ``config.json`` states the exact shape trained; without one, the model is built
    from the recipe's ``model`` section the way the trainer does, with the vocabulary size the trainer used
    (the length of the run's ``token_bytes.npy``, or a synthetic run's ``vocab_size``). The recipe is read as a
    plain mapping, so a recipe written by another kiln version still gives its FLOPs."""
    from kiln.artifacts import final_checkpoint
    from kiln.model.config import TransformerConfig
    from kiln.model.flops import flops_per_token
    from kiln.model.load import latest_checkpoint
    from kiln.recipe import DataConfig, ModelConfig
    from kiln.run import RunDir

    run = RunDir(run_dir)
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    seq_len = data.get("seq_len") if isinstance(data.get("seq_len"), int) else DataConfig().seq_len
    for newest in (lambda: final_checkpoint(run), lambda: latest_checkpoint(run.stage("train") / "checkpoints")):
        try:
            config = json.loads((newest() / "config.json").read_text(encoding="utf-8"))
            return flops_per_token(TransformerConfig.from_dict(config), seq_len)
        except Exception:  # noqa: BLE001 - no checkpoint kept: rebuild the shape from the recipe
            continue
    try:
        model = ModelConfig.model_validate(tree.get("model") or {})
        if (tree.get("tokens") or {}).get("synthetic") is not None:
            vocab = (run.manifest("tokens") or {}).get("stats", {}).get("vocab_size")
        else:
            vocab = len(np.load(run.stage("tokenizer") / "token_bytes.npy", mmap_mode="r"))
        if not vocab:
            return None
        return flops_per_token(TransformerConfig.from_recipe(model, int(vocab), seq_len), seq_len)
    except Exception:  # noqa: BLE001 - an unreadable model section or vocabulary only costs the FLOPs column
        return None


def read_run(run_dir: str | Path, seed: int | None = None, status: str = "done", error: str | None = None) -> RunResult:
    """Read one run folder. ``seed`` defaults to the recipe's ``train.seed``; a run whose ``status`` is not
    ``done`` keeps its ``error`` and is read only for what exists."""
    run_dir = Path(run_dir)
    res = RunResult(run_dir, seed, status, error)
    recipe_file = run_dir / "recipe.yaml"
    try:
        tree = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
        res.recipe = tree if isinstance(tree, dict) else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        res.recipe = None
    if res.seed is None and res.recipe is not None:
        seed_value = (res.recipe.get("train") or {}).get("seed")
        res.seed = seed_value if isinstance(seed_value, int) else None
    log = run_dir / "metrics.jsonl"
    rows = json_rows(log.read_text(encoding="utf-8", errors="replace").splitlines()) if log.is_file() else []
    res.curve = _curve(rows)
    res.steps, res.tokens = _trained(run_dir, rows)
    res.flops_per_token = _flops_per_token(run_dir, res.recipe) if res.recipe is not None else None
    if status != "done":  # failed, pending or running: listed, not compared
        return res
    if not run_dir.is_dir():
        res.error = f"{run_dir}: no such run folder"
        return res
    path = run_dir / METRICS_FILE
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        res.error = f"{path}: missing (the eval stage has not run)"
        return res
    except (OSError, ValueError) as exc:
        res.error = f"{path}: not readable JSON ({exc})"
        return res
    if not isinstance(metrics, dict):
        res.error = f"{path}: expected a JSON object, got {type(metrics).__name__}"
        return res
    res.metrics = metrics
    return res


def default_metrics(runs: list[RunResult]) -> list[str]:
    """``val_bpb`` (``val_loss`` when no run has a bpb), then every ``tasks/*/acc`` and then every
    ``tasks/*/bpb`` present, tasks in order of first appearance."""
    done = [r for r in runs if r.ok]
    head = "val_bpb" if any(r.value("val_bpb") is not None for r in done) or not done else "val_loss"
    out = [head]
    for key in ("acc", "bpb"):  # accuracies first, then held-out bits per byte
        for r in done:
            tasks = r.metrics.get("tasks")
            for name, task in tasks.items() if isinstance(tasks, dict) else ():
                path = f"tasks/{name}/{key}"
                if isinstance(task, dict) and metric_value(task, key) is not None and path not in out:
                    out.append(path)
    return out
