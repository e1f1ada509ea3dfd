"""Sparse training (kiln/train/sparsity.py): SPDF static masks, gradual magnitude pruning on the Journey schedule,
N̄ and sparse FLOPs, masks in checkpoints (exact resume), zeros in exports, dense fine-tuning, DDP/FSDP2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kiln.model.config import TransformerConfig
from kiln.model.flops import block_matmul_params, flops_per_token, sparse_flops_per_token, sparse_flops_ratio
from kiln.recipe import load_recipe
from kiln.stages import run_pipeline
from kiln.tokenizer.train import load_token_bytes
from kiln.train.callbacks import TrainerCallback, TrainState
from kiln.train.sparsity import MASKS_FILE, GradualPruning, StaticMask
from kiln.train.sparsity_schedule import PruningSchedule, mean_masked_fraction
from kiln.train.trainer import Trainer, load_train_data
from tests.synthetic import tiny_run

SPDF = "spdf"  # kiln.train.sparsity:StaticMask, registered in kiln/train/callbacks.py
GMP = "gradual_pruning"  # kiln.train.sparsity:GradualPruning
BLOCK = "backbone.blocks.0.attn.wq.weight"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    return tiny_run(root, "tokens", steps=20)


def make_trainer(tokens, out: Path, extra: list[str], callbacks=None) -> Trainer:
    run, overrides = tokens
    recipe = load_recipe("demo", [*overrides, "train.eval_every=1000", *extra])
    token_bytes = load_token_bytes(run.stage("tokenizer"))
    data = load_train_data(recipe, run.stage("tokens"), token_bytes)
    return Trainer(recipe, data, len(token_bytes), out / "train", out / "metrics.jsonl", callbacks=callbacks)


def train(tokens, out: Path, extra: list[str], callbacks=None) -> tuple[Trainer, list[dict]]:
    trainer = make_trainer(tokens, out, extra, callbacks)
    trainer.fit()
    return trainer, train_rows(out / "metrics.jsonl")


def train_rows(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def param(model: torch.nn.Module, name: str) -> torch.Tensor:
    return dict(model.named_parameters())[name].detach()


class ZeroCounter(TrainerCallback):
    """After backward (weights as the step's forward used them): the zero weights of the blocks' matrices, and
    the set of zeros of one matrix (to check that pruned weights stay pruned)."""

    def __init__(self) -> None:
        self.zeros: list[int] = []
        self.sets: list[torch.Tensor] = []

    def after_backward(self, state: TrainState) -> None:
        ps = [p for n, p in state.model.named_parameters() if "backbone.blocks" in n and p.dim() == 2]
        self.zeros.append(sum(int((p.detach() == 0).sum()) for p in ps))
        self.sets.append(param(state.model, BLOCK) == 0)


class MaskOnce(StaticMask):
    """The baseline a re-masking callback must beat: weights zeroed once, never re-masked."""

    def after_backward(self, state: TrainState) -> None:
        pass

    def after_optimizer_step(self, state: TrainState) -> None:
        pass


# ----------------------------------------------------------------------------- no training


@pytest.mark.parametrize("ramp, final", [("cubic", 0.75), ("cubic", 0.5), ("linear", 0.75)])
def test_schedule_average_matches_the_closed_form(ramp, final):
    sched = PruningSchedule(final, ramp=ramp)  # Journey: dense to 25%, ramp to 75%, constant after
    if ramp == "cubic":
        assert sched.mean_sparsity() == pytest.approx(0.625 * final, abs=1e-12)  # the spec's closed form
    for steps, tol in ((10_000, 1e-6), (40, 1e-3)):
        mean = sum(sched.step_sparsity(t, steps) for t in range(1, steps + 1)) / steps
        assert abs(mean - sched.mean_sparsity()) < tol, (steps, mean, sched.mean_sparsity())
    # Zhu & Gupta's cubic ramp: 0 at the start, s_f (1 - 1/8) half way, s_f at the end and after
    assert sched.sparsity_at(0.25) == 0.0 and sched.sparsity_at(0.75) == final == sched.sparsity_at(1.0)
    half = sched.sparsity_at(0.5)
    assert half == pytest.approx(final * (0.875 if ramp == "cubic" else 0.5))


def test_mean_masked_fraction_of_callback_specs():
    assert mean_masked_fraction([{"name": "param_norm"}], 100) == 0.0
    assert mean_masked_fraction([{"name": "spdf", "sparsity": 0.75}], 100) == 0.75
    assert mean_masked_fraction([{"name": "magnitude_mask", "sparsity": 0.5, "dense_from": 25}], 100) == 0.125
    assert mean_masked_fraction([{"name": "gradual_pruning", "final_sparsity": 0.8}], 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="include='backbone.blocks.0' is not the block matmuls"):
        mean_masked_fraction([{"name": "spdf", "sparsity": 0.5, "include": "backbone.blocks.0"}], 10)


def test_spdf_flop_ratio_on_gpt3_xl():
    """GPT-3 XL (24 x 2048, 16 heads, seq 2048, GPT-2 vocabulary; SwiGLU at 8/3 d keeps 8 d^2 MLP weights):
    75% sparse block matmuls cost ~2.5x fewer training FLOPs (SPDF's abstract)."""
    cfg = TransformerConfig(vocab_size=50257, max_seq_len=2048, n_layer=24, n_head=16, d_model=2048, ffn_hidden=5461)
    assert 2.4 < sparse_flops_ratio(cfg, 2048, 0.75) < 2.6
    assert 1.6 < sparse_flops_ratio(cfg, 2048, 0.5) < 1.7
    assert sparse_flops_per_token(cfg, 2048, 0) == flops_per_token(cfg, 2048)  # dense count unchanged
    with pytest.raises(ValueError, match="masked weights must be in"):
        sparse_flops_per_token(cfg, 2048, -1)


@pytest.mark.parametrize("build, message", [
    (lambda: StaticMask(1.0), "spdf.sparsity: must be in [0, 1)"),
    (lambda: StaticMask(0.5, mask="structured"), "spdf.mask: must be one of random, magnitude"),
    (lambda: GradualPruning(0.5, start=0.8, end=0.5), "gradual_pruning.start/end: need 0 <= start < end <= 1"),
    (lambda: GradualPruning(0.5, ramp="exp"), "gradual_pruning.ramp: must be one of cubic, linear"),
    (lambda: GradualPruning(0.5, every=0), "gradual_pruning.every: must be a positive integer"),
])
def test_bad_arguments_are_refused_naming_the_field(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert message in str(err.value)


def test_include_matching_nothing_is_refused(tokens, tmp_path):
    with pytest.raises(ValueError, match="spdf.include: no 2-D trained parameter name contains 'nope'"):
        train(tokens, tmp_path, ["train.steps=1", f"train.callbacks=[{{name: '{SPDF}', sparsity: 0.5, "
                                 "include: nope}]"])


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("mask", ["random", "magnitude"])
def test_masked_weights_stay_exactly_zero_through_50_adamw_steps(tokens, tmp_path, mask):
    """AdamW with weight decay 0.1, 50 steps, 75% static mask: the masked weights are exactly 0, the kept ones
    and the dense parts (embeddings, norms) are not. Baseline: zeroing once without re-masking weights and
    gradients lets AdamW revive nearly all of them."""
    extra = ["train.steps=50", "train.weight_decay=0.1", "train.checkpoint_every=1000"]
    trainer, rows = train(tokens, tmp_path / "spdf", [*extra, f"train.callbacks=[{{name: '{SPDF}', "
                                                      f"sparsity: 0.75, mask: {mask}}}]"])
    cb = trainer.callbacks[0]
    model = trainer.model
    assert len(cb.masks) == 14  # 2 blocks x (q, k, v, out, gate, up, down)
    for name, p in cb.targets(model).items():
        keep = cb.masks[name]
        assert float(1 - keep.float().mean()) == pytest.approx(0.75, abs=1e-3)
        assert torch.all(p.detach()[~keep] == 0), name
        assert float((p.detach()[keep] == 0).float().mean()) == 0.0
    for name, p in model.named_parameters():
        if name not in cb.masks:  # embeddings and norms stay dense
            assert not torch.any(p.detach() == 0), name
    assert all(r["sparsity"] == pytest.approx(0.75, abs=1e-3) for r in rows)
    n_dense = model.num_params()
    masked = sum(cb.pruned.values())
    assert rows[-1]["n_params_bar"] == rows[-1]["n_params_unmasked"] == n_dense - masked
    cfg = trainer.model_config
    assert rows[-1]["flops_per_token_sparse"] == pytest.approx(flops_per_token(cfg, 64) - 6 * masked)

    base, _ = train(tokens, tmp_path / "once", [*extra, f"train.callbacks=[{{name: 'tests.test_sparsity:MaskOnce', "
                                                        f"sparsity: 0.75, mask: {mask}}}]"])
    keep = base.callbacks[0].masks[BLOCK]
    revived = float((param(base.model, BLOCK)[~keep] != 0).float().mean())
    assert revived > 0.9, revived


@pytest.mark.parametrize("every", [1, 4])
def test_gradual_pruning_n_bar_matches_the_closed_form(tokens, tmp_path, every):
    """Journey schedule to 75% over 40 steps: logged N̄ equals the step-average of the zeros actually in the
    weights, and (mask updates every step) Journey's closed form N_dense - N_prunable * 0.625 s_f within 1e-3 of
    N_prunable; sparsity never falls, pruned weights stay pruned, the model is dense for the first quarter."""
    counter = ZeroCounter()
    spec = f"{{name: '{GMP}', final_sparsity: 0.75, every: {every}}}"
    trainer, rows = train(tokens, tmp_path, ["train.steps=40", "train.checkpoint_every=1000",
                                             f"train.callbacks=[{spec}]"], callbacks=[counter])
    cb = trainer.callbacks[0]
    n_dense, prunable = trainer.model.num_params(), sum(cb.numel.values())
    assert len(counter.zeros) == 40
    assert rows[-1]["n_params_bar"] == pytest.approx(n_dense - sum(counter.zeros) / 40, abs=1e-6)
    sparsity = [r["sparsity"] for r in rows]
    assert sparsity == sorted(sparsity) and sparsity[-1] == pytest.approx(0.75, abs=1e-3)
    assert counter.zeros[:10] == [0] * 10 and counter.zeros[10 + every - 1] > 0  # dense until 25% of the steps
    for before, after in zip(counter.sets, counter.sets[1:], strict=False):
        assert torch.all(after[before])  # zero once, zero forever
    if every > 1:
        assert len(set(counter.zeros[12:16])) == 1  # one update per 4 steps
        return
    closed = n_dense - prunable * 0.625 * 0.75
    assert cb.closed_form_n_bar() == pytest.approx(closed)
    assert abs(rows[-1]["n_params_bar"] - closed) / prunable < 1e-3, (rows[-1]["n_params_bar"], closed)
    # the run-average FLOPs known before training (equal-FLOPs budgets) agree with the logged ones
    cfg = trainer.model_config
    before = sparse_flops_per_token(cfg, 64, mean_masked_fraction([{"name": GMP, "final_sparsity": 0.75}], 40)
                                    * block_matmul_params(cfg))
    assert rows[-1]["flops_per_token_bar"] == pytest.approx(before, rel=1e-3)
    assert rows[-1]["flops_per_token_bar"] < 0.8 * flops_per_token(cfg, 64)


def _crash_after(out: Path, step: int, final: int) -> None:
    """Leave ``out`` as a run killed right after its step-``step`` checkpoint."""
    shutil.rmtree(out / "train" / "checkpoints" / f"step-{final:06d}")
    metrics = out / "metrics.jsonl"
    rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["step"] <= step]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("masks_file", [True, False])
def test_resume_with_masks_is_exact(tokens, tmp_path, masks_file):
    """A gradual-pruning run resumed from its step-10 checkpoint (mid-ramp) gives the uninterrupted run's losses
    and N̄; the checkpoint holds the masks (and without the file, the masks come back from its zeros)."""
    extra = ["train.steps=20", f"train.callbacks=[{{name: '{GMP}', final_sparsity: 0.75, start: 0.2, end: 0.8}}]"]
    full, want = train(tokens, tmp_path / "full", extra)
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", out)
    _crash_after(out, 10, 20)
    ckpt = out / "train" / "checkpoints" / "step-000010"
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / MASKS_FILE))
    weights = load_file(str(ckpt / "model.safetensors"))
    assert set(saved) == set(full.callbacks[0].masks)
    assert torch.equal(saved[BLOCK].bool(), weights[BLOCK] != 0)  # the zeros are the masked weights
    assert 0.1 < float(1 - saved[BLOCK].float().mean()) < 0.75  # mid-ramp
    if not masks_file:
        (ckpt / MASKS_FILE).unlink()
    trainer = make_trainer(tokens, out, extra)
    trainer.fit()
    got = train_rows(out / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 21))
    for key in ("loss", "n_params_bar", "sparsity", "flops_per_token_bar"):
        assert [r[key] for r in got] == [r[key] for r in want], key
    assert torch.equal(param(trainer.model, BLOCK), param(full.model, BLOCK))


class NanOnce(TrainerCallback):
    """A non-finite gradient in step 13, the first time only (train.on_nonfinite then rolls back to step 10)."""

    def __init__(self) -> None:
        self.fired = False

    def micro_loss(self, state: TrainState, prepared, loss_sum: torch.Tensor) -> torch.Tensor:
        if state.step == 12 and not self.fired:
            self.fired = True
            return loss_sum * float("nan")
        return loss_sum


def test_rollback_reloads_the_checkpoints_masks(tokens, tmp_path):
    """A rollback from step 13 to the step-10 checkpoint, mid-ramp: the masks go back to the checkpoint's (the
    re-run steps are not counted twice in N̄), masked weights stay exactly 0, the final sparsity is the schedule's."""
    extra = ["train.steps=20", "train.on_nonfinite=rollback",
             f"train.callbacks=[{{name: '{GMP}', final_sparsity: 0.75, start: 0.2, end: 0.8}}]"]
    _, want = train(tokens, tmp_path / "plain", extra)
    nan = NanOnce()
    trainer, got = train(tokens, tmp_path / "rolled", extra, callbacks=[nan])
    assert nan.fired and trainer.guard.rollbacks == 1
    assert [r["step"] for r in got] == list(range(1, 21))
    assert got[-1]["n_params_bar"] == want[-1]["n_params_bar"]
    assert got[-1]["sparsity"] == want[-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    cb = trainer.callbacks[0]
    for name, p in cb.targets(trainer.model).items():
        assert torch.all(p.detach()[~cb.masks[name]] == 0)


class ForwardZeros(TrainerCallback):
    """The zero weights of one matrix as each step's forward sees them (at its first micro-batch)."""

    def __init__(self) -> None:
        self.zeros: dict[int, int] = {}

    def micro_loss(self, state: TrainState, prepared, loss_sum: torch.Tensor) -> torch.Tensor:
        self.zeros.setdefault(state.step + 1, int((param(state.model, BLOCK) == 0).sum()))
        return loss_sum


def test_a_skipped_step_updates_the_masks_before_the_next_forward(tokens, tmp_path):
    """A step skipped mid-ramp (train.on_nonfinite=skip at step 13): the forward of step 14 already uses the
    schedule's mask for step 14, as in the run without the fault (the mask update of the skipped step is not a
    step late), and N̄ counts the skipped step once."""
    extra = ["train.steps=20", "train.on_nonfinite=skip",
             f"train.callbacks=[{{name: '{GMP}', final_sparsity: 0.75, start: 0.2, end: 0.8}}]"]
    plain = ForwardZeros()
    _, want = train(tokens, tmp_path / "plain", extra, callbacks=[plain])
    seen, nan = ForwardZeros(), NanOnce()
    trainer, got = train(tokens, tmp_path / "skipped", extra, callbacks=[nan, seen])
    assert nan.fired and trainer.guard.skipped == 1
    assert [r["step"] for r in got] == [s for s in range(1, 21) if s != 13]
    assert plain.zeros[13] < plain.zeros[14] < plain.zeros[15]  # the ramp prunes more at every step here
    assert seen.zeros == plain.zeros  # the same count in every forward, step 14 included
    assert got[-1]["n_params_bar"] == want[-1]["n_params_bar"]


def test_export_carries_zeros_not_masks(tokens, tmp_path):
    from safetensors.torch import load_file

    from kiln.model.hf_remote import export_auto
    from kiln.model.load import load_model

    train(tokens, tmp_path, ["train.steps=4", f"train.callbacks=[{{name: '{SPDF}', sparsity: 0.5}}]"])
    out = tmp_path / "export"
    export_auto(load_model(tmp_path / "train"), out)
    files = sorted(p.name for p in out.iterdir())
    assert not any("mask" in f for f in files), files
    weights = {}
    for f in out.glob("*.safetensors"):
        weights.update(load_file(str(f)))
    assert not any("mask" in k for k in weights)
    q = [v for k, v in weights.items() if "layers.0" in k and "q_proj" in k]
    assert len(q) == 1 and float((q[0] == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    emb = [v for k, v in weights.items() if "embed" in k]
    assert emb and not torch.any(emb[0] == 0)


def test_dense_fine_tuning_after_sparse_pretraining(tokens, tmp_path):
    """``train.init_from`` of a sparse run without a mask callback trains every weight (the zeros fill in); with
    the callback the zeros stay. ``dense_from`` drops the masks inside one run."""
    train(tokens, tmp_path / "sparse", ["train.steps=4", f"train.callbacks=[{{name: '{SPDF}', sparsity: 0.75}}]"])
    src = tmp_path / "sparse" / "train"
    dense, _ = train(tokens, tmp_path / "dense", ["train.steps=3", f"train.init_from={src}"])
    start = ZeroCounter()
    kept, _ = train(tokens, tmp_path / "kept", ["train.steps=3", f"train.init_from={src}",
                                                "train.callbacks=[{name: magnitude_mask, sparsity: 0.75}]"],
                    callbacks=[start])
    assert start.zeros[0] == pytest.approx(0.75 * sum(kept.callbacks[0].numel.values()), abs=14)
    assert float((param(dense.model, BLOCK) == 0).float().mean()) < 0.01
    assert float((param(kept.model, BLOCK) == 0).float().mean()) >= 0.75
    switch, rows = train(tokens, tmp_path / "switch", [
        "train.steps=6", f"train.callbacks=[{{name: '{SPDF}', sparsity: 0.75, dense_from: 3}}]"])
    assert [r["sparsity"] for r in rows] == pytest.approx([0.75, 0.75, 0, 0, 0, 0], abs=1e-3)
    n = switch.model.num_params()
    masked = rows[0]["n_params_unmasked"]
    assert rows[-1]["n_params_bar"] == pytest.approx((3 * masked + 3 * n) / 6)
    assert float((param(switch.model, BLOCK) == 0).float().mean()) < 0.01


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_and_resume_on_one(tokens, tmp_path, strategy):
    """Gradual pruning (mask updates every step from 3 on) on 2 gloo ranks: per-step losses and N̄ equal one
    process's, the checkpoints' masks are the same, and the 2-rank step-4 checkpoint resumes in one process on
    the same curve (FSDP2: masks gathered from the shards when saved, sliced back into shards when loaded)."""
    from safetensors.torch import load_file

    from tests.test_distributed import _copy_tokens, torchrun_train

    run, overrides = tokens
    extra = [*overrides, "train.steps=8", "train.checkpoint_every=4",
             f"train.callbacks=[{{name: '{GMP}', final_sparsity: 0.5, start: 0.25, end: 0.75}}]"]
    single = _copy_tokens(run, tmp_path / "single")
    run_pipeline(load_recipe("demo", extra), single, until="train")
    two = _copy_tokens(run, tmp_path / strategy)
    torchrun_train([*extra, f"parallel.strategy={strategy}"], two.root)
    want = train_rows(single.metrics_path)

    def check(got: list[dict]) -> None:
        assert [r["step"] for r in got] == list(range(1, 9))
        for a, b in zip(got, want, strict=True):
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(b["loss"]), (a["step"], a["loss"], b["loss"])
            assert a["n_params_bar"] == b["n_params_bar"] and a["sparsity"] == b["sparsity"]

    check(train_rows(two.metrics_path))
    assert (two.stage("train") / "checkpoints" / "step-000008" / "dcp").is_dir() == (strategy == "fsdp")
    for step in (4, 8):
        masks = [load_file(str(r.stage("train") / "checkpoints" / f"step-{step:06d}" / MASKS_FILE))
                 for r in (single, two)]
        assert masks[0].keys() == masks[1].keys() and len(masks[0]) == 14
        assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])

    shutil.rmtree(two.stage("train") / "checkpoints" / "step-000008")
    (two.stage("train") / "manifest.json").unlink()
    rows = [r for r in map(json.loads, two.metrics_path.read_text().splitlines()) if r["step"] <= 4]
    two.metrics_path.write_text("".join(json.dumps({**r, "survived": True}) + "\n" for r in rows))
    resume = "fsdp" if strategy == "fsdp" else "auto"
    run_pipeline(load_recipe("demo", [*extra, f"parallel.strategy={resume}"]), two, until="train")
    got = train_rows(two.metrics_path)
    assert [bool(r.get("survived")) for r in got] == [True] * 4 + [False] * 4  # resumed, not restarted
    check(got)
