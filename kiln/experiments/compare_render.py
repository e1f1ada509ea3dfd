"""Render a comparison (:func:`kiln.experiments.compare.comparison`) as ``index.html`` + ``report.md`` + plots.

The page is built from :mod:`kiln.report.render` blocks, so HTML and Markdown agree. Links to the runs' own
reports are the one thing the block model has no type for: their cells hold a token that is replaced by an
``<a>`` (HTML) or ``[..](..)`` (Markdown) after rendering; a token is alphanumeric, so escaping leaves it whole.
"""

from __future__ import annotations

import html
import json
import os
import secrets
from pathlib import Path
from typing import Any

from kiln import atomic
from kiln.experiments.collect import metric_value
from kiln.experiments.compare import Variant
from kiln.experiments.stats import summarize
from kiln.report import sweep_plots
from kiln.report.render import Block, Image, Section, Table, Text, human, images, render_html, render_md

NOTE = ("Each cell: mean ± sample std over seeds (n = finished seeds). Δ: variant − baseline with its 95% "
        "t interval, paired by seed when both variants ran the same seeds (Student), otherwise unpaired "
        "(Welch); * marks an interval that excludes 0, with better/worse by the direction of the metric (lower "
        "is better for bpb and loss, higher for accuracy).")


def num(x: float | None, signed: bool = False) -> str:
    """4 significant digits; float noise (|x| < 1e-12, e.g. a difference of equal accuracies) shows as 0."""
    if x is None:
        return "—"
    x = 0.0 if abs(x) < 1e-12 else x
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def mean_std(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "—"
    spread = f" ± {num(cell['std'])}" if cell["std"] is not None else ""
    return f"{num(cell['mean'])}{spread} (n={cell['n']})"


def diff_text(d: dict[str, Any]) -> str:
    """``+0.05 [+0.031, +0.069] * better``; without an interval the difference and why there is none."""
    if d["diff"] is None:
        return f"— ({d['note']})"
    if d["lo"] is None:
        return f"{num(d['diff'], True)} (no interval: {d['note']})"
    text = f"{num(d['diff'], True)} [{num(d['lo'], True)}, {num(d['hi'], True)}]"
    if d["method"] == "welch":
        text += " welch"
    elif d["note"]:
        text += f" ({d['note']})"
    if d["excludes_zero"]:
        text += " * " + (d["verdict"] or "excludes 0")
    return text


def failed_text(row: dict[str, Any]) -> str:
    bad = [r for r in row["runs"] if r["status"] != "done"]
    return "; ".join(f"seed {r['seed']}: {r['status']}" + (f" ({r['error']})" if r["error"] else "") for r in bad)


def comparison_table(data: dict[str, Any]) -> Table:
    headers = ["variant", "seeds done"]
    for m in data["metrics"]:
        way = {"lower": " ↓", "higher": " ↑"}.get(data["directions"].get(m) or "", "")
        headers += [f"{m}{way}", f"Δ {m}"]
    headers += ["steps", "tokens", "FLOPs", "not finished"]
    rows = []
    for row in data["variants"]:
        label = row["name"] + (" (baseline)" if row["baseline"] else "")
        cells: list[Any] = [label, f"{row['n_done']}/{row['n_runs']}"]
        for m in data["metrics"]:
            cell = row["metrics"][m]
            cells += [mean_std(cell), "baseline" if row["baseline"] else diff_text(cell["diff"])]
        cells += [human(row["steps"]), human(row["tokens"]), human(row["flops"]), failed_text(row) or "—"]
        rows.append(cells)
    return Table(headers, rows)


# --- plots -----------------------------------------------------------------------------------------


def curve_bands(v: Variant, key: str, x: str) -> list[tuple[float, float, float, float]]:
    """(x, mean, min, max) over the variant's finished runs at each evaluation step; x = tokens or flops."""
    at: dict[float, list[tuple[float, float]]] = {}
    for r in v.runs:
        if not r.ok:
            continue
        for p in r.curve:
            if key not in p or "tokens" not in p:
                continue
            if x == "flops" and r.flops_per_token is None:
                continue
            xv = p["tokens"] * (r.flops_per_token if x == "flops" else 1.0)  # type: ignore[operator]
            at.setdefault(p["step"], []).append((xv, p[key]))
    out = []
    for step in sorted(at):
        xs, ys = zip(*at[step], strict=True)
        out.append((sum(xs) / len(xs), sum(ys) / len(ys), min(ys), max(ys)))
    return out


def curve_blocks(variants: list[Variant], out_dir: Path) -> list[Block]:
    runs = [r for v in variants for r in v.runs if r.ok]
    key = "val_bpb" if any("val_bpb" in p for r in runs for p in r.curve) else "val_loss"
    label = "validation bits per byte" if key == "val_bpb" else "validation loss"
    blocks: list[Block] = []
    for x, xlabel in (("tokens", "training tokens"), ("flops", "training FLOPs")):
        series = {v.name: curve_bands(v, key, x) for v in variants}
        if not any(series.values()):
            blocks.append(Text(f"No {label} against {xlabel}: "
                               + ("no run logged a validation" if x == "tokens" else "model FLOPs unknown"), True))
            continue
        file = f"{key}_vs_{x}.png"
        sweep_plots.curves(series, out_dir / file, xlabel, label, f"{label.capitalize()} vs {xlabel}")
        blocks.append(Image(file, f"{label} vs {xlabel}, mean over seeds, shaded min-max"))
    return blocks


def task_blocks(variants: list[Variant], out_dir: Path) -> list[Block]:
    tasks: list[str] = []
    for v in variants:
        for r in v.runs:
            for name, task in (r.metrics.get("tasks") or {}).items() if r.ok else ():
                if isinstance(task, dict) and metric_value(task, "acc") is not None and name not in tasks:
                    tasks.append(name)
    if not tasks:
        return [Text("No task accuracies in these runs (eval.tasks not set).", True)]

    def across(task: str, key: str) -> float | None:
        vals = [x for v in variants for r in v.runs if r.ok for x in [r.value(f"tasks/{task}/{key}")] if x is not None]
        return sum(vals) / len(vals) if vals else None

    means, stds = [], []
    for v in variants:
        cells = [summarize(list(v.values(f"tasks/{t}/acc").values())) for t in tasks]
        means.append([c.mean for c in cells])
        stds.append([c.std for c in cells])
    sweep_plots.task_bars(tasks, [v.name for v in variants], means, stds, {t: across(t, "chance") for t in tasks},
                          {t: across(t, "majority") for t in tasks}, out_dir / "task_acc.png")
    rows = [[t, num(across(t, "chance")), num(across(t, "majority"))] for t in tasks]
    return [Image("task_acc.png", "task accuracy per variant with chance and majority lines"),
            Table(["task", "chance", "majority"], rows)]


# --- the page --------------------------------------------------------------------------------------


def _overrides(row: dict[str, Any]) -> str:
    items = row["overrides"].items()
    return "; ".join(f"{k}={json.dumps(v, default=str)}" for k, v in items) if items else "(none: the base recipe)"


def write_report(data: dict[str, Any], variants: list[Variant], out_dir: Path) -> Path:
    """Write ``comparison.json``, the plots, ``index.html`` and ``report.md`` into ``out_dir``; return index.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / "comparison.json", data)
    intro: list[Block] = [Text(f"Baseline: {data['baseline']}. {NOTE}")]
    if data.get("plan_base"):
        common = "; ".join(f"{k}={json.dumps(v, default=str)}" for k, v in (data.get("plan_overrides") or {}).items())
        intro.append(Text(f"Base recipe: {data['plan_base']}" + (f", with {common} for every variant." if common
                                                                  else ".")))
    if data.get("budget") is not None:
        intro.append(Text(f"Budget: {data['budget']} (variants matched at the baseline's training "
                          "tokens / FLOPs where set)."))
    nonce = secrets.token_hex(8)
    links: dict[str, tuple[str, str]] = {}  # token -> (label, relative href)
    run_rows = []
    for row in data["variants"]:
        for r in row["runs"]:
            cell = "—"
            if r["report"]:
                token = f"KILNLINK{len(links)}X{nonce}"
                links[token] = ("report", os.path.relpath(r["report"], out_dir))
                cell = token
            run_rows.append([row["name"], "—" if r["seed"] is None else r["seed"], r["status"], r["error"] or "",
                             r["run_dir"], cell])
    sections = [
        Section("Comparison", [*intro, comparison_table(data)]),
        Section("Validation curves", curve_blocks(variants, out_dir)),
        Section("Tasks", task_blocks(variants, out_dir)),
        Section("Variants", [Table(["variant", "overrides", "steps", "tokens", "FLOPs"],
                                   [[row["name"], _overrides(row), human(row["steps"]), human(row["tokens"]),
                                     human(row["flops"])] for row in data["variants"]])]),
        Section("Runs", [Table(["variant", "seed", "status", "error", "run folder", "run report"], run_rows)]),
    ]
    title = f"Sweep: {data['name']}"
    page, md = render_html(title, sections), render_md(title, sections)
    for token, (label, href) in links.items():
        page = page.replace(token, f'<a href="{html.escape(href, quote=True)}">{html.escape(label)}</a>')
        md = md.replace(token, f"[{label}](<{href}>)")
    missing = [f for s in sections for f in images(s.blocks) if not (out_dir / f).is_file()]
    if missing:
        raise RuntimeError(f"sweep report: plots not written: {', '.join(missing)}")
    atomic.write_text(out_dir / "report.md", md)
    atomic.write_text(out_dir / "index.html", page)
    return out_dir / "index.html"
