"""Mixture-of-experts training-step time vs a dense model at equal active parameters, in one process.

Models (same attention, embeddings and depth; ``--d-model``, ``--layers``, dense SwiGLU width ``--hidden``):

- ``dense``: the SwiGLU MLP of width H in every layer;
- ``moe_top1``: ``--experts`` experts of width H, top-1 (the same active MLP parameters per token, E x total);
- ``moe_top2``: ``--experts`` experts of width H / 2, top-2 (the same active MLP parameters per token).

A step = forward, causal-LM loss + the MoE auxiliary losses (weights 0.01 / 0.001, as ``moe_aux``), backward,
AdamW step, on random tokens (``--batch`` x ``--seq``). The models' steps are interleaved (round-robin, after
``--warmup`` untimed steps each) so load on the machine hits them alike; reported: median seconds per step, and
each MoE model's median ratio to dense. On CUDA (``--device cuda``) steps are synchronised before timing.

    python benchmarks/moe_step.py --out moe_step.json
    python benchmarks/moe_step.py --device cuda --d-model 512 --layers 8 --hidden 1408 --batch 16 --seq 512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.model.config import TransformerConfig  # noqa: E402
from kiln.model.moe import moe_layers  # noqa: E402


def build(args: argparse.Namespace, moe: dict | None) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=args.vocab, max_seq_len=args.seq, n_layer=args.layers,
                            n_head=args.heads, d_model=args.d_model, ffn_hidden=args.hidden, moe=moe,
                            attention_backend="sdpa")
    return cfg.build().to(args.device)


def step_fn(model: torch.nn.Module, tokens: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    layers = moe_layers(model)

    def step() -> float:
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        if layers:
            loss = loss + 0.01 * torch.stack([m.stats.balance for m in layers]).mean() \
                + 0.001 * torch.stack([m.stats.z for m in layers]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def timed(step, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=384, help="dense SwiGLU width H (even)")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    E, H = args.experts, args.hidden
    variants = {
        "dense": None,
        "moe_top1": {"n_experts": E, "top_k": 1, "expert_hidden": H},
        "moe_top2": {"n_experts": E, "top_k": 2, "expert_hidden": H // 2},
    }
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(args.device)
    models = {name: build(args, moe) for name, moe in variants.items()}
    steps = {name: step_fn(m, tokens) for name, m in models.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            times[name].append(timed(step, args.device))
    dense = times["dense"]
    rows = {}
    for name, ts in times.items():
        n_params = sum(p.numel() for p in models[name].parameters())
        rows[name] = {"median_s": statistics.median(ts), "params": n_params,
                      "ratio_vs_dense": statistics.median(t / d for t, d in zip(ts, dense, strict=True))}
    result = {"device": args.device, "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "config": {k: v for k, v in vars(args).items() if k != "out"},
              "rows": rows}
    for name, r in rows.items():
        print(f"{name:9s} {r['median_s'] * 1e3:8.1f} ms/step  x{r['ratio_vs_dense']:.2f} vs dense  "
              f"{r['params'] / 1e6:.2f}M params")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
