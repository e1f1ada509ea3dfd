"""Hugging Face export/import: exact configs, logit parity with transformers' Auto classes, the
tokenizer round trip, pipeline generation, refusals. Offline: nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from kiln.cli import app  # noqa: E402
from kiln.infer.generate import generate  # noqa: E402
from kiln.model.config import TransformerConfig  # noqa: E402
from kiln.model.hf import ExportError, export_hf, llama_incompatibilities  # noqa: E402
from kiln.model.hf_import import load_llama  # noqa: E402
from kiln.recipe import load_recipe  # noqa: E402
from kiln.run import RunDir  # noqa: E402
from kiln.stages import run_pipeline  # noqa: E402
from kiln.tokenizer.special import BOS, EOS, MASK, PAD, SPECIAL_IDS  # noqa: E402
from kiln.tokenizer.train import load_tokenizer  # noqa: E402
from kiln.train.checkpoint import latest_checkpoint, load_model  # noqa: E402
from tests.synthetic import tiny_overrides, write_jsonl_corpus  # noqa: E402

TEXTS = ["King and queen", "  leading spaces\tand tabs\n\nnewlines ", "naïve café — ünïcödé 日本語 🙂",
         "", "a", "Sleep. Dream!  Wake?", "<|bos|> is special, <|eos|> too"]


def random_model(kv: int, tied: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=300, max_seq_len=64, n_layer=2, n_head=4, n_kv_head=kv, d_model=64,
                            tie_embeddings=tied)
    model = cfg.build().eval()
    with torch.no_grad():  # norm gains start at 1: make them differ so their mapping is tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfrun")
    corpus = write_jsonl_corpus(root / "docs.jsonl", n_docs=60)
    run = RunDir(root / "run")
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=10)), run, until="train")
    return run


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hfout") / "model"
    res = CliRunner().invoke(app, ["export", str(tiny_run.root), "--format", "hf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "max |logit diff|" in res.output
    return out


@pytest.mark.parametrize(("kv", "tied"), [(4, True), (4, False), (2, True), (1, False)])
def test_logits_match_auto_model(tmp_path, kv, tied):
    model = random_model(kv, tied)
    export_hf(model, tmp_path, verify=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["num_hidden_layers"], cfg["vocab_size"], cfg["max_position_embeddings"]) == (
        64, model.config.ffn_hidden, 4, kv, 2, 300, 64)
    assert cfg["tie_word_embeddings"] is tied
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (0, 1, 2)
    assert cfg["attention_bias"] is False and cfg["mlp_bias"] is False and cfg["hidden_act"] == "silu"
    assert cfg["rms_norm_eps"] == model.config.norm_eps
    assert cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta")) == model.config.rope_base
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "float32"
    assert (tmp_path / "model.safetensors").exists()

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokens = torch.randint(0, 300, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(input_ids=tokens).logits - model(tokens)).abs().max().item()
    assert diff <= 1e-4, diff


def test_import_round_trip(tmp_path):
    for kv, tied in [(2, True), (4, False)]:
        model = random_model(kv, tied, seed=3)
        export_hf(model, tmp_path / f"m{kv}", verify=False)
        back = load_llama(tmp_path / f"m{kv}")
        assert back.config == model.config
        assert back.tied is tied
        for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b), k


def test_refuses_configs_without_a_llama_twin():
    base = dict(vocab_size=300, max_seq_len=64, n_layer=2, n_head=2, d_model=32)
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    changes = [({"norm": "mix"}, "Mix-LN"), ({"norm": "post"}, "Post-LN"), ({"positions": "learned"}, "learned"),
               ({"positions": "none"}, "RoPE"), ({"attention": "bidirectional"}, "bidirectional"),
               ({"attention": "prefix"}, "prefix")]
    for change, words in [(c, w) for c, w in changes if set(c) <= fields]:  # the options this kiln has
        model = TransformerConfig(**base, **change).build()
        problems = llama_incompatibilities(model.config)
        assert len(problems) == 1 and words in problems[0], problems
        with pytest.raises(ExportError, match="no exact LlamaForCausalLM twin"):
            export_hf(model, "/nonexistent", verify=False)
    Extended = dataclasses.make_dataclass("Extended", [("fancy", int, 0)], bases=(TransformerConfig,))
    assert llama_incompatibilities(Extended(**base)) == []  # an unknown option at its default is the old model
    assert "does not know" in llama_incompatibilities(Extended(**base, fancy=1))[0]
    model = TransformerConfig(**base).build()
    model.backbone.extra = torch.nn.Linear(32, 32)  # a backbone weight Llama has no place for
    with pytest.raises(ExportError, match="backbone.extra.weight"):
        export_hf(model, "/nonexistent", verify=False)


def test_extra_heads_are_left_out(tmp_path):
    if "heads" not in {f.name for f in dataclasses.fields(TransformerConfig)}:
        pytest.skip("this kiln has no extra heads")
    model = TransformerConfig(vocab_size=300, max_seq_len=64, n_layer=2, n_head=2, d_model=32,
                              heads={"mlm": {}}).build()
    summary = export_hf(model, tmp_path, verify=True)
    assert summary["dropped"] and all(k.startswith("heads.") for k in summary["dropped"])
    assert summary["max_logit_diff"] <= 1e-4


def test_tokenizer_round_trips(tiny_run, exported):
    kiln_tok = load_tokenizer(tiny_run.stage("tokenizer"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token, hf_tok.mask_token) == (BOS, EOS, PAD, MASK)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 2)
    assert all(hf_tok.convert_tokens_to_ids(t) == i for t, i in SPECIAL_IDS.items())
    for text in TEXTS:
        ids = kiln_tok.encode(text, add_special_tokens=False).ids
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf_tok(text)["input_ids"] == [SPECIAL_IDS[BOS]] + ids, text  # a kiln generation prompt
        doc = kiln_tok.encode(text).ids  # a kiln document: <|bos|> text <|eos|>
        assert hf_tok.decode(doc, skip_special_tokens=True) == kiln_tok.decode(doc) == kiln_tok.decode(ids)
        if "<|" not in text:
            assert hf_tok.decode(ids) == text


def test_exported_run_generates_like_kiln(tiny_run, exported):
    model = load_model(latest_checkpoint(tiny_run.stage("train") / "checkpoints")).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    prompt = hf_tok("King", return_tensors="pt")["input_ids"]
    theirs = hf.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, prompt.shape[1]:]
    ours = generate(model, prompt[0].tolist(), 8, temperature=0.0)  # greedy, no early stop
    assert theirs.tolist() == ours

    pipe = transformers.pipeline("text-generation", model=str(exported))
    text = pipe("King", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("King") and len(text) > len("King")


def test_cli_export_errors(tiny_run, tmp_path):
    res = CliRunner().invoke(app, ["export", str(tiny_run.root), "--format", "gguf", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown" in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path / "norun"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no checkpoint" in res.output
