"""CLM vs MLM vs ELECTRA vs UL2 vs CLM->MLM at equal training tokens on Shakespeare (both editions).

The comparison is the sweep ``recipes/sweeps/objectives.yaml`` (5 objectives x 2 seeds, one shared corpus,
tokenizer and token shards); this script runs it with ``kiln ablate`` and prints the comparison table
(mean ± std over seeds, difference to CLM with a 95% interval):

    kiln ablate recipes/sweeps/objectives.yaml              # the same, directly (~30 min on 2 idle CPU cores)
    python benchmarks/objective_comparison.py
    python benchmarks/objective_comparison.py --steps 20 --seeds 1   # a smoke run (its own sweep name)

``--steps N`` runs a copy of the sweep file with ``train.steps`` (and the warm-up, eval and checkpoint
intervals) scaled to N, named ``objectives-stepsN``, so it never mixes with the full sweep's runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SWEEP = Path(__file__).resolve().parents[1] / "kiln" / "recipes" / "sweeps" / "objectives.yaml"


def sweep_file(steps: int | None, folder: Path) -> Path:
    """The sweep file, or a copy of it at ``steps`` training steps (written into ``folder``)."""
    if steps is None:
        return SWEEP
    tree = yaml.safe_load(SWEEP.read_text(encoding="utf-8"))
    tree["name"] = f"{tree['name']}-steps{steps}"
    tree["overrides"].update({"train.steps": steps, "train.warmup_steps": max(1, steps // 20),
                              "train.eval_every": steps, "train.checkpoint_every": steps})
    path = folder / f"{tree['name']}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: the sweep file's)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per objective (default: the sweep file's, 2)")
    ap.add_argument("--root", type=Path, default=Path("runs"), help="folder holding the sweep")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (set train.threads = cores / jobs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = sweep_file(args.steps, Path(tmp))
        name = yaml.safe_load(path.read_text(encoding="utf-8"))["name"]
        cmd = [sys.executable, "-m", "kiln", "ablate", str(path), "--root", str(args.root), "--jobs", str(args.jobs)]
        if args.seeds:
            cmd += ["--seeds", str(args.seeds)]
        code = subprocess.call(cmd)
    report = args.root / name / "report" / "report.md"
    if report.exists():
        print(report.read_text(encoding="utf-8"))
    sys.exit(code)


if __name__ == "__main__":
    main()
