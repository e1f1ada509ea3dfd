"""Sweeps end to end (kiln/experiments/runner.py, engines.py): a 3-variant x 2-seed sweep shares its corpus,
tokenizer and tokens (built once, also with --jobs 2: the store's build lock); SIGKILL mid-sweep then rerun gives
the uninterrupted sweep's metrics exactly; failures are reported by name; Ray and a stand-in sbatch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kiln.cli import app
from kiln.experiments.runner import SWEEP_JSON, plan_sweep, run_sweep
from kiln.experiments.sweep_file import load_sweep
from tests.synthetic import tiny_overrides, write_jsonl_corpus

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SHARED = ("corpus", "tokenizer", "tokens")
VARIANTS = {"lr-low": {"train.lr": 0.001}, "lr-mid": {}, "lr-high": {"train.lr": 0.01}}


def sweep_file(folder: Path, corpus: Path, variants: dict, seeds: int | list[int] = 2, name: str = "lr",
               **extra) -> Path:
    overrides = {}
    for ov in [*tiny_overrides(corpus, steps=12), "train.checkpoint_every=4", "train.eval_every=6",
               "eval.max_sequences=4", "report.samples=0"]:
        key, raw = ov.split("=", 1)
        overrides[key] = yaml.safe_load(raw)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": "demo", "overrides": overrides, "seeds": seeds,
                                    "variants": variants, **extra}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl_corpus(tmp_path_factory.mktemp("sweep-corpus") / "docs.jsonl", n_docs=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus: Path) -> Path:
    """An uninterrupted 3 x 2 sweep run with --jobs 2; its sweep root."""
    folder = tmp_path_factory.mktemp("sweep-ref")
    plan = plan_sweep(load_sweep(sweep_file(folder, corpus, VARIANTS)), folder / "runs")
    lines: list[str] = []
    assert run_sweep(plan, jobs=2, echo=lines.append) == []
    assert sum("done (" in ln for ln in lines) == 6
    return plan.root


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/seed-*/recipe.yaml"))


def metrics(run: Path) -> dict:
    m = json.loads((run / "eval" / "metrics.json").read_text())
    return {k: m[k] for k in ("val_loss", "val_bpb")}


def test_sweep_completes_and_builds_shared_stages_once(reference: Path) -> None:
    doc = json.loads((reference / SWEEP_JSON).read_text())
    runs = [r for v in doc["variants"] for r in v["runs"]]
    assert len(runs) == 6 and {r["status"] for r in runs} == {"done"}
    assert [v["name"] for v in doc["variants"]] == list(VARIANTS) and doc["baseline"] == "lr-low"
    dirs = run_dirs(reference)
    assert len(dirs) == 6
    for stage in SHARED:  # exactly one run built it (under --jobs 2: the build lock), five took the store's
        manifests = [json.loads((d / stage / "manifest.json").read_text()) for d in dirs]
        assert sum("reused_from" not in m for m in manifests) == 1, stage
        assert len({m["fingerprint"] for m in manifests}) == 1
    assert len({metrics(d)["val_loss"] for d in dirs}) == 6  # seeds and learning rates differ
    assert (reference / "report" / "index.html").is_file()


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (the sweep's runs)."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            with contextlib.suppress(OSError):
                if str(root).encode() in (proc_dir / "cmdline").read_bytes():
                    pids.append(int(proc_dir.name))
    return pids


def test_sigkill_mid_sweep_then_rerun_equals_the_uninterrupted_sweep(tmp_path: Path, corpus: Path,
                                                                     reference: Path, monkeypatch) -> None:
    path = sweep_file(tmp_path, corpus, {k: VARIANTS[k] for k in ("lr-low", "lr-mid")}, seeds=[1])
    root = tmp_path / "runs"
    env = {**os.environ, "KILN_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kiln", "ablate", str(path), "--root", str(root)], cwd=REPO,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep = root / "lr"
    runs = [sweep / v / "seed-1" for v in ("lr-low", "lr-mid")]
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            for run in runs:  # a run with a checkpoint whose training has not finished
                if list(run.glob("train/checkpoints/step-*")) and not (run / "train" / "manifest.json").exists():
                    killed = run
            time.sleep(0.05)
        assert proc.poll() is None and killed is not None, "the sweep ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process alone: its runs must not outlive it
        proc.wait()
    try:
        deadline = time.monotonic() + 30
        while _processes_under(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _processes_under(root), "a run outlived the killed sweep process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (sweep / "lr-mid" / "seed-1" / "eval" / "metrics.json").exists()
    monkeypatch.delenv("KILN_QUIET", raising=False)  # the runs' logs say what they resumed
    lines: list[str] = []
    assert run_sweep(plan_sweep(load_sweep(path), root), echo=lines.append) == []
    log = killed.with_suffix(".log").read_text()
    assert "train: resumed from" in log, log[-2000:]  # the half-trained run continued from its checkpoint
    for variant in ("lr-low", "lr-mid"):
        assert metrics(sweep / variant / "seed-1") == metrics(reference / variant / "seed-1"), variant
    lines.clear()
    t0 = time.monotonic()
    assert run_sweep(plan_sweep(load_sweep(path), root), echo=lines.append) == []
    assert "2 of 2 runs already complete, 0 to run" in lines[0] and time.monotonic() - t0 < 30


def test_a_failing_run_is_reported_by_name_and_the_others_finish(tmp_path: Path, corpus: Path,
                                                                 reference: Path, monkeypatch) -> None:
    monkeypatch.setenv("KILN_STAGE_CACHE", str(reference / ".store"))  # reuse corpus/tokenizer/tokens
    variants = {"empty": {"corpus.min_chars": 10**9}, "ok": {}}  # valid, but the corpus stage keeps no document
    path = sweep_file(tmp_path, corpus, variants, seeds=[0])
    lines: list[str] = []
    plan = plan_sweep(load_sweep(path), tmp_path / "ff")
    failures = run_sweep(plan, fail_fast=True, echo=lines.append)
    assert [(f["variant"], f["seed"]) for f in failures] == [("empty", 0)]
    assert not (plan.root / "ok").exists() and any("not started: ok seed 0" in ln for ln in lines)
    monkeypatch.delenv("KILN_QUIET", raising=False)  # the progress lines
    res = CliRunner().invoke(app, ["ablate", str(path), "--root", str(tmp_path / "runs")])
    assert res.exit_code == 1 and "1 of 2 runs failed" in res.output, res.output
    root = tmp_path / "runs" / "lr"
    run_dir, log = root / "empty" / "seed-0", root / "empty" / "seed-0.log"
    error = next(ln for ln in reversed(log.read_text().splitlines()) if ln.strip()).strip()
    assert "error" in error.lower() and "document" in error.lower(), error
    said = next(ln for ln in res.output.splitlines() if "FAILED" in ln)
    assert "run 1/2 empty seed 0" in said and str(run_dir) in said and str(log) in said and error in said
    doc = json.loads((root / SWEEP_JSON).read_text())
    status = {v["name"]: (v["runs"][0]["status"], v["runs"][0].get("error")) for v in doc["variants"]}
    assert status == {"empty": ("failed", error), "ok": ("done", None)}
    assert metrics(root / "ok" / "seed-0") == metrics(reference / "lr-mid" / "seed-0")


FAKE_SBATCH = r"""#!/bin/bash
# A stand-in for Slurm's sbatch: runs the script here in the background, output where --output says.
out=$(sed -n 's/^#SBATCH --output=//p' "$1")
echo "$@" >> "$FAKE_SLURM_DIR/sbatch.calls"
bash "$1" >> "$out" 2>&1 &
echo "Submitted batch job 4242"
"""


def test_slurm_executor_submits_one_script_per_run(tmp_path: Path, corpus: Path, reference: Path,
                                                   monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_STAGE_CACHE", str(reference / ".store"))
    path = sweep_file(tmp_path, corpus, {"lr-mid": {}}, seeds=[0])
    plan = plan_sweep(load_sweep(path), tmp_path / "runs")
    assert run_sweep(plan, executor="slurm", executor_args={"partition": "cpu", "time": "00:10:00"},
                     echo=lambda _: None) == []
    script = (plan.root / "lr-mid" / "seed-0.sbatch").read_text()
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=00:10:00" in script
    assert len((tmp_path / "sbatch.calls").read_text().splitlines()) == 1
    assert metrics(plan.root / "lr-mid" / "seed-0") == metrics(reference / "lr-mid" / "seed-0")


def test_ray_executor_runs_each_run_as_a_task(tmp_path: Path, corpus: Path, reference: Path, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("KILN_STAGE_CACHE", str(reference / ".store"))
    path = sweep_file(tmp_path, corpus, {"lr-high": VARIANTS["lr-high"]}, seeds=[1])
    plan = plan_sweep(load_sweep(path), tmp_path / "runs")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_sweep(plan, executor="ray", echo=lambda _: None) == []
    finally:
        ray.shutdown()
    assert metrics(plan.root / "lr-high" / "seed-1") == metrics(reference / "lr-high" / "seed-1")
