"""PreSelect, GOT-D and ORCA-ICL vs random vs a perplexity filter at the same kept fraction of characters on a
mixed pool, toward one target domain (issue 14).

PreSelect: Shum, Huang, Zhu, Zhang, He et al. 2025, "Predictive Data Selection: The Data That Predicts Is the
Data That Teaches" (arXiv 2503.00808). Perplexity filter: Wenzek et al. 2020, "CCNet: Extracting High Quality
Monolingual Datasets from Web Crawl Data" (arXiv 1911.00359). GOT-D: Kang et al. 2024, "Get more for less:
Principled Data Selection for Warming Up Fine-Tuning in LLMs" (arXiv 2405.02774). ORCA-ICL: Han et al. 2023,
"Understanding In-Context Learning via Supportive Pretraining Data" (arXiv 2306.15091). All at a kept fraction,
as in Marion et al. 2023, "When Less is More: Investigating Data Pruning for Pretraining LLMs at Scale" (arXiv
2309.04564).

The sweep is ``recipes/sweeps/selection.yaml`` (the guide pool: Shakespeare modern + Folio, pydocs, planted
junk; variants ``random``, ``perplexity``, ``preselect``, ``gotd`` and ``orca``, each keeping 50% of the
characters; equal training tokens, 2 seeds, baseline ``random``; target domain = held-out modern-spelling
Shakespeare). This
script does the whole study in one work folder (default ``runs/selection-effect/``):

1. trains the reference models with ``kiln run`` into ``WORK/refs/``: ``ref-s``, ``ref-m``, ``ref-l`` = the
   guide pool at d_model 32 / 64 / 128 and the same steps, each evaluated on ``bpb-shakespeare-modern`` (PreSelect
   ranks them by it, lower = better); ``ref-target`` = the same model trained on modern-spelling Shakespeare
   alone (the perplexity filter's reference: low bits per byte under a model of the target domain);
   then, from ``ref-target``'s *train* split (never a held-out document), GOT-D's target sample
   ``WORK/refs/gotd-target.jsonl`` and ORCA-ICL's task ``WORK/refs/orca-target.jsonl``;
2. writes the filled sweep file ``WORK/<sweep>.yaml`` (the shipped file with its base made absolute, and the
   ``--quick`` / ``--keep`` / ``--seeds`` changes) and checks it (every variant's recipe validates; every
   selecting variant keeps the same share of characters);
3. runs ``kiln ablate WORK/<sweep>.yaml --root WORK`` (runs in ``WORK/<sweep>/<variant>/seed-<s>/``; rerunning
   finishes only what is missing) and prints the report's path, the kept share of each variant and a short table.

    python benchmarks/selection_effect.py                          # the full study: 4 references + 10 runs
    python benchmarks/selection_effect.py --quick --work /tmp/sel  # a smoke run: 30 steps, 1 seed, small eval
    python benchmarks/selection_effect.py --dry-run                # write and check the sweep; run nothing

Cost: the ``--quick`` run took 26 min on a heavily loaded 2-core machine (references 5.5 min; the sweep 20 min,
of which 5 min scoring the 3,433-document pool with the perplexity reference and 6 min PreSelect's 3 x 1,000
reference losses); a rerun with everything done takes ~25 s. The full study (4 references, 10 runs, --jobs 2)
took 2 h 05 min on 2026-11-29 while the 2 cores also ran four other jobs (load average 6-11): references
3-27 min each, the sweep ~60 min. Its table is in docs/methods.md. With 30-step
references, the larger model is better on most documents (792 of 1,000 positives), so ``--quick`` tests the
plumbing, not the method.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "kiln" / "recipes"
SWEEP = RECIPES / "sweeps" / "selection.yaml"
POOL = RECIPES / "guide-pool.yaml"
REFERENCE_SIZES = {"ref-s": 32, "ref-m": 64, "ref-l": 128}  # d_model of PreSelect's references (same steps)
TARGET_REF = "ref-target"
TARGET_TASK = "bpb-shakespeare-modern"
SELECTING = ("random", "perplexity", "preselect", "gotd", "orca")
GOTD_TARGET_DOCS = 200  # GOT-D's target sample: documents of the target domain's train split
ORCA_EXAMPLES = 96  # ORCA-ICL's task: (4 lines of a speech -> the next line) examples
ORCA_CONTEXT_LINES = 4
QUICK_STEPS = 30
QUICK = {  # --quick: everything small enough for a smoke run on a loaded 2-core machine
    "train.steps": QUICK_STEPS, "train.warmup_steps": 2, "train.eval_every": QUICK_STEPS,
    "train.checkpoint_every": QUICK_STEPS, "train.eval_sequences": 8, "eval.max_sequences": 32,
    "eval.task_items": 30,
}
SHORT_METRICS = {"tasks/bpb-shakespeare-modern/bpb": "target bpb", "tasks/bpb-shakespeare-folio/bpb": "folio bpb",
                 "tasks/bpb-pydocs/bpb": "pydocs bpb", "tasks/shakespeare-cloze/acc": "cloze acc",
                 "tasks/shakespeare-speaker/acc": "speaker acc", "tasks/pydocs-name/acc": "name acc"}


def _override(key: str, value: Any) -> str:
    from kiln.experiments.sweep_file import as_override

    return as_override(key, value)


def reference_runs(refs: Path, quick: bool) -> dict[str, list[str]]:
    """``{name: kiln run arguments}`` of the four reference models (run folders under ``refs``)."""
    common = {**(QUICK if quick else {}), "eval.tasks": [TARGET_TASK]}
    runs = {}
    for name, width in REFERENCE_SIZES.items():
        runs[name] = [str(POOL), "--run-dir", str(refs / name), "--until", "eval",
                      *[_override(k, v) for k, v in {**common, "model.d_model": width}.items()]]
    target = {**common,
              "corpus.sources": [{"kind": "shakespeare", "editions": ["modern"]}],
              "corpus.steps": [{"step": "normalize"}, {"step": "length", "min_chars": 200}, {"step": "exact_dedup"}]}
    runs[TARGET_REF] = [str(POOL), "--run-dir", str(refs / TARGET_REF), "--until", "eval",
                        *[_override(k, v) for k, v in target.items()]]
    return runs


def _ref_path(path: str, refs_name: str) -> str:
    """A reference path of the shipped sweep (``../../../refs/ref-s``) pointed at ``refs_name`` instead."""
    parts = path.split("/")
    if len(parts) < 2 or parts[-2] != "refs":
        raise ValueError(f"{SWEEP}: expected reference paths like ../../../refs/<name>, got {path!r}")
    return "/".join(parts[:-2] + [refs_name, parts[-1]])


def sweep_tree(quick: bool = False, keep: float | None = None, seeds: int | None = None,
               refs_name: str = "refs") -> dict[str, Any]:
    """The shipped sweep with its base made absolute and the --quick / --keep / --seeds / refs folder changes."""
    tree = yaml.safe_load(SWEEP.read_text(encoding="utf-8"))
    tree["base"] = str((SWEEP.parent / tree["base"]).resolve())
    if quick:
        tree["name"] = f"{tree['name']}-quick"
        tree["overrides"] = {**(tree.get("overrides") or {}), **QUICK}
        tree["seeds"] = 1
    if seeds is not None:
        tree["seeds"] = seeds
    for variant in tree["variants"].values():
        for step in (variant or {}).get("corpus.steps", []):
            if step["step"] == "select" and keep is not None:
                step["keep_fraction"] = keep
            elif step["step"] in ("perplexity_score", "orca_score"):
                step["checkpoint"] = _ref_path(step["checkpoint"], refs_name)
                if "task_file" in step:
                    step["task_file"] = _ref_path(step["task_file"], refs_name)
            elif step["step"] == "gotd_score":
                for target in step["target"]:
                    target["path"] = _ref_path(target["path"], refs_name)
            elif step["step"] == "preselect":
                for ref in step["references"]:
                    ref["checkpoint"] = _ref_path(ref["checkpoint"], refs_name)
                if quick:  # 30-step references agree on fewer documents; sample fewer, need fewer
                    step["sample_docs"], step["min_positives"] = 1000, 5
    return tree


def kept_fractions(tree: dict[str, Any]) -> dict[str, float]:
    """Per variant: the share of characters its corpus keeps (the last ``select``'s keep_fraction; 1.0 = all).

    Raises ValueError for a variant whose selection is not a ``keep_fraction`` of characters."""
    out = {}
    for name, variant in tree["variants"].items():
        steps = (variant or {}).get("corpus.steps")
        selects = [s for s in steps or [] if s["step"] == "select"]
        if not selects:
            out[name] = 1.0
            continue
        if len(selects) != 1 or selects[0].get("keep_fraction") is None or selects[0].get("inverse"):
            raise ValueError(f"variant {name!r}: expected one select step with keep_fraction, got {selects}")
        out[name] = float(selects[0]["keep_fraction"])
    return out


class _Plain(yaml.SafeDumper):
    """Writes repeated steps in full (no YAML anchors), so the written sweep reads like the shipped one."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_sweep(tree: dict[str, Any], work: Path) -> Path:
    """Write ``tree`` as ``WORK/<name>.yaml``, check it (kiln's sweep validation and equal kept shares), return it."""
    from kiln.experiments.sweep_file import load_sweep

    shares = kept_fractions(tree)
    selecting = {shares[v] for v in SELECTING}
    if len(selecting) != 1:
        raise ValueError(f"the selecting variants must keep the same share of characters, got {shares}")
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{tree['name']}.yaml"
    path.write_text(yaml.dump(tree, Dumper=_Plain, sort_keys=False, width=120), encoding="utf-8")
    load_sweep(path)  # SweepError naming the variant and field
    return path


def kiln_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln", *args]


def train_references(refs: Path, quick: bool) -> None:
    for name, args in reference_runs(refs, quick).items():
        t0 = time.time()
        print(f"reference {name}: kiln run {' '.join(args)}", flush=True)
        code = subprocess.call(kiln_cmd("run", *args))
        if code:
            raise SystemExit(f"reference {name} failed (exit {code}); see {refs / name}")
        metrics = refs / name / "eval" / "metrics.json"
        bpb = _get(json.loads(metrics.read_text(encoding="utf-8")), f"tasks/{TARGET_TASK}/bpb") \
            if metrics.exists() else None
        print(f"reference {name}: {TARGET_TASK} bpb {bpb} ({time.time() - t0:.0f} s)", flush=True)


def write_targets(refs: Path) -> None:
    """GOT-D's target sample and ORCA-ICL's task file, from ``ref-target``'s train split (hash-ordered, so the
    choice is deterministic): the first :data:`GOTD_TARGET_DOCS` documents are GOT-D's target; the next ones
    give ORCA's examples, one per document (:data:`ORCA_CONTEXT_LINES` lines of dialogue, then the next line)."""
    import hashlib

    from kiln.corpus.files import iter_text_batches
    from kiln.run import RunDir

    corpus = RunDir(refs / TARGET_REF).stage("corpus")
    docs = [(i, t) for batch in iter_text_batches(corpus, "train", columns=("id", "text"))
            for i, t in zip(batch["id"], batch["text"], strict=True)]  # type: ignore[index]
    docs.sort(key=lambda d: hashlib.sha256(str(d[0]).encode()).hexdigest())
    gotd = [{"id": i, "text": t} for i, t in docs[:GOTD_TARGET_DOCS]]
    orca: list[dict[str, str]] = []
    for _, text in docs[GOTD_TARGET_DOCS:]:
        lines = [line for line in text.split("\n") if line.strip()]
        mid = len(lines) // 2
        window = lines[mid:mid + ORCA_CONTEXT_LINES + 1]
        if len(window) == ORCA_CONTEXT_LINES + 1 and len(window[-1].strip()) >= 10:
            orca.append({"context": "\n".join(window[:-1]) + "\n", "answer": window[-1]})
        if len(orca) == ORCA_EXAMPLES:
            break
    for name, rows in (("gotd-target.jsonl", gotd), ("orca-target.jsonl", orca)):
        (refs / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"targets: {len(gotd)} GOT-D target documents, {len(orca)} ORCA examples in {refs}", flush=True)


def _get(tree: Any, path: str) -> Any:
    for part in path.split("/"):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def kept_shares(sweep_root: Path) -> dict[str, float | None]:
    """Measured share of the pool's bytes each variant's corpus kept (seed 0), from the corpus funnel:
    kept / (kept + what ``select`` removed)."""
    out: dict[str, float | None] = {}
    for funnel in sorted(sweep_root.glob("*/seed-*/corpus/funnel.json")):
        variant = funnel.parents[2].name
        if variant in out:
            continue
        f = json.loads(funnel.read_text(encoding="utf-8"))
        kept = f["split"]["train_bytes"] + f["split"]["val_bytes"]
        removed = sum(r["bytes_removed"] for r in f["steps"] if r["step"] == "select")
        out[variant] = kept / (kept + removed) if kept + removed else None
    return out


def summary(sweep_root: Path) -> str:
    """A short plain-text table from ``report/comparison.json``: mean over seeds, difference to the baseline."""
    comp = json.loads((sweep_root / "report" / "comparison.json").read_text(encoding="utf-8"))
    metrics = [m for m in comp["metrics"] if m in SHORT_METRICS]
    shares = kept_shares(sweep_root)
    head = f"{'variant':<12} {'kept':>6} " + " ".join(f"{SHORT_METRICS[m]:>18}" for m in metrics)
    lines = [head, "-" * len(head)]
    for row in comp["variants"]:
        cells = []
        for m in metrics:
            c = row["metrics"][m]
            if c["mean"] is None:
                cells.append(f"{'-':>18}")
                continue
            d = c.get("diff") or {}
            delta = f" ({d['diff']:+.3f}{'*' if d.get('excludes_zero') else ''})" if d.get("diff") is not None else ""
            cells.append(f"{c['mean']:.3f}{delta}".rjust(18))
        share = shares.get(row["name"])
        lines.append(f"{row['name'] + (' (b)' if row['baseline'] else ''):<12} "
                     f"{'-' if share is None else f'{share:.3f}':>6} " + " ".join(cells))
    lines.append(f"mean over seeds (difference to the baseline (b) {comp['baseline']}; * = its 95% interval "
                 "excludes 0); bpb lower = better; kept = the share of the pool's bytes the corpus kept (seed 0)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/selection-effect"), help="folder for everything")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, 1 seed, small eval (a smoke run)")
    ap.add_argument("--dry-run", action="store_true", help="write and check the sweep file; run nothing")
    ap.add_argument("--keep", type=float, default=None, help="kept share of characters (default: the file's 0.5)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 2; --quick: 1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (set train.threads = cores / jobs)")
    args = ap.parse_args()
    work = args.work.absolute()
    refs_name = "refs-quick" if args.quick else "refs"
    tree = sweep_tree(args.quick, args.keep, args.seeds, refs_name)
    path = write_sweep(tree, work)
    print(f"sweep file: {path} (kept shares {kept_fractions(tree)})", flush=True)
    if args.dry_run:
        for name, run_args in reference_runs(work / refs_name, args.quick).items():
            print(f"reference {name}: kiln run {' '.join(run_args)}")
        print(f"then: kiln ablate {path} --root {work} --jobs {args.jobs}")
        return
    train_references(work / refs_name, args.quick)
    write_targets(work / refs_name)
    cmd = kiln_cmd("ablate", str(path), "--root", str(work), "--jobs", str(args.jobs))
    print(f"sweep: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd)
    sweep_root = work / tree["name"]
    if (sweep_root / "report" / "comparison.json").exists():
        print(f"report: {sweep_root / 'report' / 'report.md'}")
        print(summary(sweep_root))
    sys.exit(code)


if __name__ == "__main__":
    main()
