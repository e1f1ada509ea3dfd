"""Kill anywhere: SIGKILL `kiln run` at seeded random points of every stage, rerun, compare with a clean run.

``KILN_FAULT_POINT=name:count`` (kiln/faults.py) makes the count-th pass through a named point kill the
process. A clean in-process run counts how often each point is passed; each case kills a subprocess at a
seeded random pass, checks it really died of SIGKILL, reruns the pipeline to completion, and compares the
content hashes of every artifact and the whole loss curve with the clean run.
"""

from __future__ import annotations

import random
import signal

import pytest

from kiln import faults
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.faults_util import artifact_hashes, kiln_cli, loss_curve, make_corpus, metric_rows, run_args, tiny_recipe

SEED = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    corpus = make_corpus(base)
    run = RunDir(base / "clean")
    mp = pytest.MonkeyPatch()
    mp.setenv(faults.ENV, "count-only:0")
    faults._calls.clear()
    try:
        run_pipeline(tiny_recipe(corpus), run, until="train")
        passes = dict(faults._calls)
    finally:
        mp.undo()
        faults._calls.clear()
    return corpus, run, passes


def cases() -> list[tuple[str, str, int | None]]:
    """(label, point, fixed count or None for a seeded random pass); several per stage."""
    return [
        ("corpus-parquet", "atomic_rename", 3),  # recipe.yaml is pass 1, then removed/train/val parquet
        ("corpus-folder", "staged_dir_rename", 1),
        ("tokens-shard", "shard_close", None),
        ("train-step", "train_step", None),
        ("train-step-after-ckpt", "train_step", 13),
        ("checkpoint-assembly", "checkpoint", None),
        ("checkpoint-rename", "staged_dir_rename", None),
        ("any-file-write", "atomic_rename", None),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("label", "point", "count"), cases(), ids=[c[0] for c in cases()])
def test_kill_anywhere_then_rerun_gives_identical_results(reference, tmp_path, label, point, count):
    corpus, clean, passes = reference
    assert passes.get(point, 0) >= 1, f"point {point} never passed in a clean run: {passes}"
    n = count or random.Random(f"{SEED}:{label}").randint(1, passes[point])
    run_dir = tmp_path / "run"
    killed = kiln_cli(run_args(corpus, run_dir), env={faults.ENV: f"{point}:{n}"})
    assert killed.returncode == -signal.SIGKILL, (label, n, killed.returncode, killed.stderr[-2000:])
    run = RunDir(run_dir)
    if label == "train-step":  # one rerun through the command line, the others in-process (faster)
        rerun = kiln_cli(run_args(corpus, run_dir))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    else:
        run_pipeline(tiny_recipe(corpus), run, until="train")
    assert artifact_hashes(run) == artifact_hashes(clean), (label, n)
    assert loss_curve(run) == loss_curve(clean), (label, n)
    assert [r["step"] for r in metric_rows(run, "val")] == [r["step"] for r in metric_rows(clean, "val")]
    assert not [p for p in run.root.rglob("*.tmp")], "stale temporaries left behind"
