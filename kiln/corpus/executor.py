"""Scale-out for per-document corpus steps: ``corpus.executor: local | ray | slurm``.

A run of consecutive per-document steps (filters and rewrites: each document's fate depends on that
document alone; ``StepDef.per_doc``) is a *block*. The documents are cut into contiguous shards; each
shard runs the block's step functions with its own :class:`StepContext`; shard results are merged in
shard order, so kept documents, funnel rows, examples and ``removed.parquet`` rows come out in exactly
the order (and with exactly the content) of a one-process run. Dedup and other whole-corpus steps run
in the parent between blocks.

- ``local``: a fork-based process pool of ``corpus.workers`` processes (``workers: 1`` runs in-process).
- ``ray`` / ``slurm``: one datatrove task per shard (``RayPipelineExecutor`` / ``SlurmPipelineExecutor``,
  arguments from ``corpus.executor_args``), shards and results exchanged as pickles in a fresh
  ``kiln-exec-*`` folder under the system temporary directory (``$TMPDIR``; there is no recipe field for it):
  for slurm or a multi-node Ray cluster, point ``TMPDIR`` at a shared filesystem.

The streaming corpus stage (kiln/corpus/stream.py) uses :func:`run_tasks`: any list of small, picklable
task arguments (shard files on disk, not documents) through the same engines; under ray/slurm the
arguments are grouped into ``corpus.workers`` datatrove tasks.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kiln.corpus.report import Doc, StepReport, merge_rows
from kiln.corpus.steps.base import Removal, StepContext, StepParams
from kiln.progress import log

Executor = Literal["local", "ray", "slurm"]


@dataclass
class ShardResult:
    docs: list[Doc]
    reports: list[StepReport]
    removed: list[Removal]
    errors: dict[str, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ShardJob:
    """What one shard needs: its steps and the picklable part of the pipeline's context."""

    steps: list[StepParams]
    cache_dir: Path
    run_dir: Path | None
    seed: int
    on_error: str
    first_index: int


def run_shard(docs: list[Doc], job: ShardJob) -> ShardResult:
    """Run the block's steps on one shard (in a worker process or a datatrove task)."""
    from kiln.corpus.steps.registry import step_fn

    base = StepContext(cache_dir=job.cache_dir, run_dir=job.run_dir, seed=job.seed,
                       on_error=job.on_error)  # type: ignore[arg-type]
    reports, secs = [], []
    for k, params in enumerate(job.steps):
        sctx = base.for_step(params.label, job.first_index + k)
        first, start = len(base.removed), time.perf_counter()
        docs, rep = step_fn(params.step)(docs, params, sctx)
        secs.append(time.perf_counter() - start)
        if rep.step != params.label:
            base.removed[first:] = [Removal(r.id, params.label, r.reason) for r in base.removed[first:]]
        rep.step = params.label
        reports.append(rep)
    return ShardResult(docs, reports, base.removed, base.errors, secs)


def _run_shard_args(args: tuple[list[Doc], ShardJob]) -> ShardResult:
    return run_shard(*args)


def merge(results: list[ShardResult], ctx: StepContext) -> tuple[list[Doc], list[StepReport]]:
    """Concatenate shard results in order; funnel rows summed, examples the first three in document order."""
    docs = [d for r in results for d in r.docs]
    merged = [merge_rows(first.step, [r.reports[k] for r in results]) for k, first in enumerate(results[0].reports)]
    for rep in merged:  # one-process order: by step, then by document
        ctx.removed.extend(x for r in results for x in r.removed if x.step == rep.step)
    for r in results:
        for step, n in r.errors.items():
            ctx.errors[step] = ctx.errors.get(step, 0) + n
    return docs, merged


def shards(docs: list[Any], n: int) -> list[list[Any]]:
    """``docs`` (or any list) cut into ``n`` contiguous shards of near-equal size (some empty if ``n > len(docs)``)."""
    q, r = divmod(len(docs), n)
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + q + (i < r))
    return [docs[bounds[i]:bounds[i + 1]] for i in range(n)]


def run_block(docs: list[Doc], steps: list[StepParams], ctx: StepContext, first_index: int, executor: Executor,
              workers: int, executor_args: dict[str, Any] | None = None,
              work_dir: Path | None = None) -> tuple[list[Doc], list[StepReport]]:
    """Run per-document ``steps`` over ``docs`` with ``executor``; results identical to a one-process run."""
    job = ShardJob(steps, ctx.cache_dir, ctx.run_dir, ctx.seed, ctx.on_error, first_index)
    if executor == "local" and workers <= 1:
        results = [run_shard(docs, job)]
    elif executor == "local":
        parts = shards(docs, workers * 4)  # several shards per worker: balance without reordering
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            results = list(pool.map(_run_shard_args, [(p, job) for p in parts]))
    else:
        results = run_datatrove(docs, job, executor, max(workers, 1), executor_args or {}, work_dir)
    return merge(results, ctx)


def _apply(fn_arg: tuple[Callable[[Any], Any], Any]) -> Any:
    return fn_arg[0](fn_arg[1])


def run_tasks(fn: Callable[[Any], Any], args: list[Any], executor: Executor = "local", workers: int = 1,
              executor_args: dict[str, Any] | None = None, work_dir: Path | None = None) -> list[Any]:
    """``[fn(a) for a in args]`` through ``executor``, results in ``args`` order.

    ``fn`` must be a module-level function; arguments and results travel as pickles, so keep them small
    (paths, counts, reports): the streaming corpus stage passes shard files, not documents.
    """
    if not args:
        return []
    if executor == "local" and (workers <= 1 or len(args) == 1):
        return [fn(a) for a in args]
    if executor == "local":
        with ProcessPoolExecutor(min(workers, len(args)), mp_context=mp.get_context("fork")) as pool:
            return list(pool.map(_apply, [(fn, a) for a in args]))
    groups = shards(args, min(len(args), max(workers, 1)))  # one datatrove task per group: ``workers`` tasks
    results = run_datatrove_tasks(_run_group, [(fn, g) for g in groups], executor, executor_args or {}, work_dir)
    return [r for group in results for r in group]


def _run_group(fn_group: tuple[Callable[[Any], Any], list[Any]]) -> list[Any]:
    fn, group = fn_group
    return [fn(a) for a in group]


class _ShardTask:
    """A datatrove pipeline step: task ``rank`` loads its pickled ``(fn, arg)``, pickles ``fn(arg)``."""

    name = "kiln corpus task"
    type = "kiln"

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> None:
        folder = Path(self.folder)
        try:
            with open(folder / f"task-{rank:05d}.pkl", "rb") as f:
                fn, arg = pickle.load(f)
            result = fn(arg)
        except BaseException:  # the waiting process reads this and stops waiting
            (folder / f"error-{rank:05d}.txt").write_text(traceback.format_exc())
            raise
        tmp = folder / f".result-{rank:05d}.pkl"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        tmp.rename(folder / f"result-{rank:05d}.pkl")


def _datatrove_executor(executor: Executor, pipeline: list[Any], tasks: int, logging_dir: str,
                        args: dict[str, Any]) -> Any:
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise RuntimeError("corpus.executor 'ray' needs Ray: pip install 'ray>=2' (or use executor: local)"
                               ) from None
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(pipeline=pipeline, tasks=tasks, logging_dir=logging_dir, **args)
    from datatrove.executor import SlurmPipelineExecutor

    missing = {"partition", "time"} - set(args)
    if missing:
        raise RuntimeError(f"corpus.executor 'slurm' needs corpus.executor_args {sorted(missing)} "
                           "(passed to datatrove's SlurmPipelineExecutor)")
    return SlurmPipelineExecutor(pipeline=pipeline, tasks=tasks, logging_dir=logging_dir, **args)


def run_datatrove(docs: list[Doc], job: ShardJob, executor: Executor, tasks: int, args: dict[str, Any],
                  work_dir: Path | None, poll_s: float = 5.0) -> list[ShardResult]:
    """One datatrove task per shard through Ray or Slurm; waits for every shard's result, in shard order."""
    return run_datatrove_tasks(_run_shard_args, [(part, job) for part in shards(docs, tasks)], executor, args,
                               work_dir, poll_s)


def run_datatrove_tasks(fn: Callable[[Any], Any], fn_args: list[Any], executor: Executor, args: dict[str, Any],
                        work_dir: Path | None, poll_s: float = 5.0) -> list[Any]:
    """``fn(a)`` for each of ``fn_args``, one datatrove task each (Ray or Slurm); results in order."""
    from kiln.corpus import assets  # noqa: F401 - HF_HUB_OFFLINE before datatrove loads

    root = Path(tempfile.mkdtemp(prefix="kiln-exec-", dir=work_dir))
    tasks = len(fn_args)
    for rank, arg in enumerate(fn_args):
        with open(root / f"task-{rank:05d}.pkl", "wb") as f:
            pickle.dump((fn, arg), f)
    ex = _datatrove_executor(executor, [_ShardTask(str(root))], tasks, str(root / "logs"), dict(args))
    ex.run()
    results = [root / f"result-{rank:05d}.pkl" for rank in range(tasks)]
    waited = 0.0
    while not all(p.exists() for p in results):  # slurm: run() submits and returns
        failed = sorted(root.glob("error-*.txt"))
        if failed:
            raise RuntimeError(f"corpus.executor {executor!r}: task {failed[0].stem.removeprefix('error-')} failed "
                               f"(logs: {root / 'logs'}):\n{failed[0].read_text()[-2000:]}")
        if waited and waited % 60 < poll_s:
            done = sum(p.exists() for p in results)
            log(f"corpus: waiting for {executor} tasks, {done}/{tasks} done after {waited:.0f}s "
                f"(task logs: {root / 'logs' / 'logs'})")
        time.sleep(poll_s)
        waited += poll_s
    out = []
    for p in results:
        with open(p, "rb") as f:
            out.append(pickle.load(f))
    return out
