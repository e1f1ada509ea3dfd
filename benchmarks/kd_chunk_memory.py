"""Peak memory and time of a KD step's loss with full logits vs chunked (``train.loss_chunk_tokens``).

    python benchmarks/kd_chunk_memory.py [--device cpu|cuda] [--tokens 4096] [--vocab 32768] [--chunk 1024]
                                         [--out DIR]

The real ``kd`` objective (alpha 0.5, T 2; Hinton et al. 2015) on one micro-batch: a 2-layer x 256 student and a
2-layer x 384 teacher over ``--tokens`` positions with a ``--vocab`` vocabulary, forward + backward of the loss.
``full`` forms both models' (positions x vocabulary) logits; ``chunked`` sets ``loss_chunk_tokens`` so the CE and
the KD term (``kiln/objectives/kd_loss.py``) form one chunk of logits at a time. Each row runs in its own
subprocess; the peak is the process's maximum resident set size above the state after building the models and
the batch (CPU), or ``torch.cuda.max_memory_allocated`` above the same point (CUDA). Time: the median of 3
timed steps after 1 warm-up. Prints a table and writes ``kd_chunk_memory.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_row(args: argparse.Namespace) -> dict:
    import torch

    from kiln.data.loader import Batch
    from kiln.model.config import TransformerConfig
    from kiln.objectives import build_objective

    device = torch.device(args.device)
    torch.manual_seed(0)
    rows, seq = args.tokens // 256, 256
    student = TransformerConfig(vocab_size=args.vocab, max_seq_len=seq, n_layer=2, n_head=4, d_model=256).build()
    teacher = TransformerConfig(vocab_size=args.vocab, max_seq_len=seq, n_layer=2, n_head=4, d_model=384).build()
    student, teacher = student.to(device), teacher.to(device)
    obj = build_objective("kd", teacher="in-memory", alpha=0.5, temperature=2.0)
    obj.configure(vocab_size=args.vocab, seq_len=seq, total_steps=10, seed=0)
    obj.add_frozen("teacher", teacher)
    obj.loss_chunk_tokens = args.chunk if args.row == "chunked" else None
    tokens = torch.randint(0, args.vocab, (rows, seq), generator=torch.Generator().manual_seed(0)).to(device)
    batch = Batch(tokens=tokens, segments=torch.zeros_like(tokens), attention="causal", n_tokens=rows * seq,
                  positions=torch.arange(seq, device=device).expand(rows, seq).clone())
    prepared = obj.prepare(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_mb()
    times, loss = [], 0.0
    for i in range(4):
        start = time.perf_counter()
        value, _ = obj.loss(student, prepared)
        (value / prepared.n_targets).backward()
        student.zero_grad(set_to_none=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
        loss = float(value / prepared.n_targets)
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda"
            else rss_mb() - base_rss)
    return {"row": args.row, "peak_mb": peak, "ms": 1000 * statistics.median(times), "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:  # the child: one row, its result as JSON on stdout
        print(json.dumps(one_row(args)))
        return
    results = []
    for row in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--row", row, "--device", args.device, "--tokens", str(args.tokens),
               "--vocab", str(args.vocab), "--chunk", str(args.chunk)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    full, chunked = results
    print(f"KD loss, {args.tokens} positions, vocab {args.vocab}, chunk {args.chunk}, {args.device}")
    print("| row | peak above inputs (MB) | ms (fwd+bwd) | loss |")
    print("| --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['row']} | {r['peak_mb']:.0f} | {r['ms']:.0f} | {r['loss']:.6f} |")
    print(f"chunked / full: memory {chunked['peak_mb'] / max(full['peak_mb'], 1e-9):.2f}x, "
          f"time {chunked['ms'] / full['ms']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "tokens": args.tokens,
            "vocab": args.vocab, "chunk": args.chunk, "device": args.device}
    (args.out / "kd_chunk_memory.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
