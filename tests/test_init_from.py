"""``train.init_from``: a run starts from a finished model's weights, or is refused naming what differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.model.config import TransformerConfig
from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from kiln.train.init_from import InitFromError, architecture_differences
from tests.synthetic import tiny_run


def val_rows(run: RunDir) -> list[dict]:
    return [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["kind"] == "val"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    run, overrides = tiny_run(root, "train", steps=20, name="source")
    return root, overrides, run


def _second_run(root, overrides, source: RunDir, name: str, extra: list[str]) -> RunDir:
    run = RunDir(root / name)
    run.root.mkdir()
    recipe = load_recipe("demo", [*overrides, "train.steps=2", *extra])
    run_pipeline(recipe, run, until="train")
    return run


def test_init_from_starts_at_the_checkpoints_validation_loss(trained):
    root, overrides, source = trained
    final = val_rows(source)[-1]["val_loss"]
    scratch = _second_run(root, overrides, source, "scratch", [])
    warm = _second_run(root, overrides, source, "warm", [f"train.init_from={source.root}"])
    start_scratch, start_warm = val_rows(scratch)[0], val_rows(warm)[0]
    assert start_scratch["step"] == start_warm["step"] == 0
    assert start_warm["val_loss"] == pytest.approx(final, rel=1e-6)  # the checkpoint's loss, not random init's
    assert start_scratch["val_loss"] > final + 0.5


def test_init_from_another_architecture_is_refused_naming_the_fields(trained):
    root, overrides, source = trained
    with pytest.raises(InitFromError, match=r"d_model: init_from 32, recipe 64.*ffn_hidden"):
        _second_run(root, overrides, source, "wide", [f"train.init_from={source.stage('train')}", "model.d_model=64"])


def test_a_different_vocabulary_is_named():
    a = TransformerConfig(vocab_size=512, max_seq_len=64, n_layer=2, n_head=2, d_model=32)
    b = TransformerConfig(vocab_size=1024, max_seq_len=64, n_layer=2, n_head=2, d_model=32, rope_base=5e5,
                          attention="bidirectional")
    assert architecture_differences(a, b) == ["vocab_size: init_from 512, recipe 1024"]  # rope/mask may differ
    c = TransformerConfig(vocab_size=512, max_seq_len=64, n_layer=3, n_head=2, d_model=32, tie_embeddings=False)
    assert [d.split(":")[0] for d in architecture_differences(a, c)] == ["n_layer", "tie_embeddings"]


def test_init_from_a_clm_checkpoint_into_an_mlm_run_keeps_the_backbone_and_a_fresh_head(trained, tmp_path):
    from kiln.model.load import load_model
    from kiln.train.init_from import init_weights_from

    root, overrides, source = trained
    src = load_model(source.root)
    cfg = TransformerConfig(**{**src.config.to_dict(), "heads": {"mlm": {}}})
    model = cfg.build()
    fresh = init_weights_from(model, source.root)
    assert fresh == ["mlm"]
    assert all((model.state_dict()[k] == v).all() for k, v in src.state_dict().items())


def test_a_frozen_teacher_stays_out_of_the_optimizer_the_wrapper_and_the_checkpoint(trained, tmp_path):
    """An objective owning a teacher (loaded through kiln.model.load from a run directory): not trained, not
    wrapped, not saved, in eval mode, unchanged; its distillation metric is logged."""
    import torch

    from kiln.model.io import load_state
    from kiln.tokenizer.train import load_token_bytes
    from kiln.train.trainer import Trainer, load_train_data
    from tests.kd_objective import DistillFromTeacher

    root, overrides, source = trained
    recipe = load_recipe("demo", [*overrides, "train.steps=3"])
    token_bytes = load_token_bytes(source.stage("tokenizer"))
    data = load_train_data(recipe, source.stage("tokens"), token_bytes)
    kd = DistillFromTeacher(str(source.root))
    trainer = Trainer(recipe, data, len(token_bytes), tmp_path / "train", tmp_path / "metrics.jsonl", objective=kd)
    teacher = kd.frozen_modules()["teacher"]
    before = [p.detach().clone() for p in teacher.parameters()]
    result = trainer.fit()
    ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in ids for g in trainer.optimizer.param_groups for p in g["params"])
    assert not any(id(p) in ids for p in trainer.par.root.parameters())
    assert not teacher.training and not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    student = trainer.model_config.build()
    load_state(student, Path(result["checkpoint"]) / "model.safetensors")  # exactly the student's weights
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kd_kl_per_target"] >= 0 for r in rows if r["kind"] == "train")
