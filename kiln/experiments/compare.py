"""The comparison of a sweep's variants: one row per variant, every metric over seeds, the difference to the
baseline with its 95% interval (:mod:`kiln.experiments.stats`), and the two entry points.

- :func:`write_sweep_report` reads ``runs/<sweep>/sweep.json``'s plan (the sweep engine's) and writes
  ``runs/<sweep>/report/``.
- :func:`compare_runs` (``kiln ablate --compare RUN...``) groups existing runs into variants (runs whose
  recipes are equal except ``train.seed`` and ``name`` are seeds of one variant) and writes the same report.

``comparison.json`` holds every number the table shows, so tests and docs read the numbers, not the page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.experiments.collect import RunResult, default_metrics, read_run
from kiln.experiments.stats import difference, direction, summarize, verdict


@dataclass
class Variant:
    """A variant's runs (one per seed) and what the plan says of it (``planned``: steps, tokens, flops)."""

    name: str
    overrides: dict[str, Any]
    runs: list[RunResult]
    planned: dict[str, Any] = field(default_factory=dict)

    def values(self, metric: str) -> dict[int, float]:
        """``{seed: value}`` over the finished runs that report ``metric``; a run without a seed, or repeating
        one, is keyed by ``-1 - index`` (it then pairs with nothing)."""
        out: dict[int, float] = {}
        for i, r in enumerate(self.runs):
            v = r.value(metric) if r.ok else None
            if v is not None:
                out[r.seed if r.seed is not None and r.seed not in out else -1 - i] = v
        return out


def _mean(xs: list[float]) -> float | None:
    return summarize(xs).mean


def _trained(v: Variant) -> dict[str, Any]:
    """Steps, tokens and FLOPs of a variant: the mean over its finished runs, else the plan's."""
    done = [r for r in v.runs if r.ok]
    out: dict[str, Any] = {}
    for key in ("steps", "tokens", "flops"):
        measured = [getattr(r, key) for r in done if getattr(r, key) is not None]
        value = _mean([float(x) for x in measured]) if measured else v.planned.get(key)
        if key != "flops" and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
        out[f"{key}_source"] = "measured" if measured else ("plan" if value is not None else None)
    return out


def _run_row(r: RunResult) -> dict[str, Any]:
    """A run as the report lists it; a ``done`` run without readable metrics shows as failed."""
    status = "failed" if r.status == "done" and r.error is not None else r.status
    page = r.report_path()
    return {"seed": r.seed, "run_dir": str(r.run_dir), "status": status, "error": r.error,
            "report": str(page) if page else None}


def comparison(variants: list[Variant], baseline: str | None, metrics: list[str] | None,
               name: str = "comparison") -> dict[str, Any]:
    """Every number of the table as a JSON-ready mapping (see module doc)."""
    if not variants:
        raise ValueError("comparison: no variants to compare")
    names = [v.name for v in variants]
    base_name = baseline if baseline is not None else names[0]
    if base_name not in names:
        raise ValueError(f"baseline '{base_name}' is not a variant; variants: {', '.join(names)}")
    base = variants[names.index(base_name)]
    all_runs = [r for v in variants for r in v.runs]
    metric_list = list(metrics) if metrics else default_metrics(all_runs)
    rows = []
    for v in variants:
        cells: dict[str, Any] = {}
        for m in metric_list:
            vals, base_vals = v.values(m), base.values(m)
            s = summarize(list(vals.values()))
            cell: dict[str, Any] = {"mean": s.mean, "std": s.std, "n": s.n,
                                    "values": {str(k): x for k, x in sorted(vals.items())}}
            if v is not base:
                d = difference(vals, base_vals)
                cell["diff"] = {**d.to_dict(), "verdict": verdict(m, d)}
            cells[m] = cell
        rows.append({
            "name": v.name,
            "baseline": v is base,
            "overrides": v.overrides,
            **_trained(v),
            "runs": [_run_row(r) for r in v.runs],
            "n_runs": len(v.runs),
            "n_done": sum(r.ok for r in v.runs),
            "metrics": cells,
        })
    return {"name": name, "baseline": base_name, "metrics": metric_list, "level": 0.95,
            "directions": {m: direction(m) for m in metric_list}, "variants": rows}


# --- sweeps ----------------------------------------------------------------------------------------


def variants_from_plan(sweep_root: Path, plan: dict[str, Any]) -> list[Variant]:
    """The plan's variants with their runs read from disk (run_dir relative to ``sweep_root`` or absolute)."""
    out = []
    for i, v in enumerate(plan.get("variants") or []):
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"{sweep_root / 'sweep.json'}: variants[{i}] must be a mapping with a 'name'")
        runs = []
        for j, r in enumerate(v.get("runs") or []):
            if not isinstance(r, dict) or not isinstance(r.get("run_dir"), str):
                raise ValueError(f"{sweep_root / 'sweep.json'}: variants[{i}].runs[{j}] must be a mapping with a "
                                 "'run_dir' string")
            run_dir = Path(r["run_dir"])
            run_dir = run_dir if run_dir.is_absolute() else sweep_root / run_dir
            runs.append(read_run(run_dir, r.get("seed"), r.get("status") or "pending", r.get("error")))
        planned = {k: v.get(k) for k in ("steps", "tokens", "flops") if v.get(k) is not None}
        out.append(Variant(str(v["name"]), dict(v.get("overrides") or {}), runs, planned))
    return out


def write_sweep_report(sweep_root: Path, plan: dict) -> Path:
    """Write ``sweep_root/report/{index.html, report.md, comparison.json, *.png}``; return index.html's path."""
    from kiln.experiments.compare_render import write_report

    sweep_root = Path(sweep_root)
    variants = variants_from_plan(sweep_root, plan)
    data = comparison(variants, plan.get("baseline"), plan.get("metrics"), str(plan.get("name") or sweep_root.name))
    for key in ("budget", "base", "overrides"):  # shown above the table when the plan has them
        if plan.get(key):
            data["budget" if key == "budget" else f"plan_{key}"] = plan[key]
    return write_report(data, variants, sweep_root / "report")


# --- existing runs -------------------------------------------------------------------------------


def _without_seed(tree: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in tree.items() if k != "name"}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k != "seed"}
    return out


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def group_runs(runs: list[RunResult]) -> list[Variant]:
    """Runs with equal recipes except ``train.seed`` and ``name`` form one variant, in order of first appearance.

    A variant is named by its first run's folder (its parent's when folders are ``seed-N`` as in a sweep),
    or, when those names are not unique, by the recipe fields that differ between variants."""
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        if r.recipe is None:
            raise ValueError(f"{r.run_dir / 'recipe.yaml'}: missing or not a YAML mapping (not a kiln run folder?)")
        groups.setdefault(json.dumps(_without_seed(r.recipe), sort_keys=True, default=str), []).append(r)
    members = list(groups.values())
    flats = [_flat(_without_seed(g[0].recipe or {})) for g in members]
    keys = sorted({k for f in flats for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
    overrides = [{k: f.get(k) for k in differing} for f in flats]

    def unique(names: list[str]) -> bool:
        return len(set(names)) == len(names)

    names = [g[0].run_dir.resolve().name for g in members]
    if any(re.fullmatch(r"seed-\d+", n) for n in names) or not unique(names):
        names = [g[0].run_dir.resolve().parent.name for g in members]
    if not unique(names):
        names = [",".join(f"{k}={json.dumps(v, default=str)}" for k, v in o.items()) or "base" for o in overrides]
    return [Variant(n, o, g) for n, o, g in zip(names, overrides, members, strict=True)]


def compare_runs(paths: list[Path], out: Path, baseline: str | None, metrics: list[str] | None) -> Path:
    """``kiln ablate --compare RUN...``: the comparison of existing run folders, written to ``out``; returns
    index.html's path. ``baseline`` is a variant name or one of its run folders (default: the first variant)."""
    from kiln.experiments.compare_render import write_report

    if not paths:
        raise ValueError("compare: name at least one run folder")
    runs = []
    for p in paths:
        if not Path(p).is_dir():
            raise ValueError(f"{p}: no such run folder")
        runs.append(read_run(p))
    variants = group_runs(runs)
    if baseline is not None and baseline not in [v.name for v in variants]:
        hits = [v.name for v in variants for r in v.runs if Path(baseline).resolve() == r.run_dir.resolve()]
        if not hits:
            raise ValueError(f"baseline '{baseline}' is neither a variant nor one of the runs; variants: "
                             + ", ".join(v.name for v in variants))
        baseline = hits[0]
    data = comparison(variants, baseline, metrics, "comparison")
    return write_report(data, variants, Path(out))
