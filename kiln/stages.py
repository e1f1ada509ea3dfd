"""The pipeline: corpus -> tokenizer -> tokens -> train [-> post stages] -> eval, generate -> report.

Each stage reads its own recipe sections, its external inputs (source files, reference checkpoints,
assets: :mod:`kiln.inputs`) and the artifacts of the stages it declares as inputs, and writes one folder
of the run directory. Its fingerprint hashes its non-default config, its external inputs' content and its
inputs' fingerprints; a rerun skips a complete stage whose fingerprint matches, takes a shareable stage
from the stage store when another run built it (:mod:`kiln.store`), and otherwise says why it rebuilds.
The order comes from the graph (:mod:`kiln.stage_graph`); with ``tokens.synthetic`` the tokens stage
writes generated token sequences and corpus and tokenizer do not run.

Most stages are built in a temporary folder renamed into place; ``train`` works in place (checkpoints are
atomic) so an interrupted run resumes from its last checkpoint, and a finished one whose ``train.steps`` alone
grew is continued from it (:mod:`kiln.train.extend`: schedules permitting, else refused naming why).
One :func:`run_stage` serves a single process and every rank of a torchrun job: rank 0 does the bookkeeping,
ranked stages (train) run on every rank (:mod:`kiln.stages_dist`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln import atomic
from kiln.artifacts import final_checkpoint, source_checkpoint, synthetic, token_bytes_dir
from kiln.inputs import stage_inputs
from kiln.progress import log
from kiln.recipe import Recipe
from kiln.run import (
    MANIFEST,
    RunDir,
    RunError,
    file_records,
    make_manifest,
    rebuild_reason,
    stage_config,
    stage_fingerprint,
    verify_files,
)
from kiln.stage_graph import (
    MODEL,
    ORDER,
    STAGES,
    Stage,
    downstream,
    plan_names,
    register_stage,
    stage_inputs_of,
    upstream,
)
from kiln.stages_dist import on_main, session
from kiln.store import StageStore, link_tree

__all__ = ["MODEL", "ORDER", "STAGES", "Plan", "Stage", "final_checkpoint", "make_plan", "plan_status",
           "register_stage", "run_pipeline", "run_stage", "source_checkpoint", "upstream"]

GOAL = "report"  # a full run: the report and everything it reads


# ----------------------------------------------------------------------------- built-in stages


def _corpus(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.corpus.stage import build_corpus

    return build_corpus(recipe.corpus, out)


def _tokenizer(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.tokenizer.train import train_tokenizer

    return train_tokenizer(recipe.tokenizer, run.stage("corpus"), out)


def _tokens(recipe: Recipe, run: RunDir, out: Path) -> dict:
    if synthetic(recipe):
        from kiln.data.synthetic import write_synthetic

        return write_synthetic(recipe.tokens.synthetic, out)  # type: ignore[attr-defined]
    from kiln.data.encode import encode_corpus
    from kiln.tokenizer.train import load_tokenizer

    return encode_corpus(recipe.tokens, load_tokenizer(run.stage("tokenizer")), run.stage("corpus"), out)


def _tokens_inputs(recipe: Recipe) -> tuple[str, ...]:
    return () if synthetic(recipe) else ("corpus", "tokenizer")


def _eval_inputs(recipe: Recipe) -> tuple[str, ...]:
    """Tasks and probes read the corpus (held-out documents, the train split to avoid) and the tokenizer."""
    reads_text = bool(recipe.eval.tasks or recipe.eval.probes) and not synthetic(recipe)
    return (MODEL, "tokens", *(("corpus", "tokenizer") if reads_text else ()))


def _train(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.tokenizer.train import load_token_bytes
    from kiln.train.trainer import Trainer, load_train_data

    token_bytes = load_token_bytes(token_bytes_dir(recipe, run))
    vocab = (run.manifest("tokens") or {}).get("stats", {}).get("vocab_size") if synthetic(recipe) else None
    data = load_train_data(recipe, run.stage("tokens"), token_bytes)
    trainer = Trainer(recipe, data, int(vocab or len(token_bytes)), out, run.metrics_path)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def _eval(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.eval.stage import run_eval

    return run_eval(recipe, run, out)


def _generate(recipe: Recipe, run: RunDir, out: Path) -> dict:
    if synthetic(recipe):  # no tokenizer: prompts cannot be encoded nor samples decoded
        reason = "no tokenizer (tokens.synthetic): nothing to encode prompts with"
        log(f"generate: skipped, {reason}")
        atomic.write_text(out / "samples.jsonl", "")
        return {"samples": 0, "new_tokens": 0, "skipped": reason}
    from kiln.infer.stage import run_generate

    return run_generate(recipe, run, out)


def _report(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.report.build import build_report

    return build_report(run.root, out, samples=recipe.report.samples, eval_sequences=recipe.train.eval_sequences)


for _st in [
    Stage("corpus", ("corpus",), _corpus, (), ("{train,val}-NNNNN.parquet", "funnel.json", "removed.parquet"),
          shareable=True),
    Stage("tokenizer", ("tokenizer",), _tokenizer, ("corpus",), ("tokenizer.json", "token_bytes.npy"),
          shareable=True),
    Stage("tokens", ("tokens",), _tokens, _tokens_inputs,
          ("train/val token shards + document index", "synthetic: token_bytes.npy, vocab.json"), shareable=True),
    Stage("train", ("data", "model", "train"), _train, ("tokens",), ("checkpoints/step-N",), in_place=True,
          ranked=True, model=True),
    Stage("eval", ("eval",), _eval, _eval_inputs, ("metrics.json", "tasks/<task>.jsonl", "probe-<task>.json")),
    Stage("generate", ("generate",), _generate, (MODEL,), ("samples.jsonl",)),
    Stage("report", ("report",), _report, ("eval", "generate"), ("index.html", "report.md"), always=True),
]:
    register_stage(_st)


# ----------------------------------------------------------------------------- plan: fingerprints of one run


@dataclass
class Plan:
    """The stages a run executes (topological order) with their fingerprints, configs and external inputs."""

    names: list[str]
    fps: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    config: dict[str, dict] = field(default_factory=dict)
    external: dict[str, dict[str, dict]] = field(default_factory=dict)

    def manifest_view(self, name: str) -> dict:
        return {"config": self.config[name], "inputs": self.inputs[name], "external": self.external[name]}


def make_plan(recipe: Recipe, run: RunDir | None = None, goals: list[str] | None = None) -> Plan:
    """Fingerprint ``goals`` (default: the whole run) and everything they read; hashes of unchanged
    external files come from the run's previous manifests (size + mtime fast path)."""
    plan = Plan(plan_names(recipe, goals or [GOAL]))
    for name in plan.names:
        st = STAGES[name]
        previous = ((run.manifest(name) if run else None) or {}).get("external")
        plan.external[name] = stage_inputs(recipe, name, previous, run.root if run else None)
        plan.inputs[name] = {d: plan.fps[d] for d in stage_inputs_of(name, recipe)}
        plan.config[name] = stage_config(recipe, st.sections)
        extra = st.extra(recipe) if st.extra else None
        if extra is not None:
            plan.config[name]["extra"] = extra
        plan.fps[name] = stage_fingerprint(recipe, st.sections, plan.inputs[name], plan.external[name], extra)
    return plan


def fingerprints(recipe: Recipe, run: RunDir | None = None) -> dict[str, str]:
    """The fingerprint of every stage of a full run."""
    return make_plan(recipe, run).fps


def plan_status(recipe: Recipe, run: RunDir, until: str | None = None,
                force: tuple[str, ...] = ()) -> list[dict]:
    """What :func:`run_pipeline` would do, without doing it: per stage its fingerprint and ``action``
    (``up to date`` | ``reuse`` from the store | ``run`` | ``rebuild``) with the ``why``."""
    plan = make_plan(recipe, run, [until or GOAL])
    forced = downstream(set(force), plan.names, recipe)
    store = StageStore.for_run(run)
    rows = []
    for name in plan.names:
        st, fp = STAGES[name], plan.fps[name]
        why = ""
        if name in forced:
            action, why = "rebuild", "forced"
        elif st.always:
            action = "run"
        elif run.is_complete(name, fp):
            action = "up to date"
        elif st.shareable and store.enabled and (store.entry(name, fp) / MANIFEST).is_file():
            action, why = "reuse", str(store.entry(name, fp))
        elif st.in_place and (ext := _extension_or_refusal(st, recipe, run, plan)):
            action, why = ext
        else:
            why = rebuild_reason(run.manifest(name), plan.manifest_view(name))
            action = "rebuild" if why else "run"
        rows.append({"stage": name, "fingerprint": fp, "action": action, "why": why})
    return rows


def _extension_or_refusal(st: Stage, recipe: Recipe, run: RunDir, plan: Plan) -> tuple[str, str] | None:
    """For :func:`plan_status`: ("extend", from which step) or ("refused", why), None when no extension."""
    try:
        before = _extension(st, recipe, run, plan)
    except RunError as exc:
        return "refused", str(exc)
    return None if before is None else ("extend", f"train.steps raised: continues from step {before}")


# ----------------------------------------------------------------------------- running one stage


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


def _extension(st: Stage, recipe: Recipe, run: RunDir, plan: Plan) -> int | None:
    """The step a finished ``train`` stage is extended from (``train.steps`` raised, nothing else changed:
    :mod:`kiln.train.extend`), None when this is no extension; RunError when the schedule forbids it."""
    if st.name != "train":
        return None
    from kiln.train.checkpoint import latest_checkpoint
    from kiln.train.extend import extension_check

    check = extension_check(run.manifest(st.name), plan.manifest_view(st.name), recipe)
    if check is None or latest_checkpoint(run.stage(st.name) / "checkpoints") is None:
        return None
    before, blocker = check
    if blocker:
        raise RunError(f"train: cannot extend the finished run in {run.stage(st.name)} from {before} to "
                       f"{recipe.train.steps} steps: {blocker}. Use `--force train` to retrain from scratch, or "
                       "a new run with train.init_from=<its checkpoint>")
    return before


def _reuse(st: Stage, run: RunDir, entry: Path) -> dict:
    """Take a stage folder from the store (hard links) into the run."""
    manifest = json.loads((entry / MANIFEST).read_text())
    with atomic.staged_dir(run.stage(st.name)) as tmp:
        link_tree(entry, tmp)
        (tmp / MANIFEST).unlink()
        manifest["reused_from"] = str(entry)
        atomic.write_json(tmp / MANIFEST, manifest)
    return manifest


def _open(st: Stage, recipe: Recipe, run: RunDir, plan: Plan, force: bool, store: StageStore) -> dict | None:
    """Rank 0: the manifest to stop with (up to date, or reused from the store), or None to run the stage."""
    fp = plan.fps[st.name]
    if not force and not st.always and run.is_complete(st.name, fp):
        log(f"[dim]{st.name}: up to date ({fp}), skipped[/dim]")
        return run.manifest(st.name) or {}
    for dep in plan.inputs[st.name]:
        if not run.is_complete(dep, plan.fps[dep]):
            raise RunError(f"stage '{st.name}' needs '{dep}' to be complete and current in {run.root}")
    for dep in upstream(st.name, recipe):  # artifacts edited, truncated or deleted since their stage completed
        verify_files(run.stage(dep), run.manifest(dep) or {})
    if st.shareable and not force:
        store.acquire(st.name, fp)  # built once: a concurrent builder finishes first; released in _build
        if (entry := store.lookup(st.name, fp)) is not None:
            try:
                manifest = _reuse(st, run, entry)
            except OSError as exc:  # the entry vanished under us (dropped by another run): build it here
                log(f"{st.name}: could not take {entry} from the stage store ({exc}); building it")
            else:
                store.release(st.name, fp)
                log(f"{st.name}: reused {fp} from the stage store ({entry}), not rebuilt")
                return manifest
    if st.in_place and not force and (before := _extension(st, recipe, run, plan)) is not None:
        log(f"[bold]{st.name}[/bold]: extending the finished run from step {before} to {recipe.train.steps} "
            "(resuming its last checkpoint)")
        atomic.write_json(run.stage(st.name) / "fingerprint.json", {"fingerprint": fp})
        prepare_in_place(st, run, fp)
        return None
    why = "forced" if force else "" if st.always else rebuild_reason(run.manifest(st.name),
                                                                      plan.manifest_view(st.name))
    log(f"[bold]{st.name}[/bold]: " + (f"{why}, rebuilding" if why else "running"))
    if st.in_place:
        if force and run.stage(st.name).exists():
            shutil.rmtree(run.stage(st.name))
        prepare_in_place(st, run, fp)
    return None


def _manifest(st: Stage, plan: Plan, seconds: float, stats: dict) -> dict:
    n = st.name
    return make_manifest(n, plan.fps[n], seconds, stats, plan.inputs[n], plan.config[n], plan.external[n])


def _build(st: Stage, recipe: Recipe, run: RunDir, plan: Plan, force: bool, store: StageStore, t0: float) -> dict:
    """Rank 0: build a stage in a temporary folder renamed into place; publish a shareable one to the store."""
    try:
        with atomic.staged_dir(run.stage(st.name)) as tmp:
            stats = st.fn(recipe, run, tmp)
            manifest = _manifest(st, plan, time.perf_counter() - t0, stats)
            manifest["files"] = file_records(tmp)
            atomic.write_json(tmp / MANIFEST, manifest)
        if st.shareable:
            store.publish(st.name, plan.fps[st.name], run.stage(st.name), replace=force)
    finally:
        store.release(st.name, plan.fps[st.name])  # the build lock _open took (if any)
    log(f"{st.name}: done in {manifest['seconds']:.1f}s")
    return manifest


def run_stage(name: str, recipe: Recipe, run: RunDir, plan: Plan | dict[str, str], force: bool = False) -> dict:
    """Run (or skip, or reuse) one stage. Under torchrun: rank 0 decides and writes the manifest, a ranked
    stage's function runs on every rank, any other stage's on rank 0 alone; every rank returns the manifest."""
    if not isinstance(plan, Plan):  # a bare {stage: fingerprint} map from older callers
        plan = make_plan(recipe, run, [name])
    st = STAGES[name]
    store = StageStore.for_run(run)
    t0 = time.perf_counter()
    done = on_main(lambda: _open(st, recipe, run, plan, force, store))
    if done is not None:
        return done
    if not st.in_place:
        return on_main(lambda: _build(st, recipe, run, plan, force, store, t0))
    folder = run.stage(name)
    stats = st.fn(recipe, run, folder) if st.ranked else on_main(lambda: st.fn(recipe, run, folder))  # ranked: all

    def finish() -> dict:
        manifest = _manifest(st, plan, time.perf_counter() - t0, stats)
        atomic.write_json(run.stage(name) / MANIFEST, manifest)
        log(f"{name}: done in {manifest['seconds']:.1f}s")
        return manifest

    return on_main(finish)


def run_pipeline(recipe: Recipe, run: RunDir, until: str | None = None, only: str | None = None,
                 force: tuple[str, ...] = ()) -> dict[str, dict]:
    """Run what ``until`` (inclusive; default the report) needs, in graph order, or just ``only`` (its inputs
    must be complete). ``force``: rebuild those stages and everything downstream of them."""
    for f in (*force, *([until] if until else []), *([only] if only else [])):
        if f not in STAGES:
            raise RunError(f"{f}: unknown stage; stages are {', '.join(ORDER)}")
    results: dict[str, dict] = {}
    with session(recipe), contextlib.ExitStack() as stack:

        def prologue() -> Plan:
            stack.enter_context(run.lock())  # rank 0 only: the other ranks never touch the lock
            run.remove_stale_temporaries()
            run.write_recipe(recipe)
            return make_plan(recipe, run, [only or until or GOAL])

        plan = on_main(prologue)
        names = [only] if only else plan.names
        forced = downstream(set(force), plan.names, recipe)
        for name in names:
            results[name] = run_stage(name, recipe, run, plan, force=name in forced)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results
