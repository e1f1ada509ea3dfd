"""The pipeline: corpus -> tokenizer -> tokens -> train -> eval -> generate -> report.

Each stage reads its own recipe sections and the artifacts of earlier stages, and
writes one folder of the run directory. Its fingerprint hashes its sections and its
inputs' fingerprints; a rerun skips a complete stage whose fingerprint matches.
Most stages are built in a temporary folder renamed into place; ``train`` works in
place (checkpoints are atomic) so an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln import atomic
from kiln.progress import log
from kiln.recipe import Recipe
from kiln.run import MANIFEST, RunDir, RunError, file_records, make_manifest, stage_fingerprint, verify_files

StageFn = Callable[[Recipe, RunDir, Path], dict]


def _corpus(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.corpus.stage import build_corpus

    return build_corpus(recipe.corpus, out)


def _tokenizer(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.tokenizer.train import train_tokenizer

    return train_tokenizer(recipe.tokenizer, run.stage("corpus"), out)


def _tokens(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.data.encode import encode_corpus
    from kiln.tokenizer.train import load_tokenizer

    return encode_corpus(recipe.tokens, load_tokenizer(run.stage("tokenizer")), run.stage("corpus"), out)


def _train(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.tokenizer.train import load_token_bytes
    from kiln.train.trainer import Trainer, load_train_data

    token_bytes = load_token_bytes(run.stage("tokenizer"))
    data = load_train_data(recipe, run.stage("tokens"), token_bytes)
    trainer = Trainer(recipe, data, len(token_bytes), out, run.metrics_path)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def _eval(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.eval.stage import run_eval

    return run_eval(recipe, run, out)


def _generate(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.infer.stage import run_generate

    return run_generate(recipe, run, out)


def _report(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.report.build import build_report

    return build_report(run.root, out)


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    fn: StageFn
    in_place: bool = False  # True: the stage folder persists across interruptions (train)
    always: bool = False  # True: rerun every time (report)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("corpus", ("corpus",), (), _corpus),
        Stage("tokenizer", ("tokenizer",), ("corpus",), _tokenizer),
        Stage("tokens", ("tokens",), ("tokenizer",), _tokens),
        Stage("train", ("data", "model", "train"), ("tokens",), _train, in_place=True),
        Stage("eval", ("eval",), ("train",), _eval),
        Stage("generate", ("generate",), ("train",), _generate),
        Stage("report", ("report",), ("eval", "generate"), _report, always=True),
    ]
}
ORDER = list(STAGES)


def upstream(name: str) -> list[str]:
    """Every stage ``name`` reads from, directly or not, in pipeline order."""
    seen: set[str] = set()
    todo = list(STAGES[name].inputs)
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(STAGES[dep].inputs)
    return [n for n in ORDER if n in seen]


def fingerprints(recipe: Recipe) -> dict[str, str]:
    fps: dict[str, str] = {}
    for name, st in STAGES.items():
        fps[name] = stage_fingerprint(recipe, st.sections, {i: fps[i] for i in st.inputs})
    return fps


def prepare_in_place(st: Stage, run: RunDir, fp: str) -> Path:
    """Open an in-place stage folder: refuse another configuration's leftovers, mark it with ``fp``."""
    folder = run.stage(st.name)
    marker = folder / "fingerprint.json"
    if folder.exists() and marker.exists():
        old = json.loads(marker.read_text()).get("fingerprint")
        if old != fp:
            raise RunError(f"{folder} holds a {st.name} run with a different configuration (fingerprint {old}, "
                           f"recipe gives {fp}); use `--force {st.name}` to discard it, or another --run-dir")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    atomic.write_json(marker, {"fingerprint": fp})
    return folder


def _run_in_place(st: Stage, recipe: Recipe, run: RunDir, fp: str) -> dict:
    return st.fn(recipe, run, prepare_in_place(st, run, fp))


def run_stage(name: str, recipe: Recipe, run: RunDir, fps: dict[str, str], force: bool = False) -> dict:
    st = STAGES[name]
    fp = fps[name]
    if not force and not st.always and run.is_complete(name, fp):
        log(f"[dim]{name}: up to date ({fp}), skipped[/dim]")
        return run.manifest(name) or {}
    for dep in st.inputs:
        if not run.is_complete(dep, fps[dep]):
            raise RunError(f"stage '{name}' needs '{dep}' to be complete and current in {run.root}")
    for dep in upstream(name):  # artifacts edited, truncated or deleted since their stage completed
        verify_files(run.stage(dep), run.manifest(dep) or {})
    if force and st.in_place and run.stage(name).exists():
        shutil.rmtree(run.stage(name))
    log(f"[bold]{name}[/bold]: running")
    t0 = time.perf_counter()
    inputs = {d: fps[d] for d in st.inputs}
    if st.in_place:
        stats = _run_in_place(st, recipe, run, fp)
        manifest = make_manifest(name, fp, time.perf_counter() - t0, stats, inputs)
        atomic.write_json(run.stage(name) / MANIFEST, manifest)
    else:
        with atomic.staged_dir(run.stage(name)) as tmp:
            stats = st.fn(recipe, run, tmp)
            manifest = make_manifest(name, fp, time.perf_counter() - t0, stats, inputs)
            manifest["files"] = file_records(tmp)
            atomic.write_json(tmp / MANIFEST, manifest)
    log(f"{name}: done in {manifest['seconds']:.1f}s")
    return manifest


def run_pipeline(recipe: Recipe, run: RunDir, until: str | None = None, only: str | None = None,
                 force: tuple[str, ...] = ()) -> dict[str, dict]:
    """Run stages in order up to ``until`` (inclusive), or just ``only`` (its inputs must be complete)."""
    for f in force:
        if f not in STAGES:
            raise RunError(f"--force {f}: unknown stage; stages are {', '.join(ORDER)}")
    names = [only] if only else ORDER[: ORDER.index(until) + 1] if until else ORDER
    fps = fingerprints(recipe)
    from kiln.train import dist

    if dist.launched_by_torchrun():  # torchrun: rank 0 runs all but train, every rank trains
        from kiln.stages_dist import run_pipeline_ranked

        return run_pipeline_ranked(recipe, run, names, fps, force)
    results = {}
    with run.lock():
        run.remove_stale_temporaries()
        run.write_recipe(recipe)
        forcing = False
        for name in names:
            forcing = forcing or name in force  # forcing a stage rebuilds everything downstream of it too
            results[name] = run_stage(name, recipe, run, fps, force=forcing)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results
