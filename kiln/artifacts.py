"""Where a run's artifacts are, for the stages and for every reader downstream of them.

The newest checkpoint of the last model-producing stage (``train`` or a post stage after it), the folder
holding ``token_bytes.npy`` (the tokenizer's, or the tokens folder of a synthetic run), the run's saved
recipe. eval, infer and export read a run through these, never through the pipeline (:mod:`kiln.stages`).
"""

from __future__ import annotations

from pathlib import Path

from kiln.recipe import Recipe, RecipeError, load_recipe
from kiln.run import RunDir, RunError
from kiln.stage_graph import STAGES, model_chain, stage_inputs_of


def synthetic(recipe: Recipe) -> bool:
    """True when ``tokens.synthetic`` replaces corpus -> tokenizer -> tokens."""
    return getattr(recipe.tokens, "synthetic", None) is not None


def token_bytes_dir(recipe: Recipe, run: RunDir) -> Path:
    """The folder holding ``token_bytes.npy``: the tokens folder of a synthetic run, else the tokenizer's."""
    return run.stage("tokens") if synthetic(recipe) else run.stage("tokenizer")


def run_recipe(run: RunDir) -> Recipe:
    if not run.recipe_path.exists():
        raise RunError(f"{run.root}: no recipe.yaml; run the pipeline first")
    return load_recipe(run.recipe_path)


def _newest_in(run: RunDir, stage: str) -> Path:
    from kiln.model.load import latest_checkpoint

    ckpt = latest_checkpoint(run.stage(stage) / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{run.stage(stage)}: no checkpoint; run the {stage} stage first")
    return ckpt


def final_checkpoint(run: RunDir, recipe: Recipe | None = None) -> Path:
    """The newest checkpoint of the last model-producing stage (train, or the last enabled post stage)."""
    if recipe is None:
        try:
            recipe = run_recipe(run)
        except (RunError, RecipeError):  # a bare run folder, or a recipe.yaml this kiln cannot read: train's
            return _newest_in(run, "train")
    return _newest_in(run, model_chain(recipe)[-1])


def source_checkpoint(recipe: Recipe, run: RunDir, name: str) -> Path:
    """For post stage ``name``: the newest checkpoint of the model stage it follows."""
    (dep,) = [d for d in stage_inputs_of(name, recipe) if STAGES[d].model]
    return _newest_in(run, dep)
