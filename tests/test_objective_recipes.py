"""Every objective recipe runs end to end (corpus -> ... -> report) on a tiny corpus."""

from __future__ import annotations

import pytest

from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.synthetic import tiny_overrides, write_jsonl_corpus

RECIPES = ["mlm", "electra", "fim", "ul2", "codegen2", "mp3", "clm-mlm", "mixture"]


@pytest.mark.parametrize("name", RECIPES)
def test_objective_recipe_runs_end_to_end(tmp_path, name):
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", n_docs=60)
    recipe = load_recipe(name, [*tiny_overrides(corpus, steps=4), "generate.max_new_tokens=4"])
    results = run_pipeline(recipe, RunDir(tmp_path / "run"))
    assert "train" in results
    assert (tmp_path / "run" / "train" / "checkpoints" / "step-000004" / "model.safetensors").exists()
