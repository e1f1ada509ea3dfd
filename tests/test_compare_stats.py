"""Sweep comparison statistics: t quantiles, paired / Welch intervals on planted differences, and the table's
numbers against the runs' own metrics.json files (fake run folders, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kiln import atomic
from kiln.experiments import stats
from kiln.experiments.compare import write_sweep_report
from kiln.recipe import load_recipe

SMALL = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "tokenizer.vocab_size=600"]
VOCAB = 600


def fake_run(root: Path, rel: str, seed: int, metrics: dict, overrides: tuple[str, ...] = (), steps: int = 10,
             batch_tokens: int = 256, curve_offset: float = 0.0, report: bool = False) -> Path:
    """A finished-looking run folder: recipe.yaml, eval/metrics.json, metrics.jsonl (val rows every 5 steps),
    the train manifest's steps/tokens and the tokenizer's token_bytes.npy (for FLOPs)."""
    run = root / rel
    recipe = load_recipe("demo", [*SMALL, f"name=fake-{rel.replace('/', '-')}", f"train.seed={seed}", *overrides])
    atomic.write_text(run / "recipe.yaml", recipe.to_yaml())
    atomic.write_json(run / "eval" / "metrics.json", metrics)
    rows = []
    for step in range(5, steps + 1, 5):
        rows.append({"kind": "train", "step": step, "loss": 5.0, "tokens": step * batch_tokens})
        rows.append({"kind": "val", "step": step, "tokens": step * batch_tokens, "val_loss": 4.0,
                     "val_bpb": 3.0 - step * 0.05 + curve_offset})
    atomic.write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic.write_json(run / "train" / "manifest.json", {"complete": True, "stats": {"steps": steps,
                                                                                     "tokens": steps * batch_tokens}})
    (run / "tokenizer").mkdir(parents=True, exist_ok=True)
    np.save(run / "tokenizer" / "token_bytes.npy", np.zeros(VOCAB, dtype=np.int64))
    if report:
        atomic.write_text(run / "report" / "index.html", "<html>run report</html>")
    return run


def task_metrics(bpb: float, acc: float, held_bpb: float) -> dict:
    return {"val_loss": bpb * 1.3, "val_bpb": bpb, "unigram_bpb": 5.0, "checkpoint": "x", "sequences": 4,
            "tasks": {"shakespeare-cloze": {"kind": "choice", "acc": acc, "acc_norm": acc - 0.01,
                                            "acc_ci": [acc - 0.05, acc + 0.05], "chance": 0.25, "majority": 0.27,
                                            "n_items": 200, "shots": 0,
                                            "templates": {"plain": {"acc": acc, "acc_norm": acc}}},
                      "bpb-shakespeare-folio": {"kind": "bpb", "bpb": held_bpb, "n_docs": 40, "n_bytes": 8000}},
            "probes": {"genre": {"linear_acc": 0.6, "majority_acc": 0.5}}}


# --- Student t -------------------------------------------------------------------------------------


def test_t_quantiles_known_values():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=5e-4)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4)
    assert stats.t_quantile(0.975, 30) == pytest.approx(2.042, abs=5e-4)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.960, abs=5e-4)  # -> the normal quantile


def test_t_quantiles_match_scipy():
    sp = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 9, 2.7, 14.2, 60, 500):
        for p in (0.5, 0.9, 0.975, 0.995, 0.01):
            assert stats.t_quantile(p, df) == pytest.approx(sp.t.ppf(p, df), rel=1e-8, abs=1e-9)


# --- planted differences ---------------------------------------------------------------------------


def planted(delta: float, n: int = 5, seed_sd: float = 0.05, pair_sd: float = 0.005, rng: int = 0):
    """{seed: value} of a baseline and a variant = baseline + delta + small per-pair noise."""
    g = np.random.default_rng(rng)
    base = 2.0 + g.normal(0, seed_sd, n)
    var = base + delta + g.normal(0, pair_sd, n)
    return dict(enumerate(var.tolist())), dict(enumerate(base.tolist()))


def test_known_difference_is_found_and_marked():
    var, base = planted(0.05)
    d = stats.difference(var, base)
    assert d.method == "paired" and d.n == 5
    assert d.lo < 0.05 < d.hi
    assert d.excludes_zero
    assert stats.verdict("val_bpb", d) == "worse"  # +0.05 bits per byte is worse
    assert stats.verdict("tasks/shakespeare-cloze/acc", d) == "better"  # +0.05 accuracy is better
    # the interval is the textbook one: mean(d) +- t_{0.975,4} * sd(d) / sqrt(5)
    diffs = np.array([var[s] - base[s] for s in range(5)])
    half = 2.7764451 * diffs.std(ddof=1) / math.sqrt(5)
    assert d.diff == pytest.approx(diffs.mean(), abs=1e-12)
    assert (d.lo, d.hi) == pytest.approx((diffs.mean() - half, diffs.mean() + half), abs=1e-7)


def test_no_difference_is_not_marked():
    var, base = planted(0.0)
    d = stats.difference(var, base)
    assert d.lo < 0 < d.hi and not d.excludes_zero
    assert stats.verdict("val_bpb", d) is None


def test_null_coverage_is_about_95_percent():
    g = np.random.default_rng(1)
    hits_paired = hits_welch = 0
    trials = 400
    for _ in range(trials):
        a, b = g.normal(0, 1, 4), g.normal(0, 1, 4)
        hits_paired += not stats.paired_interval((a - b).tolist()).excludes_zero
        hits_welch += not stats.welch_interval(a.tolist(), g.normal(0, 2, 6).tolist()).excludes_zero
    assert 0.91 < hits_paired / trials < 0.99
    assert 0.91 < hits_welch / trials < 0.99


def test_pairing_by_seed_removes_seed_noise():
    # seed noise (sd 0.05) dwarfs the effect (0.02); pairing cancels it, an unpaired interval cannot
    var, base = planted(0.02, n=4, seed_sd=0.05, pair_sd=0.002)
    paired = stats.difference(var, base)
    unpaired = stats.difference({s + 10: v for s, v in var.items()}, base)  # other seeds: not paired
    assert paired.method == "paired" and paired.excludes_zero
    assert unpaired.method == "welch" and not unpaired.excludes_zero
    assert unpaired.diff == pytest.approx(paired.diff, abs=1e-12)


def test_welch_matches_scipy():
    sp = pytest.importorskip("scipy.stats")
    x, y = [2.1, 2.3, 2.05, 2.2], [2.0, 2.02, 1.9, 2.1, 1.95, 2.3]
    d = stats.welch_interval(x, y)
    ci = sp.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert (d.lo, d.hi) == pytest.approx((ci.low, ci.high), rel=1e-7)
    p = stats.paired_interval([a - b for a, b in zip(x, y[:4], strict=True)])
    ci = sp.ttest_rel(x, y[:4]).confidence_interval(0.95)
    assert (p.lo, p.hi) == pytest.approx((ci.low, ci.high), rel=1e-7)


def test_one_seed_gives_a_difference_without_interval():
    d = stats.difference({0: 2.5}, {0: 2.4})
    assert d.diff == pytest.approx(0.1) and d.lo is None and d.hi is None
    assert not d.excludes_zero and d.note == "1 seed"
    d = stats.difference({0: 2.5, 1: 2.6}, {7: 2.4})  # unpaired, one side has one value
    assert d.lo is None and d.note == "1 seed" and d.diff == pytest.approx(0.15)
    assert stats.difference({}, {0: 1.0}).note == "variant: no run reports it"


def test_directions():
    assert stats.direction("val_bpb") == "lower"
    assert stats.direction("tasks/bpb-pydocs/bpb") == "lower"
    assert stats.direction("val_loss") == "lower"
    assert stats.direction("tasks/shakespeare-cloze/acc_norm") == "higher"
    assert stats.direction("probes/genre/linear_acc") == "higher"
    assert stats.direction("sequences") is None


# --- the table against the runs' own files ---------------------------------------------------------


def make_sweep(root: Path, deltas: dict[str, float], seeds=(0, 1, 2), failed: dict | None = None) -> dict:
    """A sweep folder of fake runs: variant v, seed s -> v/seed-s with val_bpb = 2 + seed noise + deltas[v]."""
    g = np.random.default_rng(7)
    noise = {s: g.normal(0, 0.03) for s in seeds}
    variants = []
    for i, (name, delta) in enumerate(deltas.items()):
        runs = []
        for s in seeds:
            rel = f"{name}/seed-{s}"
            if failed and (name, s) in failed:
                runs.append({"seed": s, "run_dir": rel, "status": "failed", "error": failed[(name, s)]})
                continue
            jitter = g.normal(0, 0.002)
            m = task_metrics(2.0 + noise[s] + delta + jitter, 0.4 + noise[s] - delta + jitter, 2.5 + delta + jitter)
            fake_run(root, rel, s, m, overrides=(f"train.lr={0.001 * (i + 1)}",), curve_offset=delta,
                     report=s == 0)
            runs.append({"seed": s, "run_dir": rel, "status": "done", "error": None})
        variants.append({"name": name, "overrides": {"train.lr": 0.001 * (i + 1)}, "steps": 10, "tokens": 2560,
                         "flops": None, "runs": runs})
    plan = {"name": "planted", "baseline": next(iter(deltas)), "metrics": None, "budget": None,
            "variants": variants}
    atomic.write_json(root / "sweep.json", plan)
    return plan


def test_table_numbers_equal_the_runs_metrics(tmp_path):
    plan = make_sweep(tmp_path, {"base": 0.0, "worse": 0.05, "same": 0.0})
    index = write_sweep_report(tmp_path, plan)
    assert index == tmp_path / "report" / "index.html"
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert data["metrics"] == ["val_bpb", "tasks/shakespeare-cloze/acc", "tasks/bpb-shakespeare-folio/bpb"]
    rows = {r["name"]: r for r in data["variants"]}

    def own(variant: str, path: list[str]) -> dict[int, float]:
        out = {}
        for s in (0, 1, 2):
            node = json.loads((tmp_path / variant / f"seed-{s}" / "eval" / "metrics.json").read_text())
            for p in path:
                node = node[p]
            out[s] = node
        return out

    for variant in rows:
        for metric in data["metrics"]:
            values = own(variant, metric.split("/"))
            cell = rows[variant]["metrics"][metric]
            assert cell["n"] == 3
            assert cell["values"] == {str(s): v for s, v in values.items()}
            assert cell["mean"] == pytest.approx(np.mean(list(values.values())), abs=1e-12)
            assert cell["std"] == pytest.approx(np.std(list(values.values()), ddof=1), abs=1e-12)
            if variant != "base":
                base = own("base", metric.split("/"))
                diffs = [values[s] - base[s] for s in values]
                assert cell["diff"]["method"] == "paired"
                assert cell["diff"]["diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
    worse, same = rows["worse"]["metrics"], rows["same"]["metrics"]
    assert worse["val_bpb"]["diff"]["excludes_zero"] and worse["val_bpb"]["diff"]["verdict"] == "worse"
    assert worse["val_bpb"]["diff"]["lo"] < 0.05 < worse["val_bpb"]["diff"]["hi"]
    assert worse["tasks/shakespeare-cloze/acc"]["diff"]["verdict"] == "worse"  # accuracy fell by 0.05
    assert not same["val_bpb"]["diff"]["excludes_zero"] and same["val_bpb"]["diff"]["verdict"] is None
    assert "diff" not in rows["base"]["metrics"]["val_bpb"]
    # tokens and FLOPs come from the runs: tokens x the model's training FLOPs per token
    from kiln.model.config import TransformerConfig
    from kiln.model.flops import flops_per_token

    recipe = load_recipe("demo", SMALL)
    fpt = flops_per_token(TransformerConfig.from_recipe(recipe.model, VOCAB, 64), 64)
    assert rows["base"]["tokens"] == 2560 and rows["base"]["steps"] == 10
    assert rows["base"]["flops"] == pytest.approx(2560 * fpt)
    assert rows["base"]["flops_source"] == "measured"


def test_explicit_metrics_and_baseline(tmp_path):
    plan = make_sweep(tmp_path, {"a": 0.0, "b": 0.05}, seeds=(0, 1))
    plan = {**plan, "metrics": ["val_loss", "probes/genre/linear_acc"], "baseline": "b"}
    write_sweep_report(tmp_path, plan)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert data["baseline"] == "b" and data["metrics"] == ["val_loss", "probes/genre/linear_acc"]
    a = data["variants"][0]["metrics"]
    assert a["val_loss"]["diff"]["diff"] == pytest.approx(-0.05 * 1.3, abs=0.01)
    assert a["probes/genre/linear_acc"]["diff"]["diff"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="baseline 'nope' is not a variant"):
        write_sweep_report(tmp_path, {**plan, "baseline": "nope"})


def test_a_failed_seed_drops_out_of_the_pairs():
    var, base = planted(0.05, n=4)
    del var[3]  # seed 3 of the variant failed
    d = stats.difference(var, base)
    assert d.method == "paired" and d.n == 3 and d.note == "paired on seeds 0, 1, 2"
    assert d.diff == pytest.approx(np.mean([var[s] - base[s] for s in range(3)]), abs=1e-12)
    assert d.excludes_zero


def test_no_spread_across_seeds_claims_no_interval():
    """Equal per-seed differences (an accuracy stuck at one answer) would give a 0-width interval that "excludes
    0" on two equal numbers: no interval instead, paired and unpaired."""
    from kiln.experiments.stats import NO_SPREAD, difference

    paired = difference({0: 0.49, 1: 0.49}, {0: 0.5, 1: 0.5})
    assert paired.diff == pytest.approx(-0.01) and paired.lo is None and not paired.excludes_zero
    assert paired.note.startswith(NO_SPREAD)
    noisy = difference({0: 0.27, 1: 0.28333333333333333}, {0: 0.2766666666666667, 1: 0.29})  # float noise only
    assert noisy.lo is None and not noisy.excludes_zero
    unpaired = difference({0: 0.49, 1: 0.49}, {2: 0.5, 3: 0.5})
    assert unpaired.lo is None and unpaired.note.startswith(NO_SPREAD)
