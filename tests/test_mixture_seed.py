"""The trainer hands ``train.seed`` to the objective: a mixture's draws follow it (issue 12.6)."""

from __future__ import annotations

from pathlib import Path

from kiln.recipe import with_overrides
from kiln.tokenizer.train import load_token_bytes
from kiln.train.trainer import Trainer, load_train_data
from tests.conftest import TinyRun

MIXTURE = ["train.objective=mixture", "train.objective_args={weights: {clm: 1.0, mlm: 1.0}}"]


def draws(tiny: TinyRun, out: Path, extra: list[str]) -> list[str]:
    """The mixture's choice for micro-batch 0 of steps 0..99 in a trainer built on the tiny run's tokens."""
    recipe = with_overrides(tiny.recipe, [*MIXTURE, *extra])
    token_bytes = load_token_bytes(tiny.run.stage("tokenizer"))
    data = load_train_data(recipe, tiny.run.stage("tokens"), token_bytes)
    trainer = Trainer(recipe, data, len(token_bytes), out / "train", out / "metrics.jsonl")
    try:
        picks = []
        for step in range(100):
            trainer.objective.begin_step(step)
            picks.append(trainer.objective.choose())
        return picks
    finally:
        trainer.close()


def test_trainer_mixture_draws_follow_train_seed(tiny_trained: TinyRun, tmp_path: Path) -> None:
    seed0 = draws(tiny_trained, tmp_path / "a", ["train.seed=0"])
    assert seed0 == draws(tiny_trained, tmp_path / "b", ["train.seed=0"])  # one seed reproduces
    assert seed0 != draws(tiny_trained, tmp_path / "c", ["train.seed=1"])  # another seed draws differently
    pinned = ["train.objective_args={weights: {clm: 1.0, mlm: 1.0}, seed: 3}"]
    assert draws(tiny_trained, tmp_path / "d", ["train.seed=0", *pinned]) == \
        draws(tiny_trained, tmp_path / "e", ["train.seed=1", *pinned])  # an explicit mixture seed pins them
