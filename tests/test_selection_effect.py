"""benchmarks/selection_effect.py: the selection sweep it writes (PreSelect, GOT-D, ORCA-ICL, perplexity, random), and
its summary table.

Fast checks of the script's logic (no training): the shipped and the filled sweep files validate through kiln's
own sweep validation; the selecting variants keep the same share of characters (on a synthetic pool, by the
sweep's own ``select`` steps, to within one document) and the perplexity variant keeps the low end; the
reference paths resolve from a run folder to the reference runs the script trains; a variant keeping another
share is refused; the reference run commands build valid recipes; the summary reads comparison.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.corpus.scoring.select import SelectParams, run_select
from kiln.corpus.steps.base import StepContext
from kiln.experiments.sweep_file import load_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("selection_effect", ROOT / "benchmarks" / "selection_effect.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["selection_effect"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_shipped_sweep_validates_with_equal_kept_shares_tokens_budget_and_random_baseline(bench) -> None:
    sweep = load_sweep(bench.SWEEP)
    assert list(sweep.recipes) == ["random", "perplexity", "preselect", "gotd", "orca"]
    assert sweep.baseline == "random" and sweep.spec.budget == "tokens" and sweep.seeds == [0, 1]
    assert "tasks/bpb-shakespeare-modern/bpb" in sweep.spec.metrics
    tree = bench.sweep_tree()
    assert bench.kept_fractions(tree) == dict.fromkeys(bench.SELECTING, 0.5)
    pre = sweep.recipes["preselect"].corpus.steps[-2]
    assert pre.rank_by == "tasks/bpb-shakespeare-modern/bpb" and pre.higher_is_better is False
    assert len(pre.references) == 3
    # every variant builds the same pool before its selection
    pools = {v: [s.model_dump() for s in r.corpus.steps[:4]] for v, r in sweep.recipes.items()}
    assert all(p == pools["random"] for p in pools.values())


def test_filled_sweep_validates_and_points_at_the_reference_runs(bench, tmp_path: Path) -> None:
    tree = bench.sweep_tree(quick=True, keep=0.3, refs_name="refs-quick")
    path = bench.write_sweep(tree, tmp_path)
    sweep = load_sweep(path)
    assert sweep.name == "selection-quick" and sweep.seeds == [0]
    assert bench.kept_fractions(tree) == dict.fromkeys(bench.SELECTING, 0.3)
    assert {r.train.steps for r in sweep.recipes.values()} == {bench.QUICK_STEPS}
    run_dir = tmp_path / sweep.name / "preselect" / "seed-0"  # where kiln ablate --root tmp_path puts the run
    refs = [(run_dir / r.checkpoint).resolve() for r in sweep.recipes["preselect"].corpus.steps[-2].references]
    assert refs == [(tmp_path / "refs-quick" / n).resolve() for n in bench.REFERENCE_SIZES]
    ppl = sweep.recipes["perplexity"].corpus.steps[-2]
    assert (run_dir / ppl.checkpoint).resolve() == (tmp_path / "refs-quick" / bench.TARGET_REF).resolve()
    gotd, orca = sweep.recipes["gotd"].corpus.steps[-2], sweep.recipes["orca"].corpus.steps[-2]
    assert (run_dir / gotd.target[0].path).resolve() == (tmp_path / "refs-quick" / "gotd-target.jsonl").resolve()
    assert (run_dir / orca.task_file).resolve() == (tmp_path / "refs-quick" / "orca-target.jsonl").resolve()
    assert (run_dir / orca.checkpoint).resolve() == (tmp_path / "refs-quick" / "ref-l").resolve()
    runs = bench.reference_runs(tmp_path / "refs-quick", quick=True)
    assert [tmp_path / "refs-quick" / n for n in runs] == [Path(a[a.index("--run-dir") + 1]) for a in runs.values()]


def test_unequal_kept_shares_are_refused(bench, tmp_path: Path) -> None:
    tree = bench.sweep_tree()
    tree["variants"]["preselect"]["corpus.steps"][-1]["keep_fraction"] = 0.1
    with pytest.raises(ValueError, match="same share of characters"):
        bench.write_sweep(tree, tmp_path)
    tree = bench.sweep_tree()
    tree["variants"]["random"]["corpus.steps"][-1] = {"step": "select", "field": "random", "keep_docs": 100}
    with pytest.raises(ValueError, match="variant 'random'"):
        bench.kept_fractions(tree)


def test_each_variants_select_keeps_half_the_characters_and_perplexity_the_low_end(bench) -> None:
    rng = np.random.default_rng(0)
    n = 400
    lengths = rng.integers(200, 3000, size=n)
    target = rng.random(n) < 0.3
    docs = [{"id": f"d{i}", "text": "x" * int(lengths[i]), "source": "pool",
             "random": float(rng.random()),
             "perplexity": float(rng.normal(1.5 if target[i] else 3.0, 0.3)),  # the target domain scores low
             "preselect": float(rng.random()), "gotd": float(rng.random()), "orca": float(rng.random())}
            for i in range(n)]
    total = float(lengths.sum())
    tree = bench.sweep_tree()
    shares = {}
    for variant in bench.SELECTING:
        step = tree["variants"][variant]["corpus.steps"][-1]
        kept, _ = run_select(docs, SelectParams.model_validate(step), StepContext(step="select"))
        shares[variant] = sum(len(d["text"]) for d in kept) / total
        assert abs(shares[variant] - 0.5) <= lengths.max() / total, (variant, shares)
        if variant == "perplexity":
            kept_ids = {d["id"] for d in kept}
            low = [d["perplexity"] for d in docs if d["id"] in kept_ids]
            high = [d["perplexity"] for d in docs if d["id"] not in kept_ids]
            assert max(low) < min(high)  # the lowest bits per byte stay
            assert all(f"d{i}" in kept_ids for i in np.flatnonzero(target))  # so every target document
    assert max(shares.values()) - min(shares.values()) <= 2 * lengths.max() / total


def test_reference_runs_build_valid_recipes_of_three_sizes_and_a_target_only_one(bench, tmp_path: Path) -> None:
    from kiln.recipe import load_recipe

    recipes = {}
    for name, args in bench.reference_runs(tmp_path, quick=False).items():
        overrides = args[args.index("--until") + 2:]
        recipes[name] = load_recipe(args[0], overrides)
    assert [recipes[n].model.d_model for n in bench.REFERENCE_SIZES] == [32, 64, 128]
    assert len({recipes[n].train.steps for n in recipes}) == 1
    assert all(r.eval.tasks == [bench.TARGET_TASK] for r in recipes.values())
    target = recipes[bench.TARGET_REF].corpus
    assert [(s.kind, s.editions) for s in target.sources] == [("shakespeare", ["modern"])]
    assert "plant" not in [s.step for s in target.steps]


def test_summary_reads_comparison_and_the_kept_share_from_the_funnel(bench, tmp_path: Path) -> None:
    root = tmp_path / "selection"
    metric = "tasks/bpb-shakespeare-modern/bpb"
    rows = []
    for name, bpb, removed in (("random", 2.0, 500), ("preselect", 1.8, 500), ("full", 1.9, 0)):
        funnel = root / name / "seed-0" / "corpus" / "funnel.json"
        funnel.parent.mkdir(parents=True)
        steps = [{"step": "plant", "bytes_removed": 0}] + ([{"step": "select", "bytes_removed": removed}]
                                                          if removed else [])
        funnel.write_text(json.dumps({"split": {"train_bytes": 450, "val_bytes": 50}, "steps": steps}))
        cell = {"mean": bpb, "std": 0.0, "n": 1}
        if name != "random":
            cell["diff"] = {"diff": bpb - 2.0, "excludes_zero": name == "preselect"}
        rows.append({"name": name, "baseline": name == "random", "metrics": {metric: cell}})
    (root / "report").mkdir()
    (root / "report" / "comparison.json").write_text(json.dumps({"baseline": "random", "metrics": [metric],
                                                                  "variants": rows}))
    assert bench.kept_shares(root) == {"full": 1.0, "preselect": 0.5, "random": 0.5}
    text = bench.summary(root)
    line = next(ln for ln in text.splitlines() if ln.startswith("preselect"))
    assert "0.500" in line and "1.800 (-0.200*)" in line
    assert "1.900 (-0.100)" in text and text.splitlines()[2].startswith("random (b)")
