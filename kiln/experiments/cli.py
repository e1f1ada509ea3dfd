"""``kiln ablate``: run a sweep file, sweep a recipe over ``--vary`` grids, or compare existing runs.

    kiln ablate SWEEP.yaml [--jobs N] [--executor local|ray|slurm --executor-arg K=V ...] [--fail-fast] [--dry-run]
    kiln ablate RECIPE --vary train.lr=0.001,0.003 [--vary K2=...] --seeds 2 [KEY=VALUE ...] [--name NAME]
    kiln ablate --compare RUN RUN ... [--baseline NAME] [--out DIR] [--metric val_bpb ...]
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kiln.experiments.sweep_file import SweepError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ABLATE_HELP = (
    "SWEEP.yaml: a sweep file (base, variants, seeds, budget, baseline, metrics). With --vary: RECIPE (a YAML "
    "file or built-in name) then KEY=VALUE overrides for every variant. With --compare: run directories. "
    "Runs go to ROOT/<sweep name>/<variant>/seed-<s>/, sharing stages through ROOT/<sweep name>/.store/; "
    "rerunning finishes only what is missing. With --jobs N on one machine, set train.threads to cores / N."
)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _echo(line: str) -> None:
    err.print(line, highlight=False, markup=False)


def _executor_args(items: list[str]) -> dict[str, str]:
    args = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            _fail(f"--executor-arg {item!r}: expected KEY=VALUE (address=HOST:PORT, partition=cpu, time=01:00:00)")
        args[key.strip()] = value.strip()
    return args


def _dry_run(plan) -> None:
    from kiln.experiments.runner import is_done, stage_actions, store_env

    table = Table("run", "variant", "seed", "steps", "tokens", "FLOPs", "status", "stages to build")
    builds: dict[str, set[str]] = {}
    with store_env(plan):
        for i, run in enumerate(plan.runs):
            c = plan.costs[run.variant]
            try:
                rows = stage_actions(run)
            except Exception as exc:  # noqa: BLE001 - shown in the table; the run itself will fail the same way
                table.add_row(str(i + 1), run.variant, str(run.seed), str(c["steps"]), f"{c['tokens']:,}",
                              f"{c['flops']:.3g}", "error", str(exc).splitlines()[0])
                continue
            for row in rows:
                builds.setdefault(row["stage"], set()).add(row["fingerprint"])
            todo = [r["stage"] for r in rows if r["action"] not in ("up to date", "reuse")]
            table.add_row(str(i + 1), run.variant, str(run.seed), str(c["steps"]), f"{c['tokens']:,}",
                          f"{c['flops']:.3g}", "done" if is_done(run) else "to run", " ".join(todo))
    out.print(table)
    out.print(f"{plan.root}: {len(plan.runs)} runs ({len(plan.sweep.recipes)} variants x {len(plan.sweep.seeds)} "
              f"seeds), baseline {plan.sweep.baseline}", highlight=False)
    shared = [f"{s} ({len(fps)} build{'s' if len(fps) > 1 else ''} for {len(plan.runs)} runs)"
              for s, fps in builds.items() if len(fps) < len(plan.runs)]
    out.print("shared stages: " + (", ".join(shared) or "none"), highlight=False)


def ablate(
    args: Annotated[list[str] | None, typer.Argument(metavar="SWEEP.yaml | RECIPE KEY=VALUE... | RUN...",
                                                     show_default=False)] = None,
    vary: Annotated[list[str] | None, typer.Option("--vary", help="KEY=V1,V2 (repeatable): sweep RECIPE over the "
                                                   "grid of these values; the first of each is the baseline")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="seeds 0..N-1 (--vary: default 1; a sweep file: replaces "
                                              "its seeds)")] = None,
    name: Annotated[str | None, typer.Option(help="sweep name (--vary default: <recipe name>-sweep)")] = None,
    root: Annotated[Path, typer.Option(help="folder holding sweeps: ROOT/<sweep name>/")] = Path("runs"),
    jobs: Annotated[int, typer.Option(help="runs at a time (set train.threads = cores / jobs)", min=1)] = 1,
    executor: Annotated[str, typer.Option(help="local | ray | slurm")] = "local",
    executor_arg: Annotated[list[str] | None, typer.Option(
        "--executor-arg", help="KEY=VALUE for the executor (ray: address=, cpus_per_run=; slurm: any sbatch "
        "option, e.g. partition=cpu time=01:00:00)")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="start no further run after one fails")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the runs, budgets and shared stages; run "
                                          "nothing")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="compare existing run directories (the arguments)")
                       ] = False,
    baseline: Annotated[str | None, typer.Option(help="--compare: the baseline run")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="--compare: report folder")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="--compare: metric path (repeatable)")] = None,
) -> None:
    """Ablation sweeps: variants x seeds as ordinary runs sharing their common stages, then a comparison report."""
    items = list(args or [])
    if compare:
        from kiln.experiments.compare import compare_runs

        if len(items) < 2:
            _fail("--compare needs at least two run directories")
        path = compare_runs([Path(p) for p in items], out_dir or Path("comparison"), baseline, metric or None)
        out.print(f"report: {path}", highlight=False)
        return
    if executor not in ("local", "ray", "slurm"):
        _fail(f"--executor {executor}: unknown; use local, ray or slurm")
    plan = _plan(items, vary, seeds, name, root)
    if dry_run:
        _dry_run(plan)
        return
    from kiln.experiments.runner import run_sweep

    if os.environ.get("KILN_QUIET") == "1":
        def echo(line: str) -> None:
            pass
    else:
        echo = _echo
    signal.signal(signal.SIGTERM, _terminate)  # stop the runs like Ctrl-C does (the engine's cleanup)
    try:
        failures = run_sweep(plan, jobs=jobs, executor=executor, executor_args=_executor_args(executor_arg or []),
                             fail_fast=fail_fast, echo=echo)
    except KeyboardInterrupt:
        err.print(f"interrupted; rerun the same command to finish the missing runs of {plan.root}", markup=False)
        raise typer.Exit(130) from None
    except (RuntimeError, OSError, ValueError) as exc:
        _fail(str(exc))
    if failures:
        err.print(f"{len(failures)} of {len(plan.runs)} runs failed:", markup=False, highlight=False)
        for f in failures:
            err.print(f"  {f['variant']} seed {f['seed']} ({f['run_dir']}): {f['error']}  [log: {f['log']}]",
                      markup=False, highlight=False)
        raise typer.Exit(1)
    out.print(f"sweep {plan.sweep.name}: {len(plan.runs)} runs done in {plan.root}", highlight=False)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _plan(items: list[str], vary: list[str] | None, seeds: int | None, name: str | None, root: Path):
    from kiln.experiments.runner import plan_sweep
    from kiln.experiments.sweep_file import load_sweep, validate_sweep
    from kiln.recipe import RecipeError, load_recipe

    try:
        if vary:
            from kiln.experiments.expand import vary_spec

            if not items or "=" in items[0]:
                _fail("--vary needs a RECIPE first (a YAML file or a built-in name such as 'demo')")
            spec, overrides = items[0], items[1:]
            sweep_name = name or f"{load_recipe(spec, overrides).name}-sweep"
            sweep = validate_sweep(vary_spec(spec, vary, seeds or 1, overrides, sweep_name), f"--vary on {spec}")
        else:
            if len(items) != 1:
                _fail("give one sweep file (or a RECIPE with --vary KEY=V1,V2, or --compare RUN...)")
            sweep = load_sweep(items[0])
            if seeds is not None or name is not None:
                spec_ = sweep.spec.model_copy(update={**({"seeds": seeds} if seeds else {}),
                                                      **({"name": name} if name else {})})
                sweep = validate_sweep(spec_, sweep.origin, Path(items[0]).parent, sweep.name)
        return plan_sweep(sweep, root)
    except (SweepError, RecipeError) as exc:
        _fail(str(exc))
