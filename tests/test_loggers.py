"""Optional metric loggers (issue 12, point 18): ``train.loggers: [tensorboard, wandb]`` receive every train and
validation row; wandb works offline with no network; a missing package is named; loggers are not fingerprinted."""

from __future__ import annotations

import json
import re

import pytest

from kiln.recipe import load_recipe
from kiln.stages import fingerprints
from kiln.tokenizer.train import load_token_bytes
from kiln.train import loggers
from kiln.train.trainer import Trainer, load_train_data


def _train(tiny_trained, tmp_path, names: list[str]) -> tuple[Trainer, list[dict]]:
    run = tiny_trained.run
    recipe = tiny_trained.recipe.model_copy(deep=True)
    recipe.train.loggers = names
    token_bytes = load_token_bytes(run.stage("tokenizer"))
    data = load_train_data(recipe, run.stage("tokens"), token_bytes)
    trainer = Trainer(recipe, data, len(token_bytes), tmp_path / "run" / "train", tmp_path / "metrics.jsonl")
    trainer.fit()
    return trainer, [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_train_and_val_row(tiny_trained, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, rows = _train(tiny_trained, tmp_path, ["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "run" / "train" / "tensorboard"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    train = [r for r in rows if r["kind"] == "train"]
    assert [s for s, _ in loss] == [r["step"] for r in train]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    val = [r for r in rows if r["kind"] == "val"]
    assert [e.step for e in acc.Scalars("val/val_bpb")] == [r["step"] for r in val]
    assert "train/lr" in acc.Tags()["scalars"] and "train/tokens_per_s" in acc.Tags()["scalars"]


def test_wandb_offline_logs_without_network(tiny_trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, rows = _train(tiny_trained, tmp_path, ["wandb"])
    folder = tmp_path / "run" / "train" / "wandb"
    run_id = (folder / "kiln-run-id").read_text().strip()
    runs = list(folder.glob(f"wandb/offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    # the offline run file (protobuf records) holds every logged value as JSON text after its key
    blob = next(runs[0].glob("*.wandb")).read_bytes()
    logged = {float(v) for v in re.findall(rb"train/loss[^-0-9]{1,8}(-?[0-9][0-9.eE+-]*)", blob)}
    assert sorted(logged) == pytest.approx(sorted(r["loss"] for r in rows if r["kind"] == "train"), rel=1e-9)
    assert b"val/val_bpb" in blob


def test_a_missing_logger_package_is_named(monkeypatch):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"train.loggers: 'wandb' needs the wandb package.*kiln\[loggers\]"):
        loggers.build_loggers(["wandb"])


def test_loggers_are_validated_and_not_fingerprinted():
    with pytest.raises(ValueError, match="train.loggers"):
        load_recipe("demo", ["train.loggers=[mlflow]"])
    assert fingerprints(load_recipe("demo", ["train.loggers=[tensorboard, wandb]"])) == \
        fingerprints(load_recipe("demo"))


def test_scalars_keep_finite_numbers_only():
    row = {"kind": "train", "step": 3, "loss": 2.5, "lr": 1e-3, "flag": True, "note": "x", "mfu": None,
           "bad": float("nan")}
    assert loggers.scalars(row, "train") == {"train/loss": 2.5, "train/lr": 1e-3}
