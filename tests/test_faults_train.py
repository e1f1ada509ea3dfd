"""Training faults: NaN/inf loss or gradients, loss spikes, out-of-memory (kiln/train/guard.py)."""

from __future__ import annotations

import pytest
import torch

from kiln.objectives.clm import CausalLM
from kiln.run import RunDir
from kiln.stages import run_pipeline
from kiln.train.guard import TrainingFault, TrainingOOM
from tests.faults_util import copy_run, loss_curve, make_corpus, metric_rows, sha, tiny_recipe

MICRO_PER_STEP = 2  # tiny recipe: 8 rows per step in micro-batches of 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """corpus, tokenizer and tokens built once, and a clean 20-step reference run."""
    base = tmp_path_factory.mktemp("faults_train")
    corpus = make_corpus(base)
    run = RunDir(base / "clean")
    run_pipeline(tiny_recipe(corpus), run, until="train")
    return corpus, run


def poison(monkeypatch, steps: set[int], how: str = "nan", times: int = 1) -> None:
    """Make CausalLM.loss misbehave on the first micro-batch of each 1-based step in ``steps``, ``times`` times."""
    real = CausalLM.loss
    calls = {"n": 0, "hits": 0}

    def loss(self, model, prepared):
        calls["n"] += 1
        step = (calls["n"] - 1) // MICRO_PER_STEP + 1
        first = (calls["n"] - 1) % MICRO_PER_STEP == 0
        value, metrics = real(self, model, prepared)
        if step in steps and first and calls["hits"] < times:
            calls["hits"] += 1
            if how == "nan":
                value = value * float("nan")
            elif how == "inf_grad":
                value = _InfGrad.apply(value)
            elif how == "spike":
                value = value * 100.0
            elif how == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return value, metrics

    monkeypatch.setattr(CausalLM, "loss", loss)


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def train(prepared, tmp_path, *extra: str) -> RunDir:
    corpus, clean = prepared
    run = copy_run(clean, tmp_path / "run")
    run_pipeline(tiny_recipe(corpus, *extra), run, until="train", force=("train",))
    return run


def test_nan_loss_stops_by_default_with_a_clear_message(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {7})
    with pytest.raises(TrainingFault, match=r"loss is nan at step 7.*on_nonfinite=skip\|rollback"):
        train(prepared, tmp_path)


def test_skip_drops_the_batch_and_logs_it(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {7})
    run = train(prepared, tmp_path, "train.on_nonfinite=skip")
    faults = metric_rows(run, "fault")
    assert [(f["at_step"], f["reason"], f["action"]) for f in faults] == [(7, "nonfinite_loss", "skip")]
    assert [s for s, _, _ in loss_curve(run)] == [s for s in range(1, 21) if s != 7]
    stats = run.manifest("train")["stats"]
    assert stats["faults"]["skipped"] == 1 and stats["steps"] == 20
    clean = loss_curve(prepared[1])
    assert loss_curve(run)[:6] == clean[:6]  # identical up to the skipped batch


def test_nonfinite_gradient_is_caught_even_with_a_finite_loss(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {4}, how="inf_grad")
    run = train(prepared, tmp_path, "train.on_nonfinite=skip")
    assert [(f["at_step"], f["reason"]) for f in metric_rows(run, "fault")] == [(4, "nonfinite_grad")]
    assert all(p.isfinite().all() for p in _weights(run).values())


def test_rollback_of_a_transient_fault_recovers_identically(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {15})
    run = train(prepared, tmp_path, "train.on_nonfinite=rollback")
    faults = metric_rows(run, "fault")
    assert [(f["step"], f["at_step"], f["action"]) for f in faults] == [(10, 15, "rollback")]
    clean = prepared[1]
    assert loss_curve(run) == loss_curve(clean)
    final = "train/checkpoints/step-000020/model.safetensors"
    assert sha(run.root / final) == sha(clean.root / final)


def test_rollback_lowers_the_lr_and_rolls_back_to_step_0_without_a_checkpoint(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {3})
    run = train(prepared, tmp_path, "train.on_nonfinite=rollback", "train.rollback_lr_factor=0.5")
    assert [(f["step"], f["at_step"]) for f in metric_rows(run, "fault")] == [(0, 3)]
    clean = {r["step"]: r["lr"] for r in metric_rows(prepared[1], "train")}
    assert all(r["lr"] == pytest.approx(clean[r["step"]] * 0.5) for r in metric_rows(run, "train"))
    assert run.manifest("train")["stats"]["faults"] == {"skipped": 0, "rollbacks": 1, "lr_scale": 0.5}


def test_loss_spike_guard(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {15}, how="spike")
    run = train(prepared, tmp_path, "train.on_nonfinite=skip", "train.spike_factor=3", "train.spike_window=8")
    assert [(f["at_step"], f["reason"]) for f in metric_rows(run, "fault")] == [(15, "loss_spike")]


def test_spike_guard_is_off_by_default(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {15}, how="spike")
    run = train(prepared, tmp_path, "train.on_nonfinite=skip")
    assert metric_rows(run, "fault") == []


def test_too_many_faults_stop(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(1, 21)), times=99)
    with pytest.raises(TrainingFault, match="max_faults=3"):
        train(prepared, tmp_path, "train.on_nonfinite=skip", "train.max_faults=3")


def test_out_of_memory_names_the_knobs(prepared, tmp_path, monkeypatch):
    poison(monkeypatch, {2}, how="oom")
    with pytest.raises(TrainingOOM, match="micro_batch_size.*activation_checkpointing.*loss_chunk_tokens"):
        train(prepared, tmp_path)


def _weights(run: RunDir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run.root / "train/checkpoints/step-000020/model.safetensors"))
