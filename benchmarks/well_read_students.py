"""Pre-trained distillation vs random-init distillation (issue 15, item 3), several seeds.

Turc, Chang, Lee, Toutanova 2019, "Well-Read Students Learn Better: On the Importance of Pre-training Compact
Models", arXiv:1908.08962: a compact student MLM-pretrained before distillation beats the same student distilled
from a random initialisation.

For each seed:

1. **MLM pretraining**: ``kiln/recipes/well-read-students.yaml`` (``model.preset``, ``train.objective: mlm``,
   ``train.seed`` = 1337 + seed) in ``WORK/mlm-<preset>-seed<train seed>``, on the teacher run's own corpus,
   tokenizer and tokens (their stage folders are copied in, so the student shares the teacher's vocabulary and
   those stages are up to date; the teacher run is only read);
2. **teacher**: the teacher run's final checkpoint (default: the demo run, a 4 x 192 causal LM) + a linear head
   fine-tuned on the probe task's labelled training windows (``genre``: comedy / history / tragedy of a scene,
   split by play);
3. **students**: the MLM-pretrained preset model and a randomly initialised model of the same configuration,
   each distilled on the unlabelled transfer windows (every training window, labels unused) against the teacher's
   soft labels, then fine-tuned on the labels (:func:`kiln.eval.pretrained_distill.pretrained_distillation`);
   the same student fine-tuned on the labels alone is reported for reference.

Accuracy is per held-out window. The table gives mean ± std over seeds and the pretrained - random difference
of the distilled (+ fine-tuned) students, paired by seed (95% t interval; needs 2+ seeds) and paired by test
window pooled over seeds (95% bootstrap interval, 2000 resamples; windows of one scene are not independent, so
this interval is optimistic).

    python benchmarks/well_read_students.py --teacher /tmp/sw5/work/runs/demo --work /tmp/wrs --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

STUDENTS = ("pretrained", "random")
COLUMNS = {"distil": "distill_acc", "distil+FT": "final_acc", "FT only": "ft_only_acc"}


def mlm_student(teacher_run: Path, work: Path, preset: str, steps: int, seed: int, threads: int) -> Path:
    """Step 1: the MLM-pretrained student's run folder (trained, or reused when up to date)."""
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline

    train_seed = 1337 + seed
    folder = work / f"mlm-{preset}-seed{train_seed}"
    for stage in ("corpus", "tokenizer", "tokens"):
        if not (teacher_run / stage / "manifest.json").exists():
            raise SystemExit(f"teacher run {teacher_run}: no finished {stage} stage to share with the student")
        if not (folder / stage).exists():
            shutil.copytree(teacher_run / stage, folder / stage)
    recipe = load_recipe("well-read-students", [f"model.preset={preset}", f"train.steps={steps}",
                                                f"train.seed={train_seed}", f"train.threads={threads}"])
    run_pipeline(recipe, RunDir(folder), until="train")
    return folder


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    import torch

    from kiln.artifacts import final_checkpoint
    from kiln.eval.pretrained_distill import DistillConfig, pretrained_distillation, random_init_like
    from kiln.eval.probe import ProbeConfig
    from kiln.eval.probe_tasks import run_task
    from kiln.model.load import load_model
    from kiln.run import RunDir

    torch.set_num_threads(args.threads)
    t0 = time.time()
    folder = mlm_student(args.teacher, args.work, args.preset, args.mlm_steps, seed, args.threads)
    t_mlm = time.time() - t0
    device = torch.device("cpu")
    teacher = load_model(final_checkpoint(RunDir(args.teacher)), device)
    pretrained = load_model(final_checkpoint(RunDir(folder)), device)
    students = {"pretrained": pretrained, "random": random_init_like(pretrained, seed=10_000 + seed)}
    probe = ProbeConfig(seq_len=args.seq_len, windows=args.windows, finetune_steps=args.finetune_steps,
                        finetune_lr=args.finetune_lr, seed=seed)
    cfg = DistillConfig(temperature=args.temperature, steps=args.distill_steps, lr=args.distill_lr,
                        batch_size=args.batch_size, teacher_steps=args.teacher_steps, seed=seed)
    train_docs, test_docs, encode = run_task(RunDir(args.teacher), args.task, probe.test_fraction, 0)
    t1 = time.time()
    res = pretrained_distillation(teacher, students, train_docs, test_docs, encode, probe, cfg, device,
                                  n_labels=args.labels)
    res.update(seed=seed, mlm_run=str(folder), mlm_seconds=round(t_mlm, 1), distill_seconds=round(time.time() - t1, 1),
               mlm_final=_last_val(folder), student_params=sum(p.numel() for p in pretrained.backbone.parameters()),
               teacher_params=sum(p.numel() for p in teacher.backbone.parameters()))
    return res


def _last_val(folder: Path) -> dict | None:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in rows if r.get("kind") == "val"]
    return vals[-1] if vals else None


def window_bootstrap(a: list[int], b: list[int], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over paired test windows and its 95% percentile bootstrap interval."""
    import numpy as np

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def table(results: dict[int, dict]) -> str:
    from kiln.experiments.stats import paired_interval, summarize

    seeds = sorted(results)

    def cell(vals: list[float]) -> str:
        m = summarize(vals)
        return f"{m.mean:.3f} ± {m.std:.3f}" if m.std is not None else f"{m.mean:.3f}"

    r0 = results[seeds[0]]
    lines = [f"task {len(r0['classes'])} classes, {r0['n_transfer_windows']} transfer / {r0['n_labelled_windows']} "
             f"labelled / {r0['n_test']} test windows; majority {r0['majority_acc']:.3f}; seeds {seeds}",
             f"{'model':<22} " + " ".join(f"{c:>16}" for c in COLUMNS) + "   per seed (distil+FT)",
             f"{'teacher (fine-tuned)':<22} {'':>16} {'':>16} {cell([results[s]['teacher_acc'] for s in seeds]):>16}   "
             + " ".join(f"{results[s]['teacher_acc']:.3f}" for s in seeds)]
    for name in STUDENTS:
        rows = [results[s]["students"][name] for s in seeds]
        lines.append(f"{name + ' student':<22} " + " ".join(f"{cell([r[k] for r in rows]):>16}" for k in
                                                           COLUMNS.values())
                     + "   " + " ".join(f"{r['final_acc']:.3f}" for r in rows))
    lines.append("pretrained - random:")
    for label, key in COLUMNS.items():
        diffs = [results[s]["students"]["pretrained"][key] - results[s]["students"]["random"][key] for s in seeds]
        d = paired_interval(diffs)
        by_seed = f"[{d.lo:+.3f}, {d.hi:+.3f}]" if d.lo is not None else f"({d.note})"
        ck = key.replace("_acc", "_correct")
        a = [v for s in seeds for v in results[s]["students"]["pretrained"][ck]]
        b = [v for s in seeds for v in results[s]["students"]["random"][ck]]
        m, lo, hi = window_bootstrap(a, b)
        lines.append(f"  {label:<10} {d.diff:+.3f}  by seed {by_seed}  by window {m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                     + (" *" if lo > 0 or hi < 0 else ""))
    for s in seeds:
        r = results[s]
        lines.append(f"seed {s}: MLM {r['mlm_seconds']:.0f} s (final val {(r['mlm_final'] or {}).get('val_loss')}), "
                     f"distillation pipeline {r['distill_seconds']:.0f} s; distil KL first/last "
                     + ", ".join(f"{n} {r['students'][n]['distill_loss_first']:.3f}/"
                                 f"{r['students'][n]['distill_loss_last']:.3f}" for n in STUDENTS))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", type=Path, default=Path("/tmp/sw5/work/runs/demo"),
                    help="a finished kiln run (corpus, tokenizer, tokens, train): the teacher's backbone and data")
    ap.add_argument("--work", type=Path, default=Path("runs/well-read-students"), help="student runs + results")
    ap.add_argument("--preset", default="bert-L2-H128")
    ap.add_argument("--mlm-steps", type=int, default=400)
    ap.add_argument("--task", default="genre")
    ap.add_argument("--labels", type=int, default=None, help="labelled training documents (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--finetune-lr", type=float, default=3e-4)
    ap.add_argument("--distill-steps", type=int, default=200)
    ap.add_argument("--distill-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only print the table of the seeds' saved results (seeds "
                    "may run as separate processes: --seeds 0 and --seeds 1, then --report --seeds 0 1)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    for seed in args.seeds:
        if args.report:
            results[seed] = json.loads((args.work / f"result-seed{seed}.json").read_text(encoding="utf-8"))
            continue
        results[seed] = r = run_seed(args, seed)
        (args.work / f"result-seed{seed}.json").write_text(json.dumps(r, indent=1, default=str), encoding="utf-8")
        print(f"seed {seed}: teacher {r['teacher_acc']:.3f}, " + ", ".join(
            f"{n} distil {r['students'][n]['distill_acc']:.3f} / +FT {r['students'][n]['final_acc']:.3f}"
            for n in STUDENTS), flush=True)
    text = table(results)
    (args.work / f"table-seeds{'-'.join(map(str, args.seeds))}.txt").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
