"""Masked-training overhead: step time of SPDF static masks and gradual magnitude pruning vs dense training.

    python benchmarks/sparsity_overhead.py [--d-model 128] [--layers 2] [--seq 128] [--batch 8] [--steps 5]
                                           [--rounds 3] [--threads 2] [--device cpu] [--out FILE]

Three copies of one model (same init, same batches) train with AdamW in the same process, their steps
interleaved round by round so machine load hits all of them alike:

- ``dense``: forward, backward, optimizer step;
- ``spdf``: the same plus kiln's ``spdf`` callback (kiln/train/sparsity.py) at 75%: gradients masked after
  backward, weights re-masked after the step (the masks are dense bool tensors: unstructured sparsity saves no
  time on dense kernels, this measures what the masking costs);
- ``gmp``: gradual magnitude pruning with a mask update after every step (the ramp of the Journey schedule;
  each update sorts every targeted matrix), the worst case of the schedule: updates every ``every`` steps cost
  1/``every`` of that.

Prints ms/step (median over rounds) and the ratios to dense; writes them as JSON to ``--out`` if given. Both
variants are timed in the same run as their dense baseline, so the ratio is the number to compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kiln.model.config import TransformerConfig  # noqa: E402
from kiln.train.callbacks import TrainState  # noqa: E402
from kiln.train.sparsity import GradualPruning, StaticMask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = TransformerConfig(vocab_size=args.vocab, max_seq_len=args.seq, n_layer=args.layers,
                            n_head=max(args.d_model // 64, 1), d_model=args.d_model)
    base = cfg.build().to(device)
    total = (args.rounds + 1) * args.steps
    variants = {"dense": None, "spdf": StaticMask(0.75),
                "gmp": GradualPruning(0.75, start=0.0, end=1.0)}  # ramping for the whole run: an update per step
    runs = {}
    for name, cb in variants.items():
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        state = TrainState(0, model, opt, SimpleNamespace(total_steps=total))
        if cb is not None:
            cb.on_train_begin(state)
        runs[name] = (model, opt, state, cb)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen).to(device)
               for _ in range(4)]

    def step(name: str, i: int) -> None:
        model, opt, state, cb = runs[name]
        tokens = batches[i % len(batches)]
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        if cb is not None:
            cb.after_backward(state)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        if cb is not None:
            cb.after_optimizer_step(state)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name in runs:  # warm-up round (not timed)
        for i in range(args.steps):
            step(name, i)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name in runs:
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(name, i)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    ms = {name: statistics.median(v) for name, v in times.items()}
    result = {"config": vars(args) | {"out": str(args.out) if args.out else None}, "params": base.num_params(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "ms_per_step": ms, "ratio_to_dense": {n: ms[n] / ms["dense"] for n in ms},
              "final_sparsity": {n: runs[n][2].metrics.get("sparsity") for n in runs if runs[n][3] is not None}}
    for name in runs:
        print(f"{name:6s} {ms[name]:8.1f} ms/step  x{ms[name] / ms['dense']:.3f} of dense")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
