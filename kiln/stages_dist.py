"""The pipeline under torchrun: one process per rank, rank 0 speaks for the job.

``torchrun --nproc_per_node=N -m kiln train RECIPE`` starts N copies of the same command, and each runs
:func:`kiln.stages.run_pipeline` through the same :func:`kiln.stages.run_stage` as a single process does.
The difference lies here: :func:`session` joins the process group (and tears it down after a final
barrier), and :func:`on_main` runs the bookkeeping on rank 0 alone (the run lock, ``recipe.yaml``, the
plan of fingerprints, skip/reuse decisions, checks of upstream files, whole non-ranked stages such as
corpus, tokenizer, tokens, eval, generate, report, and manifests) while the other ranks wait for its result,
or its error, so no rank waits forever on a rank 0 that failed. A ranked stage (``train``) runs on every
rank between two such calls: the trainer shards the data and synchronises gradients (kiln/train/trainer.py).
Without torchrun both are no-ops around a plain call.

Waiting ranks block in a collective, which times out after ``$KILN_DIST_TIMEOUT_MIN`` minutes (default 60):
build the tokens of a very large corpus first with a plain ``kiln tokens``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from kiln.recipe import Recipe
from kiln.run import RunError
from kiln.train import dist


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on all ranks.

    Without a process group this is ``fn()``."""
    env = dist.current()
    if not env.active:
        return fn()
    result, error, exc = None, None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as e:  # shared with the other ranks, then re-raised here
            exc, error = e, f"{type(e).__name__}: {e}"
    result, error = dist.broadcast_object((result, error))
    if exc is not None:
        raise exc
    if error is not None:
        raise RunError(f"rank 0 failed: {error}")
    return result


@contextlib.contextmanager
def session(recipe: Recipe) -> Iterator[None]:
    """Under torchrun: join the process group for the pipeline, barrier and shut it down after it."""
    if not dist.launched_by_torchrun():
        yield
        return
    from kiln.train.trainer import resolve_device

    dist.init_from_env(use_cuda=resolve_device(recipe.train.device).type == "cuda")
    try:
        yield
        dist.barrier()  # no rank tears its process group down while another still talks to it
    finally:
        dist.shutdown()
