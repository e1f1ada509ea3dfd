"""Teacher forward cost: training step time with a frozen teacher (KD, self-distillation) vs without (plain CE).

    python benchmarks/teacher_cost.py [--device cpu|cuda] [--steps 8] [--warmup 2] [--threads N] [--out DIR]

One student (4 layers x 128 wide, 4 heads, vocab 2048, 8 rows x 256 tokens per step, fp32, AdamW, full logits)
trained by the real objectives (``kiln.objectives``) in a plain loop; the teacher is a kiln model held as the
objective's frozen module (no gradients, not in the optimizer). Rows:

- ``ce``: plain causal LM (the baseline);
- ``kd_same``: KD (alpha 0.5, T 2) from a teacher of the student's shape;
- ``kd_2x``: KD from a teacher twice as wide and twice as deep (about 8x the student's non-embedding FLOPs);
- ``salt_after``: SALT after its KD phase (should cost what ``ce`` costs: the teacher is no longer run);
- ``self_distill``: CE + hidden-state MSE to a same-shape teacher;
- ``minilm``: CE + last-layer attention / value-relation KL to a same-shape teacher (both forwards in the eager
  attention backend, which returns the attention maps).

Rows run interleaved, step by step, so load drift on a shared machine hits them alike. Prints the median step
time of each row and its ratio to ``ce``; writes ``teacher_cost.json`` under ``--out``.
Hinton et al. 2015 (arXiv:1503.02531); Rawat et al. 2024 (SALT, arXiv:2410.18779).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.objectives import build_objective

VOCAB, SEQ, ROWS = 2048, 256, 8
STUDENT = {"n_layer": 4, "n_head": 4, "d_model": 128}
TEACHER_2X = {"n_layer": 8, "n_head": 4, "d_model": 256}


def model(shape: dict, seed: int, device: torch.device):
    torch.manual_seed(seed)
    return TransformerConfig(vocab_size=VOCAB, max_seq_len=SEQ, **shape).build().to(device)


def batch(step: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, VOCAB, (ROWS, SEQ), generator=gen)
    return Batch(tokens=tokens.to(device), segments=torch.zeros_like(tokens).to(device),
                 positions=torch.arange(SEQ).expand(ROWS, SEQ).clone().to(device), attention="causal",
                 n_tokens=ROWS * SEQ)


def objective(row: str, device: torch.device):
    if row == "ce":
        return build_objective("clm"), None
    if row == "salt_after":
        obj, shape = build_objective("salt", teacher="in-memory", kd_steps=0, alpha=0.667), STUDENT
    elif row == "self_distill":
        obj, shape = build_objective("self_distill", teacher="in-memory"), STUDENT
    elif row == "minilm":
        obj, shape = build_objective("minilm", teacher="in-memory", ce_weight=1.0), STUDENT
    else:
        obj = build_objective("kd", teacher="in-memory", alpha=0.5, temperature=2.0)
        shape = STUDENT if row == "kd_same" else TEACHER_2X
    teacher = model(shape, 1, device)
    obj.add_frozen("teacher", teacher)
    return obj, teacher


class Row:
    """One row's student, objective and optimizer, stepped one step at a time."""

    def __init__(self, row: str, device: torch.device, total: int) -> None:
        self.row, self.device, self.times = row, device, []
        self.student = model(STUDENT, 0, device)
        self.obj, self.teacher = objective(row, device)
        self.obj.configure(vocab_size=VOCAB, seq_len=SEQ, total_steps=total, seed=0)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-3)

    def step(self, step: int, timed: bool) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        self.obj.begin_step(step)
        p = self.obj.prepare(batch(step, self.device))
        loss, _ = self.obj.loss(self.student, p)
        self.opt.zero_grad(set_to_none=True)
        (loss / p.n_targets).backward()
        self.opt.step()
        sync()
        if timed:
            self.times.append(time.perf_counter() - start)

    def result(self) -> dict:
        return {"row": self.row, "median_s": statistics.median(self.times), "steps": len(self.times),
                "teacher_params": sum(q.numel() for q in self.teacher.parameters()) if self.teacher else 0,
                "student_params": sum(q.numel() for q in self.student.parameters())}


def time_rows(rows: list[str], device: torch.device, steps: int, warmup: int) -> list[dict]:
    """Rows interleaved step by step (every row's step s, then every row's step s + 1), so a machine whose load
    drifts during the benchmark slows every row alike; the median step time of each."""
    states = [Row(r, device, steps + warmup) for r in rows]
    for step in range(warmup + steps):
        for state in states:
            state.step(step, timed=step >= warmup)
    return [state.result() for state in states]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--rows", default="ce,kd_same,kd_2x,salt_after,self_distill,minilm")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = time_rows(args.rows.split(","), device, args.steps, args.warmup)
    base = next((r["median_s"] for r in results if r["row"] == "ce"), None)
    print(f"{'row':14s} {'step s':>9s} {'vs ce':>7s} {'teacher params':>15s}")
    for r in results:
        r["ratio_vs_ce"] = r["median_s"] / base if base else None
        ratio = f"{r['ratio_vs_ce']:.2f}x" if base else "-"
        print(f"{r['row']:14s} {r['median_s']:9.4f} {ratio:>7s} {r['teacher_params']:15,d}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "machine": platform.machine(), "shape": {"student": STUDENT, "teacher_2x": TEACHER_2X,
                                                         "vocab": VOCAB, "seq": SEQ, "rows": ROWS}}
        (args.out / "teacher_cost.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
