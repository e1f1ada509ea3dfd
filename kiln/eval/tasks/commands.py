"""The ``kiln eval --tasks ... --shots K --items N --export-lm-eval DIR`` helpers (kept out of ``kiln/cli.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.recipe import Recipe
from kiln.run import RunDir


def task_overrides(tasks: str | None, shots: int | None, items: int | None) -> list[str]:
    """The recipe overrides the options stand for (``--tasks a,b`` = ``eval.tasks=[a, b]``)."""
    out = []
    if tasks is not None:
        out.append(f"eval.tasks={json.dumps([t.strip() for t in tasks.split(',') if t.strip()])}")
    if shots is not None:
        out.append(f"eval.task_shots={shots}")
    if items is not None:
        out.append(f"eval.task_items={items}")
    return out


def task_lines(metrics: dict) -> list[str]:
    """One line per task of an eval ``metrics.json``: accuracies with interval, spread and baselines."""
    lines = []
    for key, r in (metrics.get("tasks") or {}).items():
        if r.get("kind") == "bpb":
            lines.append(f"task {key}: bpb {r['bpb']:.4f} ({r['n_docs']} documents, {r['n_bytes']} bytes)")
        elif r.get("kind") == "choice":
            lines.append(
                f"task {key}: acc {r['acc']:.3f} [{r['acc_ci'][0]:.3f}, {r['acc_ci'][1]:.3f}] "
                f"(± {r['acc_template_std']:.3f} across {len(r['templates'])} templates), acc_norm "
                f"{r['acc_norm']:.3f}; chance {r['chance']:.3f}, majority {r['majority']:.3f}; "
                f"{r['n_items']} items, {r['shots']}-shot")
        elif r.get("kind") == "context_gain":
            from kiln.eval.tasks.context_gain import summary_line

            lines.append(summary_line(key, r))
        else:
            lines.append(f"task {key}: {r.get('skipped', 'not scored')}")
    return lines


def export_for_run(recipe: Recipe, run: RunDir, out_dir: Path) -> str:
    """Export the run's ``eval.tasks`` (the same items ``kiln eval`` scored) for lm-eval; the command to run."""
    from kiln.eval.tasks.lm_eval_export import export_tasks, lm_eval_command, shell_command
    from kiln.eval.tasks.suite import build_tasks

    names = list(recipe.eval.tasks)
    if not names:
        raise ValueError("--export-lm-eval: no tasks to export; name them with --tasks a,b (or eval.tasks)")
    tasks = build_tasks(recipe, run, names, seed=0)
    groups = export_tasks(tasks, out_dir, names)
    if not groups:
        raise ValueError(f"--export-lm-eval: {', '.join(names)} has no multiple-choice task (bpb tasks have no "
                         "lm-eval export)")
    model_dir = f"EXPORTED/ (kiln export {run.root} --format hf --out EXPORTED/)"
    return shell_command(lm_eval_command("EXPORTED", Path(out_dir).resolve(), list(groups))) + "\n  where " + \
        model_dir
