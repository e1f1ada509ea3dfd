"""Trainer extension points: callbacks at fixed points, objective arguments checked when the recipe loads,
objective metrics in metrics.jsonl."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln.recipe import RecipeError, load_recipe
from kiln.tokenizer.train import load_token_bytes
from kiln.train.trainer import Trainer, load_train_data
from tests.callback_probe import Events, ZeroLoss
from tests.synthetic import tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("cb")
    return tiny_run(root, "tokens", steps=6)


def train(tokens, tmp_path, extra: list[str], callbacks=None) -> tuple[Trainer, list[dict]]:
    run, overrides = tokens
    recipe = load_recipe("demo", [*overrides, *extra])
    token_bytes = load_token_bytes(run.stage("tokenizer"))
    data = load_train_data(recipe, run.stage("tokens"), token_bytes)
    metrics = tmp_path / "metrics.jsonl"
    trainer = Trainer(recipe, data, len(token_bytes), tmp_path / "train", metrics, callbacks=callbacks)
    trainer.fit()
    return trainer, [json.loads(line) for line in metrics.read_text().splitlines()]


# ----------------------------------------------------------------------------- recipe validation


def test_objective_args_table_matches_every_objective_signature():
    from kiln.objectives import OBJECTIVES
    from kiln.objectives.spec import OBJECTIVE_ARGS

    assert set(OBJECTIVE_ARGS) == set(OBJECTIVES)
    for name, cls in OBJECTIVES.items():
        params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        assert OBJECTIVE_ARGS[name] == {n: p.default is inspect.Parameter.empty for n, p in params.items()}, name


@pytest.mark.parametrize("overrides, message", [
    (["train.objective=mlm", "train.objective_args={ratioo: 0.2}"],
     "train.objective_args.ratioo: not an argument of objective 'mlm'; accepted: ratio, mask_prob, random_prob"),
    (["train.objective=mixture", "train.objective_args={weights: {clm: 1}, args: {clm: {x: 1}}}"],
     "train.objective_args.args.clm.x: not an argument of objective 'clm'"),
    (["train.objective=mixture", "train.objective_args={args: {}}"], "train.objective_args.weights: required"),
    (["train.objective=mixture", "train.objective_args={weights: {mixture: 1}}"],
     "train.objective_args.weights.mixture: not an objective a mixture can hold"),
    (["train.callbacks=[{name: nope}]"], "train.callbacks.0.name: unknown callback 'nope'; registered: "),
    (["train.callbacks=[{name: param_norm}, {name: magnitude_mask}]"],
     "train.callbacks.1.sparsity: required argument of MagnitudeMask is missing"),
    (["train.callbacks=[{name: magnitude_mask, sparsity: 0.5, level: 2}]"],
     "train.callbacks.0.level: unknown argument of MagnitudeMask; accepted: sparsity, include"),
    (["train.callbacks=[{sparsity: 0.5}]"], "train.callbacks.0.name: each callback needs a `name`"),
])
def test_bad_objective_args_and_callbacks_fail_when_the_recipe_loads(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe("demo", overrides)
    assert message in str(err.value)


def test_recipe_validation_stays_torch_free():
    code = ("import sys; from kiln.recipe import load_recipe; load_recipe('demo', ['train.objective=mixture', "
            "'train.objective_args={weights: {clm: 1, mlm: 1}}', "
            "'train.callbacks=[{name: magnitude_mask, sparsity: 0.5}, {name: param_norm}]']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- callbacks in the loop


def test_callback_points_order_and_metrics(tokens, tmp_path):
    probe = Events()
    trainer, rows = train(tokens, tmp_path, ["train.steps=4", "train.eval_every=2", "train.checkpoint_every=2",
                                             "train.grad_clip=0.001"], callbacks=[probe])
    names = [e[0] for e in probe.events]
    assert names[0] == "on_train_begin" and names[-1] == "on_train_end"
    assert names.count("after_backward") == names.count("after_optimizer_step") == 4
    steps = [e[1] for e in probe.events if e[0] == "after_optimizer_step"]
    assert steps == [1, 2, 3, 4]  # the step just completed
    assert [e for e in probe.events if e[0] == "on_checkpoint"] == [("on_checkpoint", 2, True),
                                                                    ("on_checkpoint", 4, True)]
    train_rows = [r for r in rows if r["kind"] == "train"]
    # after backward, before clipping: the callback's norm is the logged pre-clip norm, far above the clip
    assert [r["grad_norm"] for r in train_rows] == pytest.approx(probe.grad_norms, rel=1e-5)
    assert min(probe.grad_norms) > 0.01
    assert [r["probe_step_seen"] for r in train_rows] == [1, 2, 3, 4]  # callback metrics in the train rows
    val_rows = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val_rows] == [0, 2, 4] and all(r["probe_eval"] == 1.0 for r in val_rows)
    assert [e[2] for e in probe.events if e[0] == "on_eval"] == [r["val_loss"] for r in val_rows]


def test_micro_loss_callback_weights_the_backpropagated_loss(tokens, tmp_path):
    """A sample weight of 0 through ``micro_loss``: the weights stay exactly where they started (baseline: they
    move), while the logged loss is still the objective's."""
    extra = ["train.steps=2", "train.weight_decay=0"]
    base, base_rows = train(tokens, tmp_path / "base", extra)
    zero, zero_rows = train(tokens, tmp_path / "zero", extra, callbacks=[ZeroLoss()])
    torch.manual_seed(1337)
    fresh = zero.model_config.build()
    same = [torch.equal(a, b) for a, b in zip(zero.model.state_dict().values(), fresh.state_dict().values(),
                                              strict=True)]
    moved = [torch.equal(a, b) for a, b in zip(base.model.state_dict().values(), fresh.state_dict().values(),
                                               strict=True)]
    assert all(same) and not all(moved)
    assert zero_rows[1]["loss"] == base_rows[1]["loss"]  # step 1: same weights, same objective loss logged


def test_magnitude_mask_keeps_masked_weights_exactly_zero(tokens, tmp_path):
    trainer, rows = train(tokens, tmp_path / "mask", ["train.callbacks=[{name: magnitude_mask, sparsity: 0.5}]"])
    mask_cb = trainer.callbacks[0]
    for name, p in mask_cb.targets(trainer.model).items():
        keep = mask_cb.masks[name]
        assert 0.45 < 1 - keep.float().mean() < 0.55
        assert torch.all(p.detach()[~keep] == 0) and torch.all(p.detach()[keep] != 0)
    assert all(r["sparsity"] >= 0.5 for r in rows if r["kind"] == "train")
    # the checkpoint holds the zeros too; without the callback no weight is exactly zero
    from kiln.model.load import load_model

    saved = load_model(tmp_path / "mask" / "train")
    assert float((saved.backbone.blocks[0].attn.wq.weight == 0).float().mean()) >= 0.5
    plain, _ = train(tokens, tmp_path / "plain", [])
    assert float((plain.model.backbone.blocks[0].attn.wq.weight == 0).float().mean()) == 0.0


def test_logging_callback_and_objective_metrics_land_in_metrics_jsonl(tokens, tmp_path):
    _, rows = train(tokens, tmp_path, ["train.steps=3", "train.objective=mlm", "model.attention=bidirectional",
                                       "train.callbacks=[{name: param_norm}]"])
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 3
    for r in train_rows:
        assert r["param_norm"] > 0
        # MLM's only term is its loss: its per-target metric is the logged loss itself
        assert r["mlm_loss_per_target"] == pytest.approx(r["loss"], rel=1e-9)


def test_objective_metrics_appear_in_the_reports_training_table(tmp_path):
    from kiln.report.build import Inputs, training

    rows = [{"kind": "train", "step": 1, "loss": 2.0, "tokens": 64, "tokens_per_s": 10.0, "elapsed_s": 1.0,
             "mlm_loss_per_target": 2.0, "param_norm": 3.0},
            {"kind": "val", "step": 1, "val_loss": 2.5, "tokens": 64}]
    table = training(Inputs(tmp_path, tmp_path, rows))[0]
    assert ["final mlm_loss_per_target", 2.0] in table.rows
