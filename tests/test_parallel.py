"""kiln/train/parallel.py in one process: strategy choice, and activation checkpointing / compile leave the
loss and gradients unchanged."""

from __future__ import annotations

import pytest
import torch

from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.model.io import load_state, save_state
from kiln.objectives.clm import CausalLM
from kiln.train.dist import DistEnv
from kiln.train.parallel import FSDP_ABOVE_PARAMS, TrainModule, parallelize, resolve_strategy


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 97, (3, 32), generator=g)
    segments = torch.tensor([[0] * 20 + [1] * 12, [0] * 32, [0] * 10 + [1] * 10 + [-1] * 12])
    positions = torch.zeros_like(segments)
    for b in range(3):
        for s in segments[b].unique().tolist():
            if s >= 0:
                idx = (segments[b] == s).nonzero().flatten()
                positions[b, idx] = torch.arange(len(idx))
    return Batch(tokens, segments, positions, "document", int((segments >= 0).sum()))


def loss_and_grads(ac: str = "none", compile: bool = False, n_layer: int = 3) -> tuple[torch.Tensor, list]:
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=97, max_seq_len=64, n_layer=n_layer, n_head=4, d_model=32).build()
    objective = CausalLM()
    par = parallelize(model, objective, strategy="single", activation_checkpointing=ac, compile=compile,
                      device=torch.device("cpu"), env=DistEnv())
    loss, _ = par.root(prepared=objective.prepare(batch()))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("ac", ["full", "selective"])
def test_activation_checkpointing_is_bit_identical(ac):
    ref_loss, ref_grads = loss_and_grads("none")
    loss, grads = loss_and_grads(ac)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))


def test_checkpointing_wraps_the_right_blocks_and_keeps_state_dict_keys(tmp_path):
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=97, max_seq_len=64, n_layer=4, n_head=4, d_model=32)
    plain, model = cfg.build(), cfg.build()
    keys = set(plain.state_dict())
    parallelize(model, CausalLM(), strategy="single", activation_checkpointing="selective",
                device=torch.device("cpu"), env=DistEnv())
    wrapped = [type(b).__name__ == "CheckpointWrapper" for b in model.backbone.blocks]
    assert wrapped == [True, False, True, False]
    assert set(model.state_dict()) == keys  # checkpoints stay loadable by unwrapped models
    save_state(model, tmp_path / "m.safetensors")
    load_state(plain, tmp_path / "m.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_train_module_routes_objective_and_forward():
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=97, max_seq_len=64, n_layer=1, n_head=4, d_model=32).build()
    root, b = TrainModule(model, CausalLM()), batch()
    assert torch.equal(root(b.tokens, positions=b.positions, segments=b.segments),
                       model(b.tokens, positions=b.positions, segments=b.segments))
    loss, _ = root(prepared=CausalLM().prepare(b))
    assert loss.ndim == 0 and loss > 0


def test_resolve_strategy():
    assert resolve_strategy("auto", 1, 10**6) == "single"
    assert resolve_strategy("auto", 2, 10**6) == "ddp"
    assert resolve_strategy("auto", 8, FSDP_ABOVE_PARAMS) == "fsdp"
    assert resolve_strategy("fsdp", 1, 10) == "fsdp"
    with pytest.raises(ValueError, match="strategy=single"):
        resolve_strategy("single", 2, 10)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_strategy("zero3", 2, 10)


@pytest.mark.slow
def test_compile_per_block_matches_eager():
    ref_loss, ref_grads = loss_and_grads("none", n_layer=2)
    loss, grads = loss_and_grads("full", compile=True, n_layer=2)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prepared_moves_its_tensors_and_keeps_counts():
    """The trainer prepares on the CPU and moves the result: every tensor moves, counts and extras stay."""
    objective = CausalLM()
    p = objective.prepare(batch())
    moved = p.to(torch.device("meta"))
    assert set(moved.tensors) == set(p.tensors) and all(t.device.type == "meta" for t in moved.tensors.values())
    assert moved.n_targets == p.n_targets == int((p.tensors["targets"] != -100).sum()) and moved.extra is p.extra
    assert all(t.device.type == "cpu" for t in p.tensors.values())  # the original is left as it was
