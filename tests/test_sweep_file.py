"""Sweep files (kiln/experiments/sweep_file.py), expansion and --vary grids (expand.py), budgets (budget.py):
bad files are refused before anything runs, naming the file, the variant and the field."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kiln.cli import app
from kiln.experiments.budget import apply_budget, cost, flops_per_token, tokens_per_step
from kiln.experiments.expand import expand, parse_vary, recipe_name, split_values, vary_spec
from kiln.experiments.runner import plan_sweep
from kiln.experiments.sweep_file import SweepError, as_override, load_sweep, validate_sweep
from kiln.model.config import TransformerConfig
from kiln.model.flops import flops_per_token as model_fpt
from kiln.recipe import apply_override, load_recipe
from kiln.store import StageStore
from tests.synthetic import write_jsonl_corpus

SMALL = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "data.seq_len": 64,
         "tokenizer.vocab_size": 600, "train.steps": 10, "train.batch_tokens": 256, "train.warmup_steps": 2}


def write_sweep(tmp_path: Path, **fields) -> Path:
    tree = {"base": "demo", "overrides": SMALL, "variants": {"a": {}, "b": {"train.lr": 0.01}}, **fields}
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def refused(tmp_path: Path, *needles: str, **fields) -> None:
    """The sweep is refused by load_sweep and by `kiln ablate` (exit 2) before any run directory exists."""
    path = write_sweep(tmp_path, **fields)
    with pytest.raises(SweepError) as exc:
        load_sweep(path)
    for needle in (str(path), *needles):
        assert needle in str(exc.value), (needle, str(exc.value))
    root = tmp_path / "runs"
    res = CliRunner().invoke(app, ["ablate", str(path), "--root", str(root)])
    assert res.exit_code == 2, res.output
    assert not root.exists()


def test_unknown_top_level_field_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, "variantz: unknown field", variantz={"x": {}})


def test_empty_variants_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, "variants:", variants={})


def test_variant_failing_recipe_validation_names_variant_and_field(tmp_path: Path) -> None:
    refused(tmp_path, "variant 'bad'", "train.lr", variants={"ok": {}, "bad": {"train.lr": -1}})
    refused(tmp_path, "variant 'typo'", "train.lrr: unknown field", variants={"ok": {}, "typo": {"train.lrr": 1}})
    refused(tmp_path, "variant 'deep'", "model.n_layer", variants={"deep": {"model.n_layer.x": 1}})


def test_bad_shared_overrides_unknown_baseline_and_bad_seeds(tmp_path: Path) -> None:
    refused(tmp_path, "(overrides)", "train.steps", overrides={**SMALL, "train.steps": 0})
    refused(tmp_path, "baseline", "'nope' is not a variant", baseline="nope")
    refused(tmp_path, "seeds", seeds=0)
    refused(tmp_path, "seeds", seeds=[1, 1])
    refused(tmp_path, "budget", budget="steps")
    refused(tmp_path, "budget", budget={"tokens": -5})
    refused(tmp_path, "variant name", variants={"a b": {}})


def test_a_recipe_given_as_sweep_file_says_use_vary(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 5}\nmodel: {n_layer: 1}\n")
    with pytest.raises(SweepError, match="is a recipe, not a sweep file.*--vary"):
        load_sweep(path)


def test_base_is_relative_to_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text("name: mine\ntrain: {steps: 7, warmup_steps: 1}\n")
    path = write_sweep(tmp_path, base="sub/mine.yaml", overrides={})
    sweep = load_sweep(path)
    assert sweep.name == "sw" and sweep.baseline == "a"
    assert sweep.recipes["a"].train.steps == 7 and sweep.recipes["b"].train.lr == 0.01


@pytest.mark.parametrize("value", [[{"step": "normalize"}, {"step": "length", "min_chars": 5}], {"a": [1, 2]},
                                   "1.0", "yes", "", 3e-4, None, True, "it's: odd"])
def test_as_override_round_trips_yaml_values(value) -> None:
    tree: dict = {}
    apply_override(tree, as_override("x.y", value))
    assert tree == {"x": {"y": value}}


def test_expansion_sets_seed_name_and_run_dir(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, seeds=[0, 7], name="lrs"))
    plan = plan_sweep(sweep, tmp_path / "runs")
    got = [(r.variant, r.seed, r.recipe.name, r.recipe.train.seed, r.run_dir) for r in plan.runs]
    root = tmp_path / "runs" / "lrs"
    assert got == [("a", 0, "lrs--a--s0", 0, root / "a" / "seed-0"), ("a", 7, "lrs--a--s7", 7, root / "a" / "seed-7"),
                   ("b", 0, "lrs--b--s0", 0, root / "b" / "seed-0"), ("b", 7, "lrs--b--s7", 7, root / "b" / "seed-7")]
    assert plan.runs[2].recipe.train.lr == 0.01 and plan.runs[0].recipe.train.lr == load_recipe("demo").train.lr
    assert not (tmp_path / "runs").exists()  # planning writes nothing
    doc = plan.document()
    assert [v["name"] for v in doc["variants"]] == ["a", "b"] and doc["baseline"] == "a"
    assert [r["run_dir"] for r in doc["variants"][1]["runs"]] == ["b/seed-0", "b/seed-7"]
    assert {r["status"] for v in doc["variants"] for r in v["runs"]} == {"pending"}


def test_split_values_keeps_brackets_and_quotes_whole() -> None:
    assert split_values("0.001,0.003") == ["0.001", "0.003"]
    assert split_values("[1,2],{a: 1, b: 2},'x,y'") == ["[1,2]", "{a: 1, b: 2}", "'x,y'"]
    key, values, _ = parse_vary("corpus.select={edition: [modern]},{edition: [folio, modern]}")
    assert key == "corpus.select" and values == [{"edition": ["modern"]}, {"edition": ["folio", "modern"]}]
    for bad in ("train.lr", "train.lr=", "train.lr=1,,2", "train.lr=1,1"):
        with pytest.raises(SweepError, match="--vary"):
            parse_vary(bad)


def test_vary_grid_is_the_cartesian_product_with_the_first_values_as_baseline() -> None:
    spec = vary_spec("demo", ["train.lr=0.001,0.003", "model.n_layer=1,2,3"], 2,
                     [f"{k}={v}" for k, v in SMALL.items() if k != "model.n_layer"], "g")
    sweep = validate_sweep(spec, "--vary")
    assert len(sweep.recipes) == 6 and sweep.seeds == [0, 1]
    assert sweep.baseline == "train.lr=0.001,model.n_layer=1"
    assert sweep.recipes["train.lr=0.003,model.n_layer=2"].train.lr == 0.003
    assert sweep.recipes["train.lr=0.003,model.n_layer=2"].model.n_layer == 2
    assert {r.data.seq_len for r in sweep.recipes.values()} == {64}
    runs = expand("g", sweep.recipes, [0], Path("root"))
    assert runs[0].recipe.name == recipe_name("g", "train.lr=0.001,model.n_layer=1", 0) == \
        "g--train.lr-0.001-model.n_layer-1--s0"
    assert runs[0].run_dir == Path("root") / "train.lr=0.001,model.n_layer=1" / "seed-0"
    with pytest.raises(SweepError, match=r"variant 'train.lr=-1'(.|\n)*train.lr: Input should be greater than 0"):
        validate_sweep(vary_spec("demo", ["train.lr=0.1,-1"], 1, [], "g"), "--vary")


def test_tokens_per_step_is_what_the_trainer_consumes() -> None:
    r = load_recipe("demo", ["data.seq_len=64", "train.batch_tokens=200"])
    assert tokens_per_step(r) == 192  # 3 whole rows
    r = load_recipe("demo", ["data.seq_len=64", "train.batch_tokens=10"])
    assert tokens_per_step(r) == 64  # at least one row


def test_equal_tokens_budget(tmp_path: Path) -> None:
    variants = {"base": {}, "big-batch": {"train.batch_tokens": 1024}, "odd": {"train.batch_tokens": 384}}
    sweep = load_sweep(write_sweep(tmp_path, budget="tokens", variants=variants))
    recipes, costs = apply_budget(sweep.recipes, "tokens", sweep.baseline)
    # 2560 baseline tokens: 2560/1024 = 2.5 -> 2 (a tie goes to the fewer steps), 2560/384 = 6.67 -> 7
    assert [costs[v]["steps"] for v in variants] == [10, 2, 7]
    assert costs["base"]["tokens"] == 2560 and costs["odd"]["tokens"] == 7 * 384
    assert recipes["big-batch"].train.steps == 2 and recipes["big-batch"].train.batch_tokens == 1024
    recipes, costs = apply_budget(sweep.recipes, {"tokens": 25600}, sweep.baseline)
    assert [costs[v]["steps"] for v in variants] == [100, 25, 67]
    recipes, costs = apply_budget(sweep.recipes, {"tokens": 1}, sweep.baseline)
    assert {c["steps"] for c in costs.values()} == {1}  # at least one step, warm-up still valid


def test_equal_flops_budget_uses_the_models_flops_per_token(tmp_path: Path) -> None:
    variants = {"small": {}, "wide": {"model.d_model": 64}, "deep": {"model.n_layer": 3}}
    sweep = load_sweep(write_sweep(tmp_path, budget="flops", variants=variants))
    recipes, costs = apply_budget(sweep.recipes, "flops", "small")
    small = sweep.recipes["small"]
    fpt = model_fpt(TransformerConfig.from_recipe(small.model, 600, 64), 64)
    assert flops_per_token(small) == fpt
    budget = 10 * 256 * fpt
    assert costs["small"] == {"steps": 10, "tokens": 2560, "flops": budget}
    for v in ("wide", "deep"):
        per_step = 256 * flops_per_token(sweep.recipes[v])
        assert per_step > 256 * fpt
        assert costs[v]["steps"] == round(budget / per_step) < 10
        assert recipes[v].train.steps == costs[v]["steps"]
        assert abs(costs[v]["flops"] - budget) <= per_step / 2
    assert cost(recipes["deep"])["flops"] == costs["deep"]["flops"]


def test_equal_flops_budget_counts_only_unmasked_weights(tmp_path: Path) -> None:
    """SPDF's count: a 75%-sparse variant gets the dense steps x the dense/sparse FLOP ratio; a mask dense after
    step k (dense_from) is solved for by iteration and lands within half a step of the budget."""
    from kiln.model.flops import sparse_flops_ratio

    spdf = [{"name": "spdf", "sparsity": 0.75}]
    late = [{"name": "spdf", "sparsity": 0.75, "dense_from": 5}]
    gmp = [{"name": "gradual_pruning", "final_sparsity": 0.75}]
    variants = {"dense": {}, "spdf": {"train.callbacks": spdf}, "late": {"train.callbacks": late},
                "gmp": {"train.callbacks": gmp}}
    sweep = load_sweep(write_sweep(tmp_path, budget="flops", variants=variants))
    recipes, costs = apply_budget(sweep.recipes, "flops", "dense")
    cfg = TransformerConfig.from_recipe(sweep.recipes["dense"].model, 600, 64)
    ratio = sparse_flops_ratio(cfg, 64, 0.75)
    assert 1.3 < ratio < 3
    assert costs["spdf"]["steps"] == round(10 * ratio) > 10
    budget = costs["dense"]["flops"]
    dense_step = 256 * flops_per_token(recipes["dense"])  # no step of any variant costs more
    for v in ("spdf", "late", "gmp"):
        assert abs(costs[v]["flops"] - budget) <= dense_step / 2, v
    assert 10 < costs["late"]["steps"] < costs["spdf"]["steps"]  # dense after step 5 of its run
    assert costs["gmp"]["steps"] == round(10 / (1 - (1 - 1 / sparse_flops_ratio(cfg, 64, 0.75 * 0.625))))


def test_ablate_is_registered_and_vary_needs_a_recipe(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["ablate", "--help"])
    assert res.exit_code == 0 and "--vary" in res.output and "--compare" in res.output
    res = CliRunner().invoke(app, ["ablate", "train.lr=1", "--vary", "train.lr=1,2", "--root", str(tmp_path / "r")])
    assert res.exit_code == 2 and not (tmp_path / "r").exists()


def _hold_lock(root: Path, ready, marker: Path, die: bool) -> None:
    store = StageStore(root)
    store.acquire("corpus", "fp")
    ready.set()
    time.sleep(1.0)
    if die:  # a builder killed mid-build: the OS frees its lock
        os.kill(os.getpid(), signal.SIGKILL)
    marker.write_text("built")
    store.release("corpus", "fp")


@pytest.mark.parametrize("die", [False, True])
def test_store_build_lock_makes_a_second_builder_wait(tmp_path: Path, die: bool) -> None:
    ctx = mp.get_context("fork")
    ready, marker = ctx.Event(), tmp_path / "marker"
    p = ctx.Process(target=_hold_lock, args=(tmp_path / "store", ready, marker, die))
    p.start()
    assert ready.wait(20)
    store = StageStore(tmp_path / "store")
    t0 = time.monotonic()
    store.acquire("corpus", "fp")
    try:
        assert time.monotonic() - t0 > 0.5 and marker.exists() != die
    finally:
        store.release("corpus", "fp")
        p.join()
    store.acquire("corpus", "other")  # another fingerprint: its own lock, free
    store.release("corpus", "other")


def test_vary_dry_run_shows_runs_budgets_and_shared_stages(tmp_path: Path) -> None:
    corpus = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=20)
    ovs = [f"{k}={v}" for k, v in SMALL.items()] + [f"corpus.sources=[{{kind: jsonl, path: '{corpus}'}}]"]
    args = ["ablate", "demo", *ovs, "--vary", "train.lr=0.001,0.003", "--seeds", "2", "--name", "g", "--root",
            str(tmp_path / "runs"), "--dry-run"]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "4 runs (2 variants x 2 seeds), baseline train.lr=0.001" in res.output
    assert "corpus (1 build for 4 runs), tokenizer (1 build for 4 runs), tokens (1 build for 4 runs)" in res.output
    assert "train.lr=0.003" in res.output and "2,560" in res.output
    assert not (tmp_path / "runs").exists()


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "kiln" / "recipes" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_sweep_file_validates(path):
    """Each sweep file under kiln/recipes/sweeps loads and every variant is a valid recipe (what `kiln ablate`
    checks before running anything), with 2+ seeds and a baseline among its variants."""
    sweep = load_sweep(path)
    assert len(sweep.recipes) >= 2 and len(sweep.spec.seeds if isinstance(sweep.spec.seeds, list) else
                                           range(sweep.spec.seeds)) >= 2
    assert (sweep.spec.baseline or next(iter(sweep.recipes))) in sweep.recipes
