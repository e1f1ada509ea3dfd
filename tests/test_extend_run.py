"""Extending a finished run (issue 12, point 9): ``train.steps`` raised on a trained run continues it from its
last checkpoint when the schedule allows; anything else that changed is still refused."""

from __future__ import annotations

import json
import shutil

import pytest

from kiln.recipe import load_recipe
from kiln.run import RunDir, RunError
from kiln.stages import plan_status, run_pipeline
from kiln.train.extend import extension_check, schedule_blocker
from tests.synthetic import tiny_overrides, tiny_run, write_jsonl_corpus

N = 10


def train_rows(run: RunDir) -> list[dict]:
    return [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def constant_run(tmp_path_factory):
    """A constant-schedule run trained to N steps, and the overrides that made it."""
    root = tmp_path_factory.mktemp("extend")
    run, overrides = tiny_run(root, "train", steps=N, extra=("train.schedule=constant",))
    return root, overrides, run


def test_extending_to_2n_keeps_the_first_n_steps_and_continues(constant_run, tmp_path):
    root, overrides, src = constant_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(src.root, run.root)
    before = train_rows(run)
    assert [r["step"] for r in before] == list(range(1, N + 1))
    longer = load_recipe("demo", [*overrides, f"train.steps={2 * N}"])
    assert [r["action"] for r in plan_status(longer, run, until="train") if r["stage"] == "train"] == ["extend"]
    out = run_pipeline(longer, run, until="train")
    assert out["train"]["stats"]["steps"] == 2 * N
    rows = train_rows(run)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 2 * N + 1))  # continued, no step logged twice
    val_steps = [r["step"] for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["kind"] == "val"]
    assert len(val_steps) == len(set(val_steps))
    assert [r["loss"] for r in rows[:N]] == [r["loss"] for r in before]
    # the same as training 2N steps at once: the first N steps' losses match a fresh 2N-step run
    fresh = RunDir(tmp_path / "fresh")
    run_pipeline(longer, fresh, until="train")
    assert [r["loss"] for r in train_rows(fresh)[:N]] == pytest.approx([r["loss"] for r in before], rel=1e-5)
    assert [r["loss"] for r in train_rows(fresh)[N:]] == pytest.approx([r["loss"] for r in rows[N:]], rel=1e-3)


def test_another_change_with_the_steps_is_still_refused(constant_run, tmp_path):
    root, overrides, src = constant_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(src.root, run.root)
    recipe = load_recipe("demo", [*overrides, f"train.steps={2 * N}", "train.lr=0.01"])
    with pytest.raises(RunError, match="different configuration"):
        run_pipeline(recipe, run, until="train")


def test_a_cosine_run_is_refused_naming_the_schedule(tmp_path):
    overrides = [*tiny_overrides(write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=60), steps=4),
                 "train.schedule=cosine"]
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    with pytest.raises(RunError, match="schedule 'cosine'.*init_from"):
        run_pipeline(load_recipe("demo", [*overrides, "train.steps=8"]), run, until="train")


@pytest.mark.parametrize(("extra", "allowed"), [
    (["train.schedule=constant", "train.warmup_steps=2"], True),
    (["train.schedule=constant", "train.warmup_steps=8"], False),  # warm-up was shortened to steps // 2
    (["train.schedule=wsd", "train.warmup_steps=2"], False),
    (["train.schedule=cosine", "train.warmup_steps=2"], False),
    (["train.schedule=constant", "train.warmup_steps=2", "train.objective=clm_mlm"], False),
])
def test_schedule_blocker(extra, allowed):
    recipe = load_recipe("demo", ["train.steps=20", *extra])
    assert (schedule_blocker(recipe, 10) == "") is allowed


def test_extension_check_needs_everything_else_equal():
    recipe = load_recipe("demo", ["train.steps=20", "train.schedule=constant", "train.warmup_steps=2"])
    old = {"complete": True, "config": {"train": {"steps": 10, "schedule": "constant"}}, "inputs": {"tokens": "a"}}
    new = {"config": {"train": {"steps": 20, "schedule": "constant"}}, "inputs": {"tokens": "a"}}
    assert extension_check(old, new, recipe) == (10, "")
    assert extension_check(old, {**new, "inputs": {"tokens": "b"}}, recipe) is None
    assert extension_check({**old, "complete": False}, new, recipe) is None
    shorter = load_recipe("demo", ["train.steps=5", "train.schedule=constant"])
    assert extension_check(old, {**new, "config": {"train": {"steps": 5, "schedule": "constant"}}}, shorter) is None
