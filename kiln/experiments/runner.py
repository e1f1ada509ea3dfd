"""Running a sweep: every variant x seed as an ordinary pipeline run, scheduled, resumable, failures reported.

- Each run is ``python -m kiln run <run>/recipe.yaml --run-dir <run>`` (the whole pipeline through ``report``),
  launched by an engine (:mod:`kiln.experiments.engines`: local processes, Ray tasks, sbatch scripts), ``jobs``
  at a time, its output in ``<sweep>/<variant>/seed-<s>.log``. ``train.threads`` is left as the recipe says:
  with ``--jobs N`` on one machine set ``train.threads`` to cores / N (an override in the sweep file).
- Shared stages: every run uses the sweep's stage store ``<sweep>/.store/`` (``KILN_STAGE_CACHE``, unless the
  caller set it), so stages with equal fingerprints are built once and hard-linked into the other runs; the
  store's build lock makes that hold for concurrent runs too.
- Resume: a run whose stages are all up to date (the pipeline's own fingerprints) is skipped without launching
  anything; any other run is launched again, and the pipeline skips its finished stages and resumes training
  from its last checkpoint. A sweep killed at any point and rerun finishes only what is missing.
- A failed run is reported by name (variant, seed, run directory, last error line, log file) and the others go
  on, unless ``fail_fast`` (then no further run starts). ``<sweep>/sweep.json`` holds the expanded plan and
  each run's status (pending | running | done | failed); the comparison report is written at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import atomic
from kiln.experiments.budget import apply_budget
from kiln.experiments.engines import make_engine
from kiln.experiments.expand import RunSpec, expand
from kiln.experiments.sweep_file import Sweep
from kiln.progress import format_seconds, log
from kiln.run import RunDir
from kiln.store import STORE_ENV

SWEEP_JSON = "sweep.json"


@dataclass
class SweepPlan:
    """A sweep expanded under its root: the runs, each variant's cost, and the ``sweep.json`` document."""

    sweep: Sweep
    root: Path
    runs: list[RunSpec]
    costs: dict[str, dict[str, float | int]]
    status: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What every run's process needs: the sweep's shared stage store (a caller's KILN_STAGE_CACHE wins)."""
        return {} if STORE_ENV in os.environ else {STORE_ENV: str((self.root / ".store").absolute())}

    def log_path(self, run: RunSpec) -> Path:
        return run.run_dir.parent / f"{run.run_dir.name}.log"

    def document(self) -> dict[str, Any]:
        """``sweep.json``: the spec, and per variant (in order) its overrides, cost and runs with their status
        (``run_dir`` and ``log`` relative to the sweep root)."""
        spec = self.sweep.spec
        variants = []
        for v in spec.variants:
            runs = [{"seed": r.seed, "name": r.recipe.name, "run_dir": str(r.run_dir.relative_to(self.root)),
                     "log": str(self.log_path(r).relative_to(self.root)),
                     **self.status.get(i, {"status": "pending"})}
                    for i, r in enumerate(self.runs) if r.variant == v]
            variants.append({"name": v, "overrides": spec.variants[v], **self.costs[v], "runs": runs})
        return {
            "name": self.sweep.name, "sweep_file": self.sweep.origin, "base": self.sweep.base,
            "baseline": self.sweep.baseline, "metrics": spec.metrics, "budget": spec.budget,
            "seeds": self.sweep.seeds, "overrides": spec.overrides, "variants": variants,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self) -> None:
        atomic.write_json(self.root / SWEEP_JSON, self.document())


def plan_sweep(sweep: Sweep, root: str | Path = "runs") -> SweepPlan:
    """Budget-matched recipes and the variant x seed runs under ``<root>/<sweep name>/``; touches no file."""
    sweep_root = Path(root) / sweep.name
    recipes, costs = apply_budget(sweep.recipes, sweep.spec.budget, sweep.baseline, sweep.origin)
    return SweepPlan(sweep, sweep_root, expand(sweep.name, recipes, sweep.seeds, sweep_root), costs)


@contextlib.contextmanager
def store_env(plan: SweepPlan) -> Iterator[None]:
    """This process sees the sweep's stage store (for :func:`kiln.stages.plan_status` here)."""
    old = {k: os.environ.get(k) for k in plan.env}
    os.environ.update(plan.env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stage_actions(run: RunSpec) -> list[dict]:
    """What :func:`kiln.stages.plan_status` says each stage of the run would do (call under :func:`store_env`)."""
    from kiln.stages import plan_status

    return plan_status(run.recipe, RunDir(run.run_dir))


def is_done(run: RunSpec) -> bool:
    """Every stage up to date by its fingerprint, the report written (call under :func:`store_env`)."""
    rd = RunDir(run.run_dir)
    try:
        if not (rd.manifest("report") or {}).get("complete"):
            return False
        return all(row["action"] == "up to date" or row["stage"] == "report" for row in stage_actions(run))
    except Exception:  # noqa: BLE001 - anything unreadable or unplannable: not done, the run will say why
        return False


def previous_status(plan: SweepPlan) -> dict[str, dict]:
    """Run records of an earlier ``sweep.json`` by run directory (relative), {} if none or unreadable."""
    try:
        doc = json.loads((plan.root / SWEEP_JSON).read_text())
        return {r["run_dir"]: r for v in doc["variants"] for r in v["runs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def last_error_line(log_path: Path) -> str:
    """The last non-empty line of a run's log (kiln prints ``error: ...`` last; a traceback ends in its cause)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:500] if lines else "(empty log)"


def run_command(run: RunSpec) -> list[str]:
    return [sys.executable, "-m", "kiln", "run", str(run.run_dir / "recipe.yaml"), "--run-dir", str(run.run_dir)]


def run_sweep(plan: SweepPlan, jobs: int = 1, executor: str = "local", executor_args: dict[str, str] | None = None,
              fail_fast: bool = False, echo: Callable[[str], None] = log, poll_s: float = 0.2) -> list[dict]:
    """Run what is missing of ``plan``; returns the failed runs' records (empty: all done). Writes sweep.json
    throughout and the comparison report at the end."""
    n = len(plan.runs)
    todo: list[int] = []
    before = previous_status(plan)
    with store_env(plan):
        for i, run in enumerate(plan.runs):
            if is_done(run):
                seconds = before.get(str(run.run_dir.relative_to(plan.root)), {}).get("seconds")
                plan.status[i] = {"status": "done", **({"seconds": seconds} if seconds is not None else {})}
            else:
                todo.append(i)
    if len(todo) < n:
        echo(f"{plan.root}: {n - len(todo)} of {n} runs already complete, {len(todo)} to run")
    plan.root.mkdir(parents=True, exist_ok=True)
    plan.save()
    failures: list[dict] = []
    if todo:
        failures = _schedule(plan, todo, max(jobs, 1), make_engine(executor, executor_args or {}), fail_fast, echo,
                             poll_s)
    write_report(plan, echo)
    return failures


def _schedule(plan: SweepPlan, todo: list[int], jobs: int, engine: Any, fail_fast: bool,
              echo: Callable[[str], None], poll_s: float) -> list[dict]:
    n, pending, running, failures = len(plan.runs), list(todo), {}, []
    try:
        while pending or running:
            while pending and len(running) < jobs and not (fail_fast and failures):
                i = pending.pop(0)
                run = plan.runs[i]
                RunDir(run.run_dir).write_recipe(run.recipe)
                try:
                    handle = engine.start(run_command(run), plan.log_path(run), plan.env)
                except (OSError, RuntimeError) as exc:
                    failures.append(_failed(plan, i, str(exc), 0.0, echo))
                    continue
                running[i] = (handle, time.monotonic())
                plan.status[i] = {"status": "running"}
                plan.save()
                echo(f"run {i + 1}/{n} {run.label}: started ({run.run_dir})")
            for i, (handle, t0) in list(running.items()):
                try:
                    rc = engine.poll(handle)
                    error = None
                except RuntimeError as exc:
                    rc, error = 1, str(exc)
                if rc is None:
                    continue
                del running[i]
                seconds = time.monotonic() - t0
                if rc == 0:
                    plan.status[i] = {"status": "done", "seconds": round(seconds, 1)}
                    echo(f"run {i + 1}/{n} {plan.runs[i].label}: done ({format_seconds(seconds)})")
                else:
                    failures.append(_failed(plan, i, error or last_error_line(plan.log_path(plan.runs[i])),
                                            seconds, echo, rc))
                plan.save()
            if fail_fast and failures and pending:
                echo(f"--fail-fast: {len(pending)} run(s) not started: "
                     + ", ".join(plan.runs[i].label for i in pending))
                pending.clear()
            if running:
                time.sleep(poll_s)
    finally:
        engine.close()
        for i in running:  # interrupted: they resume on the next call
            plan.status[i] = {"status": "pending", "interrupted": True}
        plan.save()
    return failures


def _failed(plan: SweepPlan, i: int, error: str, seconds: float, echo: Callable[[str], None],
            rc: int | None = None) -> dict:
    run = plan.runs[i]
    log_file = plan.log_path(run)
    rec = {"variant": run.variant, "seed": run.seed, "run_dir": str(run.run_dir), "error": error,
           "log": str(log_file), "exit_code": rc}
    plan.status[i] = {"status": "failed", "error": error, "exit_code": rc, "seconds": round(seconds, 1)}
    echo(f"run {i + 1}/{len(plan.runs)} {run.label}: FAILED ({format_seconds(seconds)}) in {run.run_dir}: {error} "
         f"(log: {log_file})")
    return rec


def write_report(plan: SweepPlan, echo: Callable[[str], None] = log) -> Path | None:
    """The sweep's comparison report (``<sweep>/report/``) from the runs that are done."""
    if not any(s.get("status") == "done" for s in plan.status.values()):
        echo(f"{plan.root}: no run finished; no comparison report")
        return None
    from kiln.experiments.compare import write_sweep_report

    path = write_sweep_report(plan.root, plan.document())
    echo(f"report: {path}")
    return path
