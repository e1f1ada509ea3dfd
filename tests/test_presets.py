"""model.preset: the 24 Well-Read Students sizes (Turc et al. 2019, arXiv:1908.08962), kiln/model/presets.py."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from kiln.cli import app
from kiln.model.config import TransformerConfig
from kiln.model.presets import ALIASES, HIDDEN, LAYERS, PRESETS, get_preset, preset_params
from kiln.recipe import ModelConfig, RecipeError, load_recipe

VOCAB = 2048


def test_table_has_the_24_sizes_with_bert_heads():
    assert len(PRESETS) == 24
    assert {(p.n_layer, p.d_model) for p in PRESETS.values()} == {(n, h) for n in LAYERS for h in HIDDEN}
    assert set(LAYERS) == {2, 4, 6, 8, 10, 12} and set(HIDDEN) == {128, 256, 512, 768}
    for p in PRESETS.values():
        assert p.n_head == p.d_model // 64 and p.d_model // p.n_head == 64
    assert {k: (get_preset(k).n_layer, get_preset(k).d_model) for k in ALIASES} == {
        "bert-tiny": (2, 128), "bert-mini": (4, 256), "bert-small": (4, 512), "bert-medium": (8, 512),
        "bert-base": (12, 768)}


def test_ffn_is_parameter_matched_swiglu_of_bert_4h():
    """SwiGLU (3 matrices H x F) with F = 8H/3 rounded up to 64: BERT's GELU 4H MLP has 8H^2 weights."""
    widths = {h: PRESETS[f"bert-L2-H{h}"].ffn_hidden for h in HIDDEN}
    assert widths == {128: 384, 256: 704, 512: 1408, 768: 2048}
    for h, f in widths.items():
        assert f % 64 == 0 and 8 * h / 3 <= f < 8 * h / 3 + 64
        assert abs(3 * h * f - 8 * h * h) / (8 * h * h) < 0.13  # parameter-matched to rounding
    assert 3 * 768 * 2048 == 8 * 768 * 768  # exact at BERT-Base width


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_the_formula_parameter_count(name):
    model_cfg = ModelConfig.model_validate({"preset": name})
    cfg = TransformerConfig.from_recipe(model_cfg, vocab_size=VOCAB, max_seq_len=128)
    with torch.device("meta"):  # shapes only: the 12 x 768 model needs no memory
        model = cfg.build()
    p = PRESETS[name]
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.ffn_hidden) == (p.n_layer, p.d_model, p.n_head, p.ffn_hidden)
    assert sum(t.numel() for t in model.parameters()) == preset_params(name, VOCAB)


def test_untied_formula_counts_the_output_head():
    cfg = TransformerConfig.from_recipe(ModelConfig.model_validate({"preset": "bert-L2-H128",
                                                                    "tie_embeddings": False}), VOCAB, 64)
    with torch.device("meta"):
        model = cfg.build()
    assert sum(t.numel() for t in model.parameters()) == preset_params("bert-L2-H128", VOCAB, tie_embeddings=False)


def test_explicit_fields_must_agree_with_the_preset():
    same = ModelConfig.model_validate({"preset": "bert-L4-H256", "n_layer": 4, "d_model": 256, "n_head": 4,
                                       "ffn_hidden": 704, "attention": "bidirectional"})
    assert (same.n_layer, same.d_model, same.attention) == (4, 256, "bidirectional")
    for key, bad in (("n_layer", 3), ("d_model", 128), ("n_head", 8), ("ffn_hidden", 1024)):
        with pytest.raises(ValueError, match=rf"model\.{key}: {bad} conflicts with model\.preset 'bert-L4-H256'"):
            ModelConfig.model_validate({"preset": "bert-L4-H256", key: bad})
    with pytest.raises(ValueError, match="unknown preset 'bert-L5-H256'"):
        ModelConfig.model_validate({"preset": "bert-L5-H256"})


def test_recipe_preset_resolves_into_the_saved_shape_and_fingerprint():
    """The name is shorthand: the saved recipe and the fingerprint carry the four fields, so reloading the saved
    recipe (no preset) gives the same model fingerprint as the explicit fields do."""
    with_preset = load_recipe("well-read-students")
    assert with_preset.model.preset == "bert-L2-H128"
    saved = yaml.safe_load(with_preset.to_yaml())["model"]
    assert "preset" not in saved and (saved["n_layer"], saved["d_model"], saved["n_head"], saved["ffn_hidden"]) \
        == (2, 128, 2, 384)
    explicit = load_recipe("well-read-students", ["model.preset=null", "model.n_layer=2", "model.d_model=128",
                                                  "model.n_head=2", "model.ffn_hidden=384"])
    assert with_preset.model.fingerprint() == explicit.model.fingerprint()
    other = load_recipe("well-read-students", ["model.preset=bert-L4-H256"])
    assert other.model.fingerprint() != with_preset.model.fingerprint()
    with pytest.raises(RecipeError, match=r"model\.n_layer: 4 conflicts with model\.preset 'bert-L2-H128'"):
        load_recipe("well-read-students", ["model.n_layer=4"])


def test_recipe_explain_lists_every_preset():
    res = CliRunner().invoke(app, ["recipe", "explain", "model.preset"])
    assert res.exit_code == 0, res.output
    allowed = next(line for line in res.output.splitlines() if line.strip().startswith("allowed:"))
    assert all(name in allowed for name in PRESETS) and "bert-tiny" in allowed
    assert "ffn_hidden" in res.output
