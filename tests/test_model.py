"""The model: config, backbone (causality, document masks, GQA), heads, save/load, FLOP counters."""

from __future__ import annotations

import json

import pytest
import torch

from kiln.model.config import TransformerConfig, swiglu_hidden
from kiln.model.flops import PEAK_BF16_FLOPS, flops_per_token, matmul_params, mfu, peak_flops, peak_flops_for_name
from kiln.model.heads import LanguageModel
from kiln.model.io import load_pretrained, save_pretrained
from kiln.recipe import ModelConfig


def tiny(**kw) -> TransformerConfig:
    base = dict(vocab_size=97, max_seq_len=64, n_layer=2, n_head=4, d_model=32)
    return TransformerConfig(**{**base, **kw})


def model_of(seed: int = 0, **kw) -> LanguageModel:
    torch.manual_seed(seed)
    return tiny(**kw).build().eval()


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_roundtrip():
    cfg = tiny()
    assert cfg.n_kv_head == 4 and cfg.head_dim == 8
    assert cfg.ffn_hidden == swiglu_hidden(32) == 128  # 8/3 * 32 = 85.3 -> 128
    assert swiglu_hidden(256) == 704
    assert TransformerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TransformerConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_config_from_recipe():
    cfg = TransformerConfig.from_recipe(ModelConfig(n_layer=3, n_kv_head=2), vocab_size=4096, max_seq_len=256)
    assert (cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.d_model, cfg.vocab_size, cfg.max_seq_len) == (
        3,
        4,
        2,
        256,
        4096,
        256,
    )


@pytest.mark.parametrize("kw", [dict(d_model=30), dict(n_kv_head=3), dict(d_model=36, n_head=12)])
def test_config_rejects_bad_shapes(kw):
    with pytest.raises(ValueError):
        tiny(**kw)


# ----------------------------------------------------------------------------- backbone


def test_shapes():
    model = model_of()
    tokens = torch.randint(0, 97, (3, 10))
    hidden = model.backbone(tokens)
    assert hidden.shape == (3, 10, 32)
    assert model(tokens).shape == (3, 10, 97)
    assert torch.allclose(model.lm_head(hidden), model(tokens))


def test_causal():
    model = model_of()
    tokens = torch.randint(0, 97, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_too_long_raises():
    with pytest.raises(ValueError, match="max_seq_len"):
        model_of()(torch.zeros(1, 65, dtype=torch.long))


def packed_example():
    """Two documents (5 and 7 tokens) and 4 padding tokens in one row of 16."""
    torch.manual_seed(1)
    doc1, doc2 = torch.randint(0, 97, (5,)), torch.randint(0, 97, (7,))
    tokens = torch.cat([doc1, doc2, torch.zeros(4, dtype=torch.long)])[None]
    segments = torch.tensor([[0] * 5 + [1] * 7 + [-1] * 4])
    positions = torch.cat([torch.arange(5), torch.arange(7), torch.arange(4)])[None]
    return doc1, doc2, tokens, segments, positions


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_document_mask_matches_separate_documents(n_kv_head):
    model = model_of(n_kv_head=n_kv_head)
    doc1, doc2, tokens, segments, positions = packed_example()
    packed = model.backbone(tokens, positions=positions, segments=segments)
    alone1 = model.backbone(doc1[None])
    alone2 = model.backbone(doc2[None])
    assert (packed[0, :5] - alone1[0]).abs().max() <= 1e-5
    assert (packed[0, 5:12] - alone2[0]).abs().max() <= 1e-5
    assert torch.isfinite(packed).all()  # padding rows see themselves: no NaN


def test_document_mask_isolates_segments():
    model = model_of()
    _, _, tokens, segments, positions = packed_example()
    changed = tokens.clone()
    changed[0, 5:12] = (changed[0, 5:12] + 7) % 97  # rewrite document 2 entirely
    a = model.backbone(tokens, positions=positions, segments=segments)
    b = model.backbone(changed, positions=positions, segments=segments)
    assert torch.equal(a[0, :5], b[0, :5])
    assert torch.equal(a[0, 12:], b[0, 12:])
    assert not torch.allclose(a[0, 5:12], b[0, 5:12])


def test_segments_none_equals_single_segment():
    model = model_of()
    tokens = torch.randint(0, 97, (2, 12))
    plain = model(tokens)
    masked = model(tokens, segments=torch.zeros_like(tokens))
    explicit = model(tokens, positions=torch.arange(12).expand(2, 12), segments=torch.zeros_like(tokens))
    assert (plain - masked).abs().max() <= 1e-5
    assert (plain - explicit).abs().max() <= 1e-5


def test_gqa_fewer_kv_params():
    full, grouped = model_of(), model_of(n_kv_head=1)
    tokens = torch.randint(0, 97, (2, 8))
    assert grouped(tokens).shape == (2, 8, 97)
    attn = grouped.backbone.blocks[0].attn
    assert attn.wk.weight.shape == (8, 32) and attn.wq.weight.shape == (32, 32)
    assert full.num_params() - grouped.num_params() == 2 * 2 * 32 * (32 - 8)  # layers * (k, v) * d * removed


def test_init_scales_residual_projections():
    model = model_of(n_layer=4, d_model=256, n_head=4, vocab_size=1000)
    block = model.backbone.blocks[0]
    assert block.attn.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.wo.weight.std().item() == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert block.mlp.w_down.weight.std().item() == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert torch.equal(block.attn_norm.weight, torch.ones(256))


def test_backward_reaches_every_parameter():
    model = model_of(tie_embeddings=False)
    _, _, tokens, segments, positions = packed_example()
    model(tokens, positions=positions, segments=segments).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ----------------------------------------------------------------------------- heads, params, save/load


def test_tied_vs_untied_param_counts():
    tied, untied = model_of(), model_of(tie_embeddings=False)
    assert tied.tied and not untied.tied
    assert untied.num_params() - tied.num_params() == 97 * 32
    assert tied.num_params(non_embedding=True) == tied.num_params() - 97 * 32
    assert untied.num_params(non_embedding=True) == untied.num_params() - 97 * 32
    # a layer: q, k, v, o (4 * 32 * 32) + SwiGLU (3 * 32 * 128) + two norms (2 * 32)
    assert tied.num_params(non_embedding=True) == 2 * (4 * 32 * 32 + 3 * 32 * 128 + 2 * 32) + 32


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_roundtrip(tmp_path, tie):
    model = model_of(tie_embeddings=tie)
    with torch.no_grad():  # move away from init so a fresh model cannot pass by accident
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m", map_location="cpu")
    assert loaded.config == model.config and loaded.tied == tie
    tokens = torch.randint(0, 97, (2, 9))
    assert torch.equal(model(tokens), loaded.eval()(tokens))
    if tie:
        with torch.no_grad():
            loaded.backbone.tok_emb.weight[0, 0] += 1.0
        assert loaded.lm_head.weight[0, 0] == loaded.backbone.tok_emb.weight[0, 0]

    other = model_of(seed=5, tie_embeddings=tie)  # the methods on the model do the same
    model.save_state(tmp_path / "w.safetensors")
    other.load_state(tmp_path / "w.safetensors")
    assert torch.equal(model(tokens), other(tokens)) and other.tied == tie


# ----------------------------------------------------------------------------- flops


def test_flops_hand_computed():
    cfg = TransformerConfig(vocab_size=10, max_seq_len=8, n_layer=1, n_head=2, n_kv_head=1, d_model=4, ffn_hidden=6)
    # head_dim 2: q 4x4, k 4x2, v 4x2, o 4x4 = 48; mlp 3 * 4 * 6 = 72; lm head 10 * 4 = 40
    assert matmul_params(cfg) == 48 + 72 + 40
    assert flops_per_token(cfg, 8) == 6 * 160 + 12 * 1 * 4 * 8
    assert flops_per_token(tiny(tie_embeddings=False), 16) == flops_per_token(tiny(), 16)


def test_peak_and_mfu():
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops("cpu") is None
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe") == PEAK_BF16_FLOPS["H100 PCIe"]
    assert peak_flops_for_name("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops_for_name("NVIDIA A10") == 125e12
    assert peak_flops_for_name("NVIDIA H200") == 989e12
    assert peak_flops_for_name("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops_for_name("Some Future Accelerator") is None
    assert mfu(1000.0, 1e9, None) is None
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
