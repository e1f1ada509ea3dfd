"""Training throughput on CPU: kiln vs Hugging Face Llama and GPT-2 at a small shape, one process.

    python benchmarks/cpu_throughput.py [--compile] [--out DIR]

The same loop and rows as ``gpu_throughput.py`` (fp32, AdamW, full logits), at 4 layers x 256 wide,
4 heads, vocab 4096, 8 x 256 tokens per step; eager by default (``--compile`` adds the compiled
rows). Document masks use SDPA's boolean mask here: FlexAttention has no backward on CPU.
Needs ``pip install -e .[bench]`` (transformers) for the Hugging Face rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import CPU_SMALL, ROWS, SMOKE, run_suite, select_rows  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="also the torch.compile rows")
    ap.add_argument("--smoke", action="store_true", help="tiny shape, 1 + 2 steps")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--rows", default="", help="comma-separated row names, run in this order (default: all)")
    args = ap.parse_args(argv)
    if args.rows:
        rows = select_rows(args.rows)
    else:  # the +ac rows last
        rows = [r for r in ROWS if args.compile or not r[4]]
        rows = [r for r in rows if not r[3]] + [r for r in rows if r[3]]
    shape = SMOKE if args.smoke else CPU_SMALL
    if args.smoke:
        args.warmup, args.steps = 1, 2
    run_suite(shape, torch.device("cpu"), rows, args.warmup, args.steps, args.budget_s, args.out, "cpu_throughput")


if __name__ == "__main__":
    main()
