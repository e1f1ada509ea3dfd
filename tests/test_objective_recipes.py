"""Every objective recipe runs end to end (corpus -> ... -> report) on a tiny corpus."""

from __future__ import annotations

import json

import pytest

from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.synthetic import tiny_overrides, write_jsonl_corpus

ENCODERS = {"mlm", "electra", "mp3", "ernie-gram", "clm-mlm"}  # no meaningful LM-head bits per byte
RECIPES = ["mlm", "electra", "fim", "ul2", "codegen2", "mp3", "ernie-gram", "clm-mlm", "mixture"]


@pytest.mark.parametrize("name", RECIPES)
def test_objective_recipe_runs_end_to_end(tmp_path, name):
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", n_docs=60)
    recipe = load_recipe(name, [*tiny_overrides(corpus, steps=4), "generate.max_new_tokens=4"])
    results = run_pipeline(recipe, RunDir(tmp_path / "run"))
    assert "train" in results
    assert (tmp_path / "run" / "train" / "checkpoints" / "step-000004" / "model.safetensors").exists()

    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    if name in ENCODERS:  # validated by the objective's own loss, never by the untrained LM head
        assert metrics["val_bpb"] is None and metrics["val_objective"] == recipe.train.objective
        assert all("val_bpb" not in r and r["val_objective"] == recipe.train.objective for r in val)
    else:
        assert metrics["val_bpb"] > 0 and "val_objective" not in metrics
        assert all(r["val_bpb"] > 0 for r in val)
    assert metrics["val_loss"] > 0 and val


def test_bpb_target_needs_a_causal_objective(tmp_path):
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", n_docs=60)
    recipe = load_recipe("mlm", [*tiny_overrides(corpus, steps=4), "train.stop_at_val_bpb=2.0"])
    with pytest.raises(ValueError, match="stop_at_val_bpb needs a causal LM objective; 'mlm'"):
        run_pipeline(recipe, RunDir(tmp_path / "run"), until="train")
