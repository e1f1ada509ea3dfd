"""Resources and concurrency: a full disk, a file-size limit, out-of-memory (test_faults_train.py), two runs."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import time
import uuid

import pytest

from kiln import atomic
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.faults_util import ROOT, artifact_hashes, kiln_cli, loss_curve, make_corpus, run_args, tiny_recipe


class _FullDisk:
    """A file object whose writes fail with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_in_an_atomic_write_leaves_nothing(tmp_path, monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: _FullDisk(real(*a, **k)))
    target = tmp_path / "manifest.json"
    with pytest.raises(atomic.WriteError, match=rf"could not write {target}: No space left on device; free disk"):
        atomic.write_json(target, {"complete": True})
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_a_staged_folder_leaves_nothing(tmp_path):
    with pytest.raises(OSError), atomic.staged_dir(tmp_path / "stage") as tmp:
        (tmp / "part.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("resources")
    corpus = make_corpus(base)
    run = RunDir(base / "clean")
    run_pipeline(tiny_recipe(corpus), run, until="train")
    return corpus, run


def _limit_file_size(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.slow
@pytest.mark.parametrize(("limit", "stage", "file", "built_first"),
                         [(60_000, "corpus", "corpus", None), (60_000, "tokens", "train-00000.bin", "tokenizer"),
                          (300_000, "train", "step-000010", None)])
def test_file_size_limit_is_a_clear_error_and_the_rerun_recovers(reference, tmp_path, limit, stage, file,
                                                                   built_first):
    """``built_first``: stages built without the limit, so the limit hits ``stage`` (the corpus stage's work
    files are larger than the tokens it leads to)."""
    corpus, clean = reference
    run = RunDir(tmp_path / "run")
    if built_first:
        run_pipeline(tiny_recipe(corpus), run, until=built_first)
    failed = kiln_cli(run_args(corpus, run.root), preexec_fn=_limit_file_size(limit))
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "could not write" in failed.stderr and file in failed.stderr and "free disk space" in failed.stderr
    assert run.manifest(stage) is None  # nothing marked complete
    if stage == "train":
        assert not (run.stage("train") / "checkpoints" / "step-000010").exists()
    run_pipeline(tiny_recipe(corpus), run, until="train")
    assert artifact_hashes(run) == artifact_hashes(clean)
    assert loss_curve(run) == loss_curve(clean)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_real_full_disk_on_a_1mb_tmpfs(reference, tiny_tmpfs):
    corpus, _ = reference
    run = RunDir(tiny_tmpfs / "run")
    with pytest.raises(atomic.WriteError, match="could not write .*No space left on device.*free disk space"):
        run_pipeline(tiny_recipe(corpus), run, until="train")
    assert run.manifest("train") is None
    for ckpt in (run.stage("train") / "checkpoints").glob("step-*"):  # any checkpoint present is whole
        assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "optimizer.pt", "trainer_state.json"}


@pytest.mark.slow
def test_second_kiln_run_on_the_same_run_dir_refuses(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "KILN_FAULT_POINT"}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    first = subprocess.Popen([os.sys.executable, "-m", "kiln", *run_args(corpus, run_dir, steps=2000)], env=env,
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = run_dir / ".lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "first run never took the lock"
            time.sleep(0.1)
        second = kiln_cli(run_args(corpus, run_dir))
        assert second.returncode == 2
        assert f"{run_dir} is in use by another kiln process" in " ".join(second.stderr.split())
        assert first.poll() is None  # the first run is undisturbed
    finally:
        first.kill()
        first.wait()
