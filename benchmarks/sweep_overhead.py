"""Sweep overhead: the same runs by hand (``kiln run`` one after another) versus ``kiln ablate``.

    python benchmarks/sweep_overhead.py [--variants 4] [--seeds 2] [--docs 400] [--steps 12] [--out DIR]

One tiny recipe (the demo recipe on a synthetic JSONL corpus, 1-layer model), ``--variants`` learning rates x
``--seeds`` seeds, timed four ways, each in a fresh folder:

1. by hand, stage store off (``KILN_STAGE_CACHE=off``): every run builds its own corpus, tokenizer and tokens;
2. by hand, one shared stage store: the first run builds them, the others reuse them;
3. ``kiln ablate SWEEP.yaml`` (``--jobs 1``): the same runs as (2), plus scheduling, sweep.json and the report;
4. ``kiln ablate`` again on the finished sweep: pure bookkeeping (fingerprints checked, nothing launched).

Prints the wall times, ablate / by-hand ratios and the per-run overhead, and writes ``sweep_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.synthetic import tiny_overrides, write_jsonl_corpus  # noqa: E402


def overrides(corpus: Path, steps: int) -> list[str]:
    return [*tiny_overrides(corpus, steps=steps), "model.n_layer=1", "train.checkpoint_every=1000",
            "eval.max_sequences=8", "report.samples=0"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "KILN_QUIET": "1", "HF_HUB_OFFLINE": "1", **env},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - t0


def by_hand(root: Path, ovs: list[str], lrs: list[float], seeds: int, store: bool) -> float:
    env = {"KILN_STAGE_CACHE": str(root / ".store") if store else "off"}
    total = 0.0
    for i, lr in enumerate(lrs):
        for s in range(seeds):
            total += timed([sys.executable, "-m", "kiln", "run", "demo", *ovs, f"train.lr={lr}", f"train.seed={s}",
                            f"name=v{i}-s{s}", "--run-dir", str(root / f"v{i}" / f"seed-{s}")], env)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    corpus = write_jsonl_corpus(work / "docs.jsonl", n_docs=args.docs)
    ovs = overrides(corpus, args.steps)
    lrs = [round(0.001 * 2**i, 6) for i in range(args.variants)]
    n = args.variants * args.seeds
    sweep = work / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "overhead", "base": "demo", "seeds": args.seeds,
        "overrides": {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in ovs},
        "variants": {f"v{i}": {"train.lr": lr} for i, lr in enumerate(lrs)}}, sort_keys=False))
    ablate = [sys.executable, "-m", "kiln", "ablate", str(sweep), "--root", str(work / "ablate")]
    res = {"runs": n, "variants": args.variants, "seeds": args.seeds, "docs": args.docs, "steps": args.steps,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    res["by_hand_store_off_s"] = by_hand(work / "hand-off", ovs, lrs, args.seeds, store=False)
    res["by_hand_store_on_s"] = by_hand(work / "hand-on", ovs, lrs, args.seeds, store=True)
    res["ablate_s"] = timed(ablate, {})
    res["ablate_rerun_s"] = timed(ablate, {})
    res["ratio_vs_store_off"] = res["ablate_s"] / res["by_hand_store_off_s"]
    res["ratio_vs_store_on"] = res["ablate_s"] / res["by_hand_store_on_s"]
    res["overhead_per_run_s"] = (res["ablate_s"] - res["by_hand_store_on_s"]) / n
    for k, v in res.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_overhead.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
