"""Depth up-scaling (``kiln grow``, kiln/model/grow.py): exact layer copies, the grown model starts near its
parent's loss (and far below a fresh deep model's), ``train.init_from`` continues from it with fresh AdamW
moments, and bad input is refused naming what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from kiln.model.config import TransformerConfig
from kiln.model.grow import GrowError, duplicate_plan, grow_config, grow_model, parse_duplicate, solar_plan
from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.synthetic import tiny_run

PARENT_STEPS = 30


def _cfg(**kw) -> TransformerConfig:
    base = {"vocab_size": 64, "max_seq_len": 16, "n_layer": 4, "n_head": 2, "d_model": 16}
    return TransformerConfig(**{**base, **kw})


def _model(**kw):
    torch.manual_seed(0)
    return _cfg(**kw).build()


def _val_rows(run: RunDir) -> list[dict]:
    return [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["kind"] == "val"]


# ----------------------------------------------------------------------------- plans and exact copies


def test_layer_plans():
    assert duplicate_plan(4, 1, 3) == [0, 1, 2, 1, 2, 3]  # Yi: the middle two repeated after themselves
    assert duplicate_plan(4, 0, 4) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert parse_duplicate(" 2:3 ", 4) == [0, 1, 2, 2, 3]
    assert solar_plan(8, 2) == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]  # SOLAR: 2(n - m) = 12 layers
    assert len(solar_plan(32, 8)) == 48  # SOLAR 10.7B's 32 -> 48
    for bad, match in (("3:1", r"0 <= a < b <= n_layer \(4\)"), ("1:5", "n_layer"), ("1-3", "expected a:b")):
        with pytest.raises(GrowError, match=match):
            parse_duplicate(bad, 4)
    for m in (0, 4):
        with pytest.raises(GrowError, match=r"--solar .*0 < m < n_layer \(4\)"):
            solar_plan(4, m)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "positions": "learned", "n_kv_head": 1},
                                {"heads": {"generator": {"ratio": 0.5}, "rtd": {}}}])
def test_grown_tensors_are_the_parents_bit_for_bit(kw):
    parent = _model(**kw)
    src = duplicate_plan(4, 1, 3)
    grown = grow_model(parent, src)
    assert grown.config.n_layer == 6
    assert grown.config.to_dict() == {**parent.config.to_dict(), "n_layer": 6}
    p, g = parent.state_dict(), grown.state_dict()
    mapped = 0
    for key, tensor in g.items():
        for prefix in ("backbone.blocks.", "heads.generator.backbone.blocks."):
            if key.startswith(prefix):
                i, rest = key.removeprefix(prefix).split(".", 1)
                key = f"{prefix}{src[int(i)]}.{rest}"
                mapped += 1
                break
        assert torch.equal(tensor, p[key]), key
    assert mapped == sum(1 for k in g if ".blocks." in k)
    assert grown.tied == parent.tied
    # copies are independent tensors: training one copy of a layer leaves the other (and the parent) alone
    with torch.no_grad():
        grown.backbone.blocks[3].attn.wo.weight.add_(1.0)
    assert torch.equal(grown.backbone.blocks[1].attn.wo.weight, parent.backbone.blocks[1].attn.wo.weight)


def test_mix_ln_keeps_each_layers_norm_placement_or_is_refused():
    parent = _model(norm="mix", mix_alpha=0.25)  # 1 Post-LN layer of 4
    grown = grow_model(parent, duplicate_plan(4, 1, 3))
    assert grown.config.n_post_ln == 1
    assert [b.post_norm for b in grown.backbone.blocks] == [True] + [False] * 5
    both = grow_model(_model(norm="mix", mix_alpha=0.5), duplicate_plan(4, 0, 2))  # Post-LN layers duplicated
    assert [b.post_norm for b in both.backbone.blocks] == [True] * 4 + [False] * 2
    with pytest.raises(GrowError, match=r"model.norm: mix .*Post-LN parent layer 1 at grown layer 3"):
        grow_config(_cfg(norm="mix", mix_alpha=0.5), duplicate_plan(4, 1, 3))  # [0 1 2 1 2 3]: post after pre
    post = grow_model(_model(norm="post"), solar_plan(4, 1))
    assert all(b.post_norm for b in post.backbone.blocks)


def test_moe_layers_grow_when_the_pattern_is_kept_else_are_refused():
    from kiln.model.moe import MoEMLP

    every1 = grow_model(_model(moe={"n_experts": 2, "top_k": 1}), duplicate_plan(4, 2, 3))
    assert all(isinstance(b.mlp, MoEMLP) for b in every1.backbone.blocks)
    parent = _model(moe={"n_experts": 2, "top_k": 1, "every": 2})  # MoE at layers 1, 3
    kept = grow_model(parent, duplicate_plan(4, 1, 3))  # [0 1 2 1 2 3]: MoE at 1, 3, 5 as every=2 wants
    assert [isinstance(b.mlp, MoEMLP) for b in kept.backbone.blocks] == [False, True] * 3
    assert torch.equal(kept.backbone.blocks[3].mlp.experts[1].w_up.weight,
                       parent.backbone.blocks[1].mlp.experts[1].w_up.weight)
    with pytest.raises(GrowError, match=r"model.moe.every=2: grown layer 3 would copy parent layer 2, a dense"):
        grow_config(parent.config, duplicate_plan(4, 2, 3))


def test_masked_heads_follow_their_layers():
    cfg = grow_config(_cfg(masked_heads=[[1, 0], [3, 1]]), duplicate_plan(4, 1, 3))
    assert cfg.masked_heads == [[1, 0], [3, 0], [5, 1]]


# ----------------------------------------------------------------------------- a trained parent


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A 4-layer d32 model trained 30 steps on the synthetic JSONL corpus (~10 s on one busy core)."""
    root = tmp_path_factory.mktemp("grow")
    run, overrides = tiny_run(root, "train", steps=PARENT_STEPS, name="parent", extra=(
        "model.n_layer=4", f"train.eval_every={PARENT_STEPS}", f"train.checkpoint_every={PARENT_STEPS}"))
    return root, overrides, run


def _heldout_loss(model, run: RunDir) -> float:
    """Mean next-token loss (nats) over the validation split's tokens, as 64-token windows."""
    from kiln.data.shards import open_split

    val = open_split(run.stage("tokens"), "val")
    tokens = np.concatenate([val[i] for i in range(len(val))]).astype(np.int64)
    rows = torch.from_numpy(tokens[: len(tokens) // 65 * 65]).view(-1, 65)
    model.eval()
    with torch.no_grad():
        logits = model(rows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), rows[:, 1:].reshape(-1)).item()


def test_the_grown_model_starts_near_its_parents_loss_and_far_below_a_fresh_one(parent, one_thread):
    from kiln.model.load import load_model

    _, _, run = parent
    model = load_model(run.root)
    base = _heldout_loss(model, run)
    grown = {name: _heldout_loss(grow_model(model, plan), run)
             for name, plan in (("dup1:3", duplicate_plan(4, 1, 3)), ("dup2:3", duplicate_plan(4, 2, 3)),
                                ("dup0:4", duplicate_plan(4, 0, 4)))}
    torch.manual_seed(0)
    fresh = _heldout_loss(TransformerConfig(**{**model.config.to_dict(), "n_layer": 6}).build(), run)
    print(f"held-out loss: parent {base:.4f}, grown {grown}, fresh 6-layer {fresh:.4f}")
    for name, loss in grown.items():
        assert abs(loss - base) < 0.1, (name, loss, base)
    assert fresh > base + 1.0  # the grown start is worth something: a random deep model is far worse


def test_kiln_grow_writes_a_checkpoint_init_from_continues_with_fresh_moments(parent, tmp_path, one_thread):
    from kiln.cli import app

    root, overrides, run = parent
    out = tmp_path / "grown"
    res = CliRunner().invoke(app, ["grow", str(run.root), "--out", str(out), "--duplicate", "1:3"])
    assert res.exit_code == 0, res.output
    assert f"model.n_layer=6 train.init_from={out}" in res.output
    assert "optimizer state: fresh" in res.output
    record = json.loads((out / "grow.json").read_text())
    assert record["layers"] == [0, 1, 2, 1, 2, 3] and record["parent_n_layer"] == 4
    assert not (out / "optimizer.pt").exists()
    again = tmp_path / "again"  # growing the same parent again gives the same bytes (init_from fingerprints them)
    assert CliRunner().invoke(app, ["grow", str(run.root), "--out", str(again), "--duplicate", "1:3"]).exit_code == 0
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()

    parent_final = _val_rows(run)[-1]
    assert parent_final["step"] == PARENT_STEPS
    cont = RunDir(tmp_path / "continued")
    more = ["train.steps=1", "train.eval_every=1", "train.checkpoint_every=1", "train.warmup_steps=0"]
    run_pipeline(load_recipe("demo", [*overrides, *more, "model.n_layer=6", f"train.init_from={out}"]), cont,
                 until="train")
    start = _val_rows(cont)[0]
    assert start["step"] == 0
    print(f"val loss: parent final {parent_final['val_loss']:.4f}, grown at step 0 {start['val_loss']:.4f}")
    assert abs(start["val_loss"] - parent_final["val_loss"]) < 0.1

    # fresh AdamW moments: after one step, m = (1 - b1) g and v = (1 - b2) g^2, so m^2 / v = (1 - b1)^2 / (1 - b2)
    opt = torch.load(cont.stage("train") / "checkpoints" / "step-000001" / "optimizer.pt", weights_only=True)
    b1, b2 = opt["param_groups"][0]["betas"]
    assert opt["state"]
    for state in opt["state"].values():
        assert float(state["step"]) == 1.0
        v, m = state["exp_avg_sq"], state["exp_avg"]
        big = v > 1e-20
        assert big.any()
        torch.testing.assert_close(m[big] ** 2 / v[big], torch.full_like(v[big], (1 - b1) ** 2 / (1 - b2)),
                                   rtol=1e-3, atol=0)

    with pytest.raises(ValueError, match=r"n_layer: init_from 6, recipe 4"):  # forgetting model.n_layer
        run_pipeline(load_recipe("demo", [*overrides, *more, f"train.init_from={out}"]), RunDir(tmp_path / "r4"),
                     until="train")


def test_bad_input_is_refused_naming_what_is_wrong(parent, tmp_path):
    from kiln.cli import app

    _, _, run = parent
    runner = CliRunner()

    def fails(*args: str) -> str:
        res = runner.invoke(app, ["grow", *args])
        assert res.exit_code == 2, res.output
        return " ".join(res.output.split())

    out = str(tmp_path / "g")
    assert "exactly one of --duplicate a:b or --solar m" in fails(str(run.root), "--out", out)
    assert "exactly one of" in fails(str(run.root), "--out", out, "--duplicate", "1:3", "--solar", "1")
    assert "expected a:b" in fails(str(run.root), "--out", out, "--duplicate", "1-3")
    assert "need 0 <= a < b <= n_layer (4)" in fails(str(run.root), "--out", out, "--duplicate", "2:9")
    assert "0 < m < n_layer (4)" in fails(str(run.root), "--out", out, "--solar", "4")
    assert "no kiln checkpoint at" in fails(str(tmp_path), "--out", out, "--solar", "1")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in fails(str(run.root), "--out", str(tmp_path / "full"), "--solar", "1")
    assert not (tmp_path / "g").exists()
