"""Depth up-scaling effect: a grown model vs a fresh deep model at equal extra training tokens.

Papers: "Yi: Open Foundation Models", 01.AI (Young et al.), 2024, arXiv:2403.04652 (depth up-scaling by
duplicating middle layers, then continued pretraining); "SOLAR 10.7B", Kim et al., 2023, arXiv:2312.15166.

Per seed, on the ``grow-base`` recipe (4 layers x d128, Shakespeare, 2048 tokens/step, WSD):

1. ``parent``: the 4-layer model trained ``--parent-steps`` N steps;
2. ``kiln grow parent --duplicate 1:3`` -> a 6-layer checkpoint (layers 1, 2 repeated after layer 2);
3. ``grown``: 6 layers, ``train.init_from`` the grown checkpoint, ``--extra-steps`` M steps (fresh AdamW
   moments and a fresh warm-up + WSD schedule);
4. ``fresh``: 6 layers from a random init, M steps (the same extra tokens, the same schedule);
5. ``parent+M``: the 4-layer parent continued M steps the same way (does growing beat not growing?);
6. with ``--long``: ``fresh-long``, 6 layers from random init for N + M steps (the same total tokens as the
   parent + grown pair).

The sweep format cannot say "init_from the grown checkpoint of another variant's run", hence this driver. It
prints validation bits per byte (train.eval_sequences rows, every ``--eval-every`` steps) against the extra
tokens since the branch point, the mean over seeds, and each run's wall time; ``--out`` writes it all as JSON.
Runs live under ``--root`` (rerunning reuses finished stages: corpus, tokenizer and tokens are built once).

    python benchmarks/grow_effect.py --seeds 2 --long --out grow_effect.json      # the version to record
    python benchmarks/grow_effect.py --seeds 1 --parent-steps 150 --extra-steps 100 --eval-every 25

Cost on one core of a loaded 2-core CPU machine (load ~9): ~1.4 s/step for 4 layers, ~1.8 s/step for 6; the
defaults take ~25 min per seed (+15 min with --long); the shorter line above took 12 min (+8 min with --long).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kiln(args: list[str], log: Path) -> float:
    """Run ``python -m kiln ARGS`` (output to ``log``); its wall seconds, or exit naming the log."""
    start = time.perf_counter()
    env = {**os.environ, "KILN_QUIET": os.environ.get("KILN_QUIET", "1")}
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "kiln", *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env=env)
    if proc.returncode:
        sys.exit(f"kiln {' '.join(args[:3])} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def val_curve(run: Path) -> dict[int, float]:
    """step -> val_bpb of a run's validation rows."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_bpb"] for r in rows if r["kind"] == "val"}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    n, m = args.parent_steps, args.extra_steps
    common = [f"train.seed={seed}", f"train.eval_every={args.eval_every}", f"train.threads={args.threads}",
              f"train.checkpoint_every={max(n, m) * 2}", *args.override]
    out: dict = {"seed": seed, "runs": {}}

    def train(name: str, extra: list[str]) -> Path:
        run = root / f"{name}-s{seed}"
        kiln(["train", args.recipe, *common, *extra, "--run-dir", str(run)], root / f"{name}-s{seed}.log")
        secs = json.loads((run / "train" / "manifest.json").read_text())["seconds"]  # also when reused on rerun
        out["runs"][name] = {"run": str(run), "seconds": round(secs, 1), "val_bpb": val_curve(run)}
        print(f"seed {seed}: {name} trained in {secs:.0f}s", file=sys.stderr, flush=True)
        return run

    parent = train("parent", [f"train.steps={n}"])
    grown_ckpt = root / f"parent-s{seed}-grown"
    secs = kiln(["grow", str(parent), "--out", str(grown_ckpt), "--duplicate", args.duplicate, "--force"],
                root / f"grow-s{seed}.log")
    out["grow_seconds"] = round(secs, 1)
    depth = json.loads((grown_ckpt / "config.json").read_text())["n_layer"]
    out["grown_n_layer"] = depth
    train("grown", [f"train.steps={m}", f"model.n_layer={depth}", f"train.init_from={grown_ckpt}"])
    train("fresh", [f"train.steps={m}", f"model.n_layer={depth}"])
    train("parent+M", [f"train.steps={m}", f"train.init_from={parent}"])
    if args.long:
        train("fresh-long", [f"train.steps={n + m}", f"model.n_layer={depth}"])
    return out


def table(results: list[dict], args: argparse.Namespace) -> str:
    """Markdown: val_bpb (mean over seeds) by extra tokens since the branch point; fresh-long at N + k."""
    tok = args.batch_tokens
    n = args.parent_steps
    names = ["grown", "fresh", "parent+M"] + (["fresh-long"] if args.long else [])
    steps = sorted({int(s) for r in results for s in r["runs"]["grown"]["val_bpb"]})
    lines = [f"parent ({n} steps, {n * tok:,} tokens) final val_bpb: "
             + ", ".join(f"{r['runs']['parent']['val_bpb'][max(r['runs']['parent']['val_bpb'])]:.4f}"
                         for r in results),
             "", "| extra tokens | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s in steps:
        cells = []
        for name in names:
            at = s + n if name == "fresh-long" else s  # fresh-long: at the same total tokens as the grown run
            vals = [r["runs"][name]["val_bpb"].get(at) for r in results]
            vals = [v for v in vals if v is not None]
            cells.append(f"{statistics.mean(vals):.4f}" if vals else "")
        lines.append(f"| {s * tok:,} | " + " | ".join(cells) + " |")
    secs = {name: statistics.mean(r["runs"][name]["seconds"] for r in results) for name in ["parent", *names]}
    lines += ["", "train-stage seconds per run (mean over seeds): "
              + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/grow-effect", help="folder for the runs (reused when rerun)")
    ap.add_argument("--recipe", default="grow-base", help="base recipe (4-layer parent)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--parent-steps", type=int, default=300)
    ap.add_argument("--extra-steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--duplicate", default="1:3", help="kiln grow --duplicate a:b")
    ap.add_argument("--batch-tokens", type=int, default=2048, help="the recipe's train.batch_tokens (for the table)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--long", action="store_true", help="also a fresh deep model for parent + extra steps")
    ap.add_argument("--override", action="append", default=[], help="extra recipe override for every run")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    results = [run_seed(args, seed) for seed in range(args.seeds)]
    print(table(results, args))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
