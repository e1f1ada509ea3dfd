"""ProX with a learned program generator vs the rule generator vs keeping everything, on held-out planted noise.

Clean documents are the interpreter's pydocs (``kiln.corpus.pydocs``) that the rule generator leaves alone
(:func:`kiln.corpus.prox.pairs.clean_documents`); the first ``--train-docs`` get noise planted with seed 0 and
become (chunk, program) pairs, the last ``--test-docs`` (disjoint) get noise planted with seed 1. A generator
is trained (:func:`kiln.train.prox_generator.train_generator`) and every generator's programs run through the
ProX executor; the removed lines are scored against the planted ones (micro precision / recall / F1), with
the recall per noise kind.

    python benchmarks/prox_learned.py --steps 300 --out prox_learned.json
    python benchmarks/prox_learned.py --steps 1500 --save runs/prox-gen   # keep the generator for a recipe
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict

from kiln.corpus.prox.generator import RuleBasedGenerator
from kiln.corpus.prox.learned import LearnedConfig, LearnedGenerator
from kiln.corpus.prox.pairs import clean_documents, make_pairs, recall_by_kind, score_generator
from kiln.corpus.pydocs import read_pydocs
from kiln.train.prox_generator import train_generator

D = LearnedConfig()  # the defaults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-docs", type=int, default=400)
    ap.add_argument("--test-docs", type=int, default=80)
    ap.add_argument("--steps", type=int, default=D.steps)
    ap.add_argument("--batch-size", type=int, default=D.batch_size)
    ap.add_argument("--lr", type=float, default=D.lr)
    ap.add_argument("--d-model", type=int, default=D.d_model)
    ap.add_argument("--n-layer", type=int, default=D.n_layer)
    ap.add_argument("--n-head", type=int, default=D.n_head)
    ap.add_argument("--line-width", type=int, default=D.line_width)
    ap.add_argument("--chunk-lines", type=int, default=D.max_chunk_lines)
    ap.add_argument("--positions", default=D.positions, choices=["learned", "rope"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--save", default=None, help="keep the trained generator in this folder (a `prox` step's "
                    "`model:` with `generator: learned`)")
    args = ap.parse_args()

    docs = clean_documents(read_pydocs("py"), min_lines=6, max_lines=40)
    if len(docs) < args.train_docs + args.test_docs:
        raise SystemExit(f"only {len(docs)} clean pydocs documents; ask for fewer")
    cfg = LearnedConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, d_model=args.d_model,
                        n_layer=args.n_layer, n_head=args.n_head, line_width=args.line_width,
                        max_chunk_lines=args.chunk_lines, positions=args.positions, threads=args.threads,
                        seed=args.seed)
    _, pairs = make_pairs(docs[: args.train_docs], seed=0, max_chunk_lines=cfg.max_chunk_lines)
    held_out, _ = make_pairs(docs[-args.test_docs:], seed=1)
    with tempfile.TemporaryDirectory(prefix="prox-learned-") as scratch:
        tmp = args.save or scratch
        t0 = time.perf_counter()
        losses = train_generator(pairs, tmp, cfg, log_every=max(args.steps // 10, 1))
        train_s = time.perf_counter() - t0
        learned = LearnedGenerator(tmp, threads=args.threads)
        t0 = time.perf_counter()
        results = {"keep-everything": score_generator(None, held_out),
                   "rules": score_generator(RuleBasedGenerator(), held_out),
                   "learned": score_generator(learned, held_out)}
        score_s = time.perf_counter() - t0
        per_kind = {name: {k: round(v, 3) for k, v in recall_by_kind(gen, held_out).items()}
                    for name, gen in (("rules", RuleBasedGenerator()), ("learned", learned))}
    for name, s in results.items():
        print(s.line(name))
    for name, r in per_kind.items():
        print(f"recall per kind, {name}: {r}")
    print(f"{len(pairs)} pairs, train {train_s:.1f} s, final loss {sum(losses[-20:]) / min(20, len(losses)):.3f}; "
          f"scoring {score_s:.1f} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"config": asdict(cfg), "pairs": len(pairs), "held_out_docs": len(held_out),
                       "train_s": train_s, "losses": losses, "scores": {k: asdict(v) for k, v in results.items()},
                       "recall_per_kind": per_kind}, f, indent=2)


if __name__ == "__main__":
    main()
