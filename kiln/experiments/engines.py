"""How a sweep's runs are launched and awaited: ``--executor local | ray | slurm``.

A run is one shell command (``python -m kiln run <run>/recipe.yaml --run-dir <run>``) whose output goes to a log
file; the engines differ only in where it runs and how its exit code comes back:

- ``local``: a child process of this one (``--jobs N`` at a time; in this process group, so killing the sweep's
  group kills its runs).
- ``ray``: each run a Ray task (``num_cpus`` = ``cpus_per_run``, default 1) on an existing cluster,
  ``ray.init(address=...)`` from ``--executor-arg address=HOST:PORT`` (none: a local Ray), running the command
  with the driver's Python; nodes must share the filesystem holding the runs and the Python environment.
- ``slurm``: one ``sbatch`` script per run (``#SBATCH --KEY=VALUE`` from every ``--executor-arg``, e.g.
  ``partition=cpu time=02:00:00 cpus-per-task=4``); the script writes the command's exit code next to the log,
  which this process polls (a job Slurm removes without one, e.g. past its time limit, is reported failed once
  ``squeue`` no longer lists it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

FORWARDED_ENV = ("KILN_", "HF_", "PYTHONPATH", "OMP_NUM_THREADS", "TMPDIR", "CUDA_VISIBLE_DEVICES")


class Engine(Protocol):
    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> Any: ...
    def poll(self, handle: Any) -> int | None: ...  # exit code, or None while running
    def close(self) -> None: ...


def forwarded_env(extra: dict[str, str]) -> dict[str, str]:
    """kiln's and Hugging Face's variables of this process plus ``extra``: what a remote run must see."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return {**env, **extra}


def _header(log: Path, cmd: list[str]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")


def _die_with_parent() -> None:
    """In a local run's child (Linux): SIGTERM it when the sweep process dies, even by SIGKILL, so no orphan
    keeps training and holding its run's lock; it resumes from its checkpoint on the next ``kiln ablate``."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalEngine:
    """Child processes of this one."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        _header(log, cmd)
        with open(log, "a") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                 stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def poll(self, handle: subprocess.Popen) -> int | None:
        return handle.poll()

    def close(self) -> None:
        """Stop runs still going (an interrupted sweep; they resume from their checkpoints on the next call)."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def run_command(cmd: list[str], log: str, env: dict[str, str], cwd: str) -> int:
    """Run ``cmd`` with its output appended to ``log``; the exit code (a Ray task's body)."""
    with open(log, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd,
                              stdin=subprocess.DEVNULL).returncode


class RayEngine:
    """Each run a Ray task on an existing cluster (``address``) or a local Ray started here."""

    def __init__(self, args: dict[str, str]) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs Ray: pip install 'ray>=2'") from None
        self.ray = ray
        self.owned = not ray.is_initialized()
        if self.owned:
            kw: dict[str, Any] = {"address": args["address"]} if "address" in args else {}
            if "num_cpus" in args and "address" not in args:
                kw["num_cpus"] = int(args["num_cpus"])
            ray.init(log_to_driver=False, **kw)
        self.task = ray.remote(num_cpus=float(args.get("cpus_per_run", 1)), max_retries=0)(run_command)

    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> Any:
        _header(log, cmd)
        return self.task.remote(cmd, str(log.absolute()), forwarded_env(env), os.getcwd())

    def poll(self, handle: Any) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(handle))
        except Exception as exc:  # the task itself died (node lost, worker killed)
            raise RuntimeError(f"ray task failed: {exc}") from None

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()


class SlurmEngine:
    """One ``sbatch`` script per run; the exit code comes back as ``<log>.rc``."""

    def __init__(self, args: dict[str, str], queue_check_s: float = 60.0) -> None:
        if shutil.which("sbatch") is None:
            raise RuntimeError("--executor slurm: sbatch is not on PATH")
        self.args = args
        self.queue_check_s = queue_check_s
        self.jobs: dict[Path, tuple[str, float]] = {}

    def script(self, cmd: list[str], log: Path, env: dict[str, str]) -> str:
        rc = log.with_suffix(".rc")
        lines = ["#!/bin/bash", f"#SBATCH --job-name={log.parent.parent.name}-{log.parent.name}-{log.stem}",
                 f"#SBATCH --output={log.absolute()}", "#SBATCH --open-mode=append",
                 *[f"#SBATCH --{k}={v}" for k, v in self.args.items()],
                 f"cd {shlex.quote(os.getcwd())}",
                 *[f"export {k}={shlex.quote(v)}" for k, v in forwarded_env(env).items()],
                 shlex.join(cmd),
                 f"echo $? > {shlex.quote(str(rc.absolute()))}.tmp && mv {shlex.quote(str(rc.absolute()))}.tmp "
                 f"{shlex.quote(str(rc.absolute()))}"]
        return "\n".join(lines) + "\n"

    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> Path:
        _header(log, cmd)
        rc = log.with_suffix(".rc")
        rc.unlink(missing_ok=True)
        path = log.with_suffix(".sbatch")
        path.write_text(self.script(cmd, log, env))
        done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {path} failed: {(done.stderr or done.stdout).strip()}")
        job = done.stdout.strip().split()[-1] if done.stdout.strip() else "?"
        self.jobs[rc] = (job, time.monotonic())
        return rc

    def poll(self, rc: Path) -> int | None:
        if rc.is_file():
            text = rc.read_text().strip()
            return int(text) if text.lstrip("-").isdigit() else 1
        job, since = self.jobs[rc]
        if time.monotonic() - since > self.queue_check_s and shutil.which("squeue") and job.isdigit():
            self.jobs[rc] = (job, time.monotonic())
            q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
            if q.returncode == 0 and not q.stdout.strip() and not rc.is_file():
                raise RuntimeError(f"slurm job {job} left the queue without an exit code (time limit, node failure?)")
        return None

    def close(self) -> None:
        pass


def make_engine(executor: str, args: dict[str, str]) -> Engine:
    if executor == "local":
        return LocalEngine()
    if executor == "ray":
        return RayEngine(args)
    if executor == "slurm":
        return SlurmEngine(args)
    raise ValueError(f"--executor {executor}: unknown; use local, ray or slurm")
