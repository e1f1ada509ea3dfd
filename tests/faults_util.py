"""Shared helpers for the reliability suite: a prepared tiny run, hashes, subprocess runs of `kiln`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kiln.recipe import Recipe, load_recipe
from kiln.run import RunDir
from tests.synthetic import tiny_overrides, write_jsonl_corpus

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ("corpus/train-00000.parquet", "corpus/val-00000.parquet",
             "tokenizer/tokenizer.json", "tokenizer/token_bytes.npy",
             "tokens/train-00000.bin", "tokens/train-00000.idx.npy", "tokens/val-00000.bin")


def tiny_recipe(corpus: Path, *extra: str, steps: int = 20) -> Recipe:
    return load_recipe("demo", [*tiny_overrides(corpus, steps=steps), *extra])


def sha(path: Path) -> str:
    """Content hash of a file; of a .safetensors file, of its tensors (its header's metadata order is not
    deterministic across processes: safetensors keeps it in a Rust HashMap)."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{array.dtype}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def artifact_hashes(run: RunDir, final_step: int = 20) -> dict[str, str]:
    names = [*ARTIFACTS, f"train/checkpoints/step-{final_step:06d}/model.safetensors"]
    return {n: sha(run.root / n) for n in names}


def metric_rows(run: RunDir, kind: str) -> list[dict]:
    return [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["kind"] == kind]


def loss_curve(run: RunDir) -> list[tuple[int, float, int]]:
    return [(r["step"], r["loss"], r["tokens"]) for r in metric_rows(run, "train")]


def copy_run(src: RunDir, dst: Path) -> RunDir:
    shutil.copytree(src.root, dst)
    return RunDir(dst)


def kiln_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120,
             **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m kiln ARGS`` in a fresh process (captured output, no KILN_FAULT_POINT unless given)."""
    full_env = {k: v for k, v in os.environ.items() if k != "KILN_FAULT_POINT"}
    full_env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kwargs)


def run_args(corpus: Path, run_dir: Path, *extra: str, until: str = "train", steps: int = 20) -> list[str]:
    return ["run", "demo", *tiny_overrides(corpus, steps=steps), *extra, "--run-dir", str(run_dir), "--until", until]


def make_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_jsonl_corpus(folder / "docs.jsonl")
