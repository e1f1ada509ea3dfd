"""Model seams (issue 11): defaults bit-identical to before, KVCache in the model package, one mask description,
hidden states / attention maps / head masking, RoPE scaling, the backend registry."""

from __future__ import annotations

import json

import pytest
import torch

from kiln.model.backends import backend_names, get_backend, register_backend, resolve_backend
from kiln.model.cache import KVCache
from kiln.model.config import TransformerConfig
from kiln.model.flex import HAS_FLEX
from kiln.model.heads import ModelOutput
from kiln.model.mask import AttentionMask
from kiln.model.transformer import BackboneOutput
from tests.model_reference import CONFIGS, REFERENCE, digest, reference_outputs


def small(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = TransformerConfig(**{"vocab_size": 61, "max_seq_len": 32, "n_layer": 2, "n_head": 4, "d_model": 32, **kw})
    return cfg.build().eval()


def ids(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(seed))


SEGMENTS = torch.tensor([[0] * 5 + [1] * 5 + [-1] * 2, [0] * 12])


# ----------------------------------------------------------------------------- defaults unchanged


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if c == "flex" else c for c in CONFIGS])
def test_outputs_and_parameter_names_are_bit_identical_to_before_the_seams(config):
    """flex is slow on CPU (FlexAttention's unfused reference path), hence marked slow."""
    saved = json.loads(REFERENCE.read_text())
    out, names = reference_outputs([config])
    assert names[config] == saved["names"][config]
    assert set(out) == {k for k in saved["tensors"] if k.split(".")[0] == config}
    changed = {k: (digest(v)["sum"], saved["tensors"][k]["sum"]) for k, v in out.items()
               if digest(v)["sha256"] != saved["tensors"][k]["sha256"]}
    assert not changed, changed


# ----------------------------------------------------------------------------- KVCache


def test_kv_cache_lives_in_the_model_package():
    from kiln.infer import generate

    assert generate.KVCache is KVCache and KVCache.__module__ == "kiln.model.cache"


# ----------------------------------------------------------------------------- the mask description


def test_attention_mask_is_built_once_and_frozen():
    m = AttentionMask.build("causal", "sdpa", q_len=4, device=torch.device("cpu"))
    assert (m.kind, m.dense, m.is_causal, m.k_len) == ("causal", None, True, 4)
    with pytest.raises(AttributeError):
        m.kind = "bidirectional"  # type: ignore[misc]
    seg = AttentionMask.build("bidirectional", "sdpa", q_len=12, device=torch.device("cpu"), segments=SEGMENTS)
    assert seg.dense.shape == (2, 1, 12, 12) and not seg.dense[0, 0, 0, 6]
    pre = AttentionMask.build("prefix", "sdpa", q_len=4, device=torch.device("cpu"))
    assert pre.kind == "causal"  # no prefix: a decoder
    with pytest.raises(ValueError, match="cannot decode with a KV cache"):
        AttentionMask.build("bidirectional", "sdpa", q_len=1, device=torch.device("cpu"), start=3, cached=True)


def test_materialize_matches_sdpa_causal_offset():
    m = AttentionMask.build("causal", "eager", q_len=3, start=2, device=torch.device("cpu"), cached=True)
    dense = m.materialize(torch.device("cpu"))
    assert dense.shape == (1, 5) or dense.shape[-2:] == (3, 5)
    assert dense.reshape(3, 5).tolist() == [[True, True, True, False, False], [True] * 4 + [False], [True] * 5]


# ----------------------------------------------------------------------------- hidden states, maps, heads


def test_hidden_states_and_attention_maps():
    model = small()
    tokens = ids()
    with torch.no_grad():
        plain = model(tokens, segments=SEGMENTS)
        out = model(tokens, segments=SEGMENTS, output_hidden_states=True, output_attentions=True)
    assert isinstance(out, ModelOutput)
    torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=0)
    assert len(out.hidden_states) == 3 and all(h.shape == (2, 12, 32) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[0], model.backbone.tok_emb(tokens))
    torch.testing.assert_close(model.backbone.norm(out.hidden_states[-1]), out.hidden, atol=0, rtol=0)
    assert len(out.attentions) == 2
    probs = out.attentions[0]
    assert probs.shape == (2, 4, 12, 12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 12))
    assert probs[0, :, 2, 3:].abs().max() == 0  # causal: no future key
    assert probs[0, :, 6, :5].abs().max() == 0  # document mask: not the previous document
    only = model.backbone(tokens, output_hidden_states=True)
    assert isinstance(only, BackboneOutput) and only.attentions == ()


def test_empty_masked_heads_is_bit_identical():
    model = small()
    tokens = ids()
    with torch.no_grad():
        assert torch.equal(model(tokens, masked_heads=[]), model(tokens))
        assert torch.equal(model(tokens, segments=SEGMENTS, masked_heads=[]), model(tokens, segments=SEGMENTS))


def test_masking_a_head_zeroes_its_contribution_before_wo():
    model = small()
    tokens = ids()
    with torch.no_grad():
        base = model(tokens)
        masked = model(tokens, masked_heads=[(1, 2)])
        assert not torch.allclose(base, masked)
        # the same as zeroing the output projection's input columns of that head
        ref = small()
        ref.backbone.blocks[1].attn.wo.weight[:, 2 * 8 : 3 * 8] = 0
        torch.testing.assert_close(ref(tokens), masked, atol=1e-6, rtol=0)
        # a head mask tensor (1 = keep) does the same, and the config default applies when a call gives none
        hm = torch.ones(2, 4)
        hm[1, 2] = 0
        torch.testing.assert_close(model(tokens, head_mask=hm), masked, atol=0, rtol=0)
        default = small(masked_heads=[[1, 2]])
        torch.testing.assert_close(default(tokens), masked, atol=0, rtol=0)
        assert torch.equal(default(tokens, masked_heads=[]), base)


def test_head_mask_gradients_give_head_importance():
    model = small()
    hm = torch.ones(2, 4, requires_grad=True)
    logits = model(ids(), head_mask=hm)
    logits.logsumexp(-1).sum().backward()
    assert hm.grad is not None and hm.grad.abs().min() > 0


def test_bad_head_masks_are_refused():
    with pytest.raises(ValueError, match="masked_heads"):
        small(masked_heads=[[2, 0]])
    model = small()
    with pytest.raises(ValueError, match="outside n_layer=2, n_head=4"):
        model(ids(), masked_heads=[(0, 4)])
    with pytest.raises(ValueError, match=r"head_mask must have shape \(n_layer, n_head\)"):
        model(ids(), head_mask=torch.ones(4))


# ----------------------------------------------------------------------------- RoPE scaling


def test_rope_scaling_base_and_linear():
    base = small()
    assert base.config.rope_theta == 10000.0
    ntk = small(rope_scaling={"type": "base", "factor": 4.0})
    hd = 8
    assert ntk.config.rope_theta == pytest.approx(10000.0 * 4.0 ** (hd / (hd - 2)))
    same_base = small(rope_base=ntk.config.rope_theta)  # a base change is exactly a different rope_base
    assert torch.equal(ntk.backbone.rope_cos, same_base.backbone.rope_cos)
    assert not torch.equal(ntk.backbone.rope_cos, base.backbone.rope_cos)
    linear = small(rope_scaling={"type": "linear", "factor": 2.0})
    # position interpolation: position 2p under factor 2 turns like position p did
    torch.testing.assert_close(linear.backbone.rope_cos[2:32:2], base.backbone.rope_cos[1:16], atol=1e-6, rtol=0)
    for bad in ({"type": "yarn", "factor": 2.0}, {"type": "base"}, {"type": "base", "factor": 0}):
        with pytest.raises(ValueError, match="rope_scaling"):
            small(rope_scaling=bad)
    with pytest.raises(ValueError, match="needs positions: rope"):
        small(positions="learned", rope_scaling={"type": "base", "factor": 2.0})


def test_rope_scaling_round_trips_through_config_json(tmp_path):
    from kiln.model.io import load_pretrained, save_pretrained

    model = small(rope_scaling={"type": "linear", "factor": 2.0}, masked_heads=[[0, 1]])
    back = load_pretrained(save_pretrained(model, tmp_path / "m")).eval()
    assert back.config == model.config
    with torch.no_grad():
        assert torch.equal(back(ids()), model(ids()))


def test_recipe_model_section_takes_the_new_options():
    from kiln.recipe import RecipeError, load_recipe

    r = load_recipe(None, ["model.attention_backend=eager", "model.rope_scaling.type=base",
                           "model.rope_scaling.factor=4", "model.masked_heads=[[0,1]]"])
    cfg = TransformerConfig.from_recipe(r.model, vocab_size=64, max_seq_len=32)
    assert cfg.attention_backend == "eager" and cfg.rope_scaling == {"type": "base", "factor": 4.0}
    assert cfg.masked_heads == [[0, 1]]
    with pytest.raises(RecipeError, match="rope_scaling"):
        load_recipe(None, ["model.rope_scaling.type=yarn", "model.rope_scaling.factor=2"])


# ----------------------------------------------------------------------------- backends


BACKEND_CASES = [
    ("plain", {}),
    ("segmented", {"segments": SEGMENTS}),
    ("bidirectional", {"segments": SEGMENTS, "attention": "bidirectional"}),
    ("prefix", {"segments": SEGMENTS, "attention": "prefix", "prefix": torch.tensor([3, 7])}),
    ("explicit", {"mask": torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 12, 12)}),
]


@pytest.mark.parametrize("name,kwargs", BACKEND_CASES, ids=[c[0] for c in BACKEND_CASES])
def test_backends_agree(name, kwargs):
    backends = ["sdpa", "eager"] + (["flex"] if HAS_FLEX else [])
    outs = {}
    for backend in backends:
        model = small(attention_backend=backend, n_kv_head=2)
        with torch.no_grad():
            outs[backend] = model(ids(), **kwargs)
    for backend in backends[1:]:
        torch.testing.assert_close(outs[backend], outs["sdpa"], atol=1e-5, rtol=0)


def test_backends_agree_with_a_kv_cache():
    tokens = ids(1, 10)
    results = {}
    for backend in ("sdpa", "eager"):
        model = small(attention_backend=backend)
        cache = KVCache.for_model(model, max_len=10)
        with torch.no_grad():
            steps = [model(tokens[:, :6], kv_cache=cache)] + [model(tokens[:, i : i + 1], kv_cache=cache)
                                                              for i in range(6, 10)]
            results[backend] = torch.cat(steps, 1)
            torch.testing.assert_close(results[backend], model(tokens), atol=1e-5, rtol=0)
    torch.testing.assert_close(results["eager"], results["sdpa"], atol=1e-5, rtol=0)


def test_backend_registry():
    assert {"auto", "sdpa", "flex", "eager"} <= set(backend_names())
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "sdpa"
    assert resolve_backend("sdpa", cpu, need_weights=True) == "eager"
    assert get_backend("eager").returns_weights and get_backend("flex").block_masks
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_backend("flash", cpu)
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        small(attention_backend="flash")
    calls = []

    def counting(q, k, v, mask, need_weights):
        calls.append(mask.kind)
        return get_backend("sdpa").attend(q, k, v, mask, need_weights)

    register_backend("counting-test", counting)
    try:
        model = small(attention_backend="counting-test")
        with torch.no_grad():
            torch.testing.assert_close(model(ids()), small()(ids()), atol=0, rtol=0)
        assert calls == ["causal", "causal"]  # one call per layer, the mask built once
    finally:
        from kiln.model import backends

        backends._REGISTRY.pop("counting-test")


def test_hf_export_maps_a_base_change_to_rope_theta_and_refuses_linear(tmp_path):
    pytest.importorskip("transformers")
    from kiln.model.hf import ExportError, export_hf
    from kiln.model.hf_remote import export_remote
    from kiln.model.load import load_model

    ntk = small(rope_scaling={"type": "base", "factor": 4.0})
    summary = export_hf(ntk, tmp_path / "llama", verify=True)  # verify: transformers' logits equal kiln's
    assert summary["max_logit_diff"] <= 1e-4
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta"))
    assert theta == pytest.approx(ntk.config.rope_theta)
    back = load_model(tmp_path / "llama").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids()), ntk(ids()), atol=1e-5, rtol=0)
    post = small(norm="post", rope_scaling={"type": "base", "factor": 4.0})
    export_remote(post, tmp_path / "remote", verify=False)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "remote").eval()(ids()), post(ids()), atol=1e-5, rtol=0)
    linear = small(rope_scaling={"type": "linear", "factor": 2.0})
    with pytest.raises(ExportError, match="rope_scaling.*linear"):
        export_hf(linear, tmp_path / "lin", verify=False)
    with pytest.raises(ExportError, match="rope_scaling.*linear"):
        export_remote(linear, tmp_path / "lin2", verify=False)
    with pytest.raises(ExportError, match="masked_heads"):
        export_hf(small(masked_heads=[[0, 0]]), tmp_path / "mh", verify=False)


def test_masked_heads_hold_through_kv_cache_decoding():
    """AttentionInfluence-style inference: a model whose config masks heads decodes with the KV cache exactly as
    its full forward does, and differs from the unmasked model."""
    masked, plain = small(masked_heads=[[0, 1], [1, 3]]), small()
    tokens = ids(1, 9)
    cache = KVCache.for_model(masked, max_len=9)
    with torch.no_grad():
        steps = [masked(tokens[:, :5], kv_cache=cache)] + [masked(tokens[:, i : i + 1], kv_cache=cache)
                                                          for i in range(5, 9)]
        torch.testing.assert_close(torch.cat(steps, 1), masked(tokens), atol=1e-5, rtol=0)
        assert not torch.allclose(masked(tokens), plain(tokens), atol=1e-4)
