"""The pipeline under torchrun: rank 0 runs every stage but ``train``, all ranks run ``train`` together.

``torchrun --nproc_per_node=N -m kiln train RECIPE`` starts N copies of the same command. Rank 0 alone holds
the run lock, writes ``recipe.yaml``, builds (or skips) corpus, tokenizer and tokens, decides whether
``train`` is already complete and opens its folder; the other ranks wait for each of these steps and get its
result (or its error, so no rank waits forever on a rank 0 that failed). Then every rank trains (the trainer
shards the data and synchronises gradients, kiln/train/trainer.py), rank 0 writes the train manifest, and
rank 0 runs any later stage (eval, generate, report) while the others wait for it.

Waiting ranks block in a collective, which times out after ``$KILN_DIST_TIMEOUT_MIN`` minutes (default 60):
build the tokens of a very large corpus first with a plain ``kiln tokens``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from kiln import atomic
from kiln.progress import log
from kiln.recipe import Recipe
from kiln.run import MANIFEST, RunDir, RunError, make_manifest, verify_files
from kiln.stages import STAGES, prepare_in_place, run_stage
from kiln.train import dist


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on all ranks."""
    env = dist.current()
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


def _open_train(recipe: Recipe, run: RunDir, fps: dict[str, str], force: bool) -> dict | None:
    """Rank 0: the complete train manifest to skip with, or None after opening the train folder."""
    import shutil

    st, fp = STAGES["train"], fps["train"]
    if not force and run.is_complete("train", fp):
        log(f"[dim]train: up to date ({fp}), skipped[/dim]")
        return run.manifest("train") or {}
    for dep in st.inputs:
        if not run.is_complete(dep, fps[dep]):
            raise RunError(f"stage 'train' needs '{dep}' to be complete and current in {run.root}")
        verify_files(run.stage(dep), run.manifest(dep) or {})
    if force and run.stage("train").exists():
        shutil.rmtree(run.stage("train"))
    prepare_in_place(st, run, fp)
    log(f"[bold]train[/bold]: running on {dist.current().world_size} ranks")
    return None


def _train_ranked(recipe: Recipe, run: RunDir, fps: dict[str, str], force: bool) -> dict:
    done = on_main(lambda: _open_train(recipe, run, fps, force))
    if done is not None:
        return done
    st, t0 = STAGES["train"], time.perf_counter()
    stats = st.fn(recipe, run, run.stage("train"))  # every rank

    def finish() -> dict:
        manifest = make_manifest("train", fps["train"], time.perf_counter() - t0, stats,
                                 {d: fps[d] for d in st.inputs})
        atomic.write_json(run.stage("train") / MANIFEST, manifest)
        log(f"train: done in {manifest['seconds']:.1f}s")
        return manifest

    return on_main(finish)


def run_pipeline_ranked(recipe: Recipe, run: RunDir, names: list[str], fps: dict[str, str],
                        force: tuple[str, ...]) -> dict[str, dict]:
    """:func:`kiln.stages.run_pipeline` for one rank of a torchrun job (see the module docstring)."""
    from kiln.train.trainer import resolve_device

    dist.init_from_env(use_cuda=resolve_device(recipe.train.device).type == "cuda")
    results: dict[str, dict] = {}
    try:
        with contextlib.ExitStack() as stack:

            def prologue() -> None:
                stack.enter_context(run.lock())  # rank 0 only: the others never touch the lock
                run.remove_stale_temporaries()
                run.write_recipe(recipe)

            on_main(prologue)
            forcing = False
            for name in names:
                forcing = forcing or name in force
                if name == "train":
                    results[name] = _train_ranked(recipe, run, fps, forcing)
                else:
                    results[name] = on_main(lambda n=name, f=forcing: run_stage(n, recipe, run, fps, force=f))
        dist.barrier()  # no rank tears its process group down while another still talks to it
    finally:
        dist.shutdown()
    return results
