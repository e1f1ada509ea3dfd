"""Augmentation and pseudo-labels on a probe task with 100 labels (issue 14, item 8), several seeds.

Pseudo-labels: "Predictions For Pre-training Language Models" (self-training: fine-tune on the labels, label the
unlabelled documents, train on the confident pseudo-labels, fine-tune on the labels); Lee 2013, "Pseudo-Label".
Augmentation: Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification Tasks" (arXiv 1901.11196), through the augmentation survey (Feng et al. 2021, arXiv 2105.03075).

On a trained kiln run, for each seed (which draws the labelled documents, the probe's windows and its
initialisation): the probe task's training documents are split into ``--labels`` labelled ones and an unlabelled
pool (all the others, their labels used only to report pseudo-label accuracy); then

- ``labels only``: the backbone + a linear head fine-tuned on the labelled documents (``kiln.eval.probe``);
- ``pseudo-labels``: :func:`kiln.eval.pseudo_label.probe_pseudo_label` (teacher = labels only; the most
  confident pseudo-labels, balanced per class; a student from the same checkpoint trained on them, then
  fine-tuned on the labels);
- ``EDA``: fine-tuned on the labelled documents plus 4 EDA copies of each (the consistency filter keeps copies the
  labels-only classifier still labels right).

Accuracy is per test window of the probe's held-out groups (plays for ``genre``: a play's scenes never straddle
the split). The table gives mean ± std over seeds and each method's difference to ``labels only``, paired by
seed, with a 95% t interval (``*`` = excludes 0).

    python benchmarks/pseudo_label_effect.py RUN_DIR --task genre --labels 100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = {"labels only": "labels_only_acc", "pseudo-labels": "pseudo_acc", "EDA": "augmented_acc"}


def run_seed(run_dir: Path, task: str, labels: int, seed: int, out: Path, threshold: float,
             top_fraction: float, finetune_steps: int) -> dict:
    import torch

    from kiln.artifacts import final_checkpoint
    from kiln.corpus.augment.eda import EdaConfig
    from kiln.eval.probe import ProbeConfig
    from kiln.eval.pseudo_label import PseudoLabelConfig, run_pseudo_label_probe
    from kiln.model.load import load_model
    from kiln.run import RunDir

    run = RunDir(run_dir)
    seq_len = min(128, int(load_model(final_checkpoint(run), torch.device("cpu")).config.max_seq_len))
    probe = ProbeConfig(seq_len=seq_len, seed=seed, finetune_steps=finetune_steps)
    cfg = PseudoLabelConfig(threshold=threshold, top_fraction=top_fraction, seed=seed)
    folder = out / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return run_pseudo_label_probe(run, task, labels, probe, cfg, out=folder, augment=EdaConfig())


def table(results: dict[int, dict]) -> str:
    from kiln.experiments.stats import paired_interval, summarize

    seeds = sorted(results)
    base = {s: results[s][METHODS["labels only"]] for s in seeds}
    lines = [f"{'method':<14} {'accuracy (mean ± std)':>22} {'vs labels only (95% CI)':>34}   per seed"]
    for name, key in METHODS.items():
        vals = {s: results[s][key] for s in seeds}
        m = summarize(list(vals.values()))
        cell = f"{m.mean:.3f} ± {m.std:.3f}" if m.std is not None else f"{m.mean:.3f}"
        if name == "labels only":
            diff = "-"
        else:
            d = paired_interval([vals[s] - base[s] for s in seeds])
            diff = f"{d.diff:+.3f}" + (f" [{d.lo:+.3f}, {d.hi:+.3f}]" if d.lo is not None else f" ({d.note})")
            diff += " *" if d.excludes_zero else ""
        lines.append(f"{name:<14} {cell:>22} {diff:>34}   " + " ".join(f"{vals[s]:.3f}" for s in seeds))
    pl = [r["rounds"][0].get("pseudo_label_acc") for r in results.values() if r.get("rounds")]
    n_pl = [r["rounds"][0]["n_pseudo"] for r in results.values() if r.get("rounds")]
    lines.append(f"pseudo-labels used per seed {n_pl}, their accuracy {[round(a, 3) for a in pl if a is not None]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a trained kiln run folder (corpus, tokenizer and train stages done)")
    ap.add_argument("--task", default="genre", help="probe task (kiln.eval.probe_tasks), default genre")
    ap.add_argument("--labels", type=int, default=100, help="labelled training documents")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threshold", type=float, default=0.0, help="pseudo-label confidence threshold")
    ap.add_argument("--top-fraction", type=float, default=0.3, help="pseudo-label at most this share of the pool")
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=None, help="folder for the per-seed JSON (default RUN/eval/pl-effect)")
    args = ap.parse_args()
    out = args.out or args.run / "eval" / "pl-effect"
    results: dict[int, dict] = {}
    for seed in args.seeds:
        t0 = time.time()
        results[seed] = run_seed(args.run, args.task, args.labels, seed, out, args.threshold, args.top_fraction,
                                 args.finetune_steps)
        r = results[seed]
        print(f"seed {seed}: labels only {r['labels_only_acc']:.3f}, pseudo-labels {r['pseudo_acc']:.3f}, "
              f"EDA {r['augmented_acc']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    summary = {"run": str(args.run), "task": args.task, "labels": args.labels, "seeds": args.seeds,
               "threshold": args.threshold, "top_fraction": args.top_fraction, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
