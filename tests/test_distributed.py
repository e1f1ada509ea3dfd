"""torchrun on CPU (gloo): DDP and FSDP2 reproduce a single process at the same global batch, and their
checkpoints resume at world size 1 on the same loss curve (issue 5 acceptance)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.synthetic import tiny_overrides, write_jsonl_corpus

REPO = Path(__file__).resolve().parents[1]
STEPS = 20  # checkpoints at 10 and 20; 8 rows of 64 tokens per step, 4 rows per micro-batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(run: RunDir) -> dict[int, float]:
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def torchrun_train(overrides: list[str], run_dir: Path, nproc: int = 2, ok: bool = True) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "kiln", "train", "demo", *overrides, "--run-dir", str(run_dir)]
    env = {**os.environ, "KILN_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (proc.returncode == 0) == ok, output
    return output


def crash_after_step_10(run: RunDir) -> None:
    """Leave ``run`` as a job killed after its step-10 checkpoint: no step-20, no manifest, log cut at 10.

    The kept rows get a ``survived`` mark: a resume keeps them, a restart from scratch would rewrite them."""
    shutil.rmtree(run.stage("train") / "checkpoints" / "step-000020")
    (run.stage("train") / "manifest.json").unlink()
    rows = [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["step"] <= 10]
    run.metrics_path.write_text("".join(json.dumps({**r, "survived": True}) + "\n" for r in rows))


def assert_resumed(run: RunDir) -> None:
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert all(r.get("survived") for r in rows if r["step"] <= 10) and not any(r.get("survived") for r in rows
                                                                                if r["step"] > 10)


def assert_same_curve(got: dict[int, float], want: dict[int, float], rel: float = 1e-5) -> float:
    assert sorted(got) == sorted(want)
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    assert worst <= rel, (worst, got, want)
    return worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A single-process run of the same recipe (and its tokens, reused by the distributed runs)."""
    root = tmp_path_factory.mktemp("dist")
    corpus = write_jsonl_corpus(root / "docs.jsonl")
    overrides = tiny_overrides(corpus, steps=STEPS)
    run = RunDir(root / "single")
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    return root, overrides, run


def _copy_tokens(reference_run: RunDir, dest: Path) -> RunDir:
    """A run directory holding the reference's corpus/tokenizer/tokens stages, so torchrun only trains."""
    dest.mkdir()
    for name in ("corpus", "tokenizer", "tokens"):
        shutil.copytree(reference_run.stage(name), dest / name)
    return RunDir(dest)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_and_resume_on_one(reference, tmp_path, strategy):
    root, overrides, single = reference
    want = train_losses(single)
    run = _copy_tokens(single, tmp_path / strategy)
    torchrun_train([*overrides, f"parallel.strategy={strategy}"], run.root)
    assert_same_curve(train_losses(run), want)  # per-step losses of 2 ranks == one process, same global batch
    ckpt = run.stage("train") / "checkpoints" / "step-000020"
    assert (ckpt / "model.safetensors").exists()
    assert (ckpt / "dcp").is_dir() == (strategy == "fsdp")

    # the 2-rank checkpoint at step 10 resumes in one process and continues the same curve
    crash_after_step_10(run)
    resume_strategy = "fsdp" if strategy == "fsdp" else "auto"
    run_pipeline(load_recipe("demo", [*overrides, f"parallel.strategy={resume_strategy}"]), run, until="train")
    assert_resumed(run)
    assert_same_curve(train_losses(run), want)
    assert run.manifest("train")["complete"]


@pytest.mark.slow
def test_compiled_blocks_and_loss_under_fsdp_match_one_eager_process(reference, tmp_path):
    """``parallel.compile`` (each block and the LM loss compiled) under FSDP2 on 2 ranks keeps the curve."""
    root, overrides, single = reference
    run = _copy_tokens(single, tmp_path / "fsdp-compiled")
    torchrun_train([*overrides, "parallel.strategy=fsdp", "parallel.compile=true"], run.root)
    assert_same_curve(train_losses(run), train_losses(single))


def test_sharded_checkpoint_resumes_without_fsdp(reference, tmp_path):
    """A DCP (FSDP2) checkpoint also loads into a plain single-process model."""
    root, overrides, single = reference
    run = _copy_tokens(single, tmp_path / "fsdp1")
    run_pipeline(load_recipe("demo", [*overrides, "parallel.strategy=fsdp"]), run, until="train")  # one rank
    assert_same_curve(train_losses(run), train_losses(single))
    crash_after_step_10(run)
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    assert_resumed(run)
    assert_same_curve(train_losses(run), train_losses(single))


def test_locked_run_fails_on_every_rank_without_hanging(reference, tmp_path):
    """Only rank 0 takes the run lock; when it cannot, every rank exits with its error (no deadlock)."""
    root, overrides, single = reference
    run = _copy_tokens(single, tmp_path / "locked")
    with run.lock():
        output = torchrun_train(overrides, run.root, ok=False)
    assert "in use by another kiln process" in output
    assert "rank 0 failed" in output  # what rank 1 reports



def test_truncated_shard_is_refused_on_every_rank(reference, tmp_path):
    """Under torchrun, rank 0 checks the inputs' file records too: a truncated shard stops every rank."""
    root, overrides, single = reference
    run = _copy_tokens(single, tmp_path / "truncated")
    shard = run.stage("tokens") / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    output = torchrun_train(overrides, run.root, ok=False)
    assert "train-00000.bin has" in output and "rank 0 failed" in output
    assert not (run.stage("train") / "manifest.json").exists()


def _objective_losses(reference_run: RunDir, out: Path, strategy: str, nproc: int) -> dict:
    """tests/dist_objectives.py (every objective in OBJECTIVES, and a KD objective with a frozen teacher) in
    one process or under torchrun; its JSON of per-objective losses."""
    script = [str(REPO / "tests" / "dist_objectives.py"), str(reference_run.root), str(out), strategy]
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    env = {**os.environ, "KILN_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "KILN_TEST_TEACHER": str(reference_run.stage("train"))}
    proc = subprocess.run([*launcher, *script], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def objectives_single(reference, tmp_path_factory):
    root, overrides, single = reference
    return _objective_losses(single, tmp_path_factory.mktemp("objectives") / "single.json", "single", 1)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_every_objective_on_two_ranks_matches_one_process(reference, objectives_single, tmp_path, strategy):
    """Every objective (clm_mlm and mixture leave heads unused in some steps, MLM an untied LM head: they
    crashed DDP with "Expected to have finished reduction") gives one process's per-step losses on 2 ranks,
    and a frozen teacher stays out of the optimizer, the wrapped module and the checkpoint, unchanged."""
    from kiln.objectives import OBJECTIVES

    root, overrides, single = reference
    got = _objective_losses(single, tmp_path / f"{strategy}.json", strategy, 2)
    assert set(got) == set(OBJECTIVES) | {"mlm_untied", "kd_test"}
    for name, want in objectives_single.items():
        if name == "kd_test":
            assert got[name]["checks"] == want["checks"]
            want, losses = want["losses"], got[name]["losses"]
        else:
            losses = got[name]
        assert len(want) == 4
        worst = max(abs(losses[s] - want[s]) / abs(want[s]) for s in want)
        assert worst <= 1e-5, (name, strategy, losses, want)
    checks = objectives_single["kd_test"]["checks"]
    assert not any(checks[k] for k in ("in_optimizer", "in_wrapped_module", "requires_grad", "training",
                                       "in_state_dict", "grad"))
    from kiln.model.load import load_model

    teacher = load_model(single.stage("train"))
    assert checks["digest"] == pytest.approx(float(sum(p.double().abs().sum() for p in teacher.parameters())),
                                             rel=1e-12)  # unchanged by training


@pytest.mark.slow
def test_callbacks_see_identical_state_on_every_ddp_rank(reference, tmp_path):
    """A recipe callback (``package.module:Class``) runs on both ranks and sees the same weights and the same
    synchronised gradients after backward and after each optimizer step."""
    root, overrides, single = reference
    run = _copy_tokens(single, tmp_path / "cb")
    out = tmp_path / "digests"
    torchrun_train([*overrides, "train.steps=4", "parallel.strategy=ddp",
                    f"train.callbacks=[{{name: 'tests.callback_probe:StateDigest', out: '{out}'}}]"], run.root)
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [r["point"] for r in rank0] == ["after_backward", "after_optimizer_step"] * 4
    assert rank0 == rank1
    assert all(r["grads"] is not None for r in rank0 if r["point"] == "after_backward")
