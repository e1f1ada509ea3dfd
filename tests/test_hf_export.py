"""Hugging Face export/import: exact configs, logit parity with transformers' Auto classes (Llama, and kiln's
remote-code classes for encoders and non-Llama decoders), the tokenizer round trip, pipeline generation,
refusals. Offline: nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402 - a [test] dependency: missing means a broken install, which must fail, not skip

from kiln.cli import app  # noqa: E402
from kiln.infer.generate import generate  # noqa: E402
from kiln.model.config import TransformerConfig  # noqa: E402
from kiln.model.hf import ExportError, export_hf, llama_incompatibilities  # noqa: E402
from kiln.model.hf_import import load_llama  # noqa: E402
from kiln.model.hf_remote import choose_architecture, export_auto, remote_incompatibilities  # noqa: E402
from kiln.model.io import save_pretrained  # noqa: E402
from kiln.tokenizer.special import BOS, EOS, MASK, PAD, SPECIAL_IDS  # noqa: E402
from kiln.tokenizer.train import load_tokenizer  # noqa: E402
from kiln.train.checkpoint import latest_checkpoint, load_model  # noqa: E402

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
def tiny_run(tiny_trained):
    return tiny_trained.run  # the session's shared tiny run (tests/conftest.py); read-only


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
    assert "heads" in {f.name for f in dataclasses.fields(TransformerConfig)}  # a case that cannot be built fails
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


# ------------------------------------------------------------------ remote code (encoders, non-Llama decoders)


def random_remote_model(seed: int = 0, **options):
    """A small kiln model with every norm gain and head bias away from its init, so their mapping is tested."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(**{"vocab_size": 300, "max_seq_len": 64, "n_layer": 3, "n_head": 4, "n_kv_head": 2,
                               "d_model": 64, **options})
    model = cfg.build().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def kiln_mlm_logits(model, tokens):
    with torch.no_grad():
        return model.heads["mlm"](model.backbone(tokens, attention="bidirectional"), model.backbone.tok_emb.weight)


def padded_batch(rows: list[torch.Tensor], T: int, left: list[bool]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Rows padded to T with <|pad|> (left or right) + the attention mask + each row's span."""
    ids, mask, spans = torch.full((len(rows), T), SPECIAL_IDS[PAD]), torch.zeros(len(rows), T, dtype=torch.long), []
    for i, (row, lft) in enumerate(zip(rows, left, strict=True)):
        span = slice(T - len(row), T) if lft else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
        spans.append(span)
    return ids, mask, spans


@pytest.mark.parametrize("options", [{}, {"n_kv_head": 4}])
def test_encoder_logits_match_auto_model_for_masked_lm(tmp_path, options):
    model = random_remote_model(attention="bidirectional", heads={"mlm": {}}, **options)
    summary = export_auto(model, tmp_path)
    assert (summary["architecture"], summary["auto_class"], summary["remote_code"]) == (
        "KilnForMaskedLM", "AutoModelForMaskedLM", True)
    assert summary["max_logit_diff"] <= 1e-4 and summary["dropped"] == []
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "kiln" and cfg["architectures"] == ["KilnForMaskedLM"]
    assert cfg["auto_map"] == {"AutoConfig": "configuration_kiln.KilnConfig", "AutoModel": "modeling_kiln.KilnModel",
                               "AutoModelForMaskedLM": "modeling_kiln.KilnForMaskedLM"}
    assert (cfg["attention"], cfg["norm"], cfg["positions"], cfg["num_key_value_heads"]) == (
        "bidirectional", "pre", "rope", model.config.n_kv_head)
    for name in ("configuration_kiln.py", "modeling_kiln.py", "model.safetensors"):
        assert (tmp_path / name).exists(), name
    source = (tmp_path / "modeling_kiln.py").read_text() + (tmp_path / "configuration_kiln.py").read_text()
    imported = {m.split(".")[0] for m in re.findall(r"^(?:from|import) (\S+)", source, re.M)}
    assert imported <= {"__future__", "dataclasses", "torch", "transformers", ""}, imported  # runs without kiln

    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(hf).__name__ == "KilnForMaskedLM"
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 300, (3, 48), generator=gen)
    with torch.no_grad():
        diff = (hf(input_ids=tokens).logits - kiln_mlm_logits(model, tokens)).abs().max().item()
    assert diff <= 1e-4, diff

    rows = [torch.randint(0, 300, (n,), generator=gen) for n in (48, 20, 7)]
    ids, mask, spans = padded_batch(rows, 48, left=[True, True, False])
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits
    for row, span, got in zip(rows, spans, logits, strict=True):
        diff = (got[span] - kiln_mlm_logits(model, row[None])[0]).abs().max().item()
        assert diff <= 1e-4, (len(row), diff)

    base = transformers.AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    with torch.no_grad():
        hidden = base(input_ids=tokens).last_hidden_state
        assert (hidden - model.backbone(tokens, attention="bidirectional")).abs().max().item() <= 1e-4


REMOTE_CASES = [  # options, architecture the export must pick
    ({"attention": "bidirectional", "heads": {"mlm": {}}, "norm": "mix", "mix_alpha": 0.5, "positions": "learned",
      "tie_embeddings": False}, "KilnForMaskedLM"),
    ({"attention": "bidirectional", "heads": {"mlm": {}}, "norm": "post", "positions": "none"}, "KilnForMaskedLM"),
    ({"attention": "bidirectional", "heads": {"rtd": {}}}, "KilnModel"),
    ({"norm": "mix", "mix_alpha": 0.4}, "KilnForCausalLM"),
    ({"norm": "post", "positions": "learned", "tie_embeddings": False}, "KilnForCausalLM"),
    ({"attention": "prefix", "positions": "none"}, "KilnForCausalLM"),
]


@pytest.mark.parametrize(("options", "architecture"), REMOTE_CASES)
def test_configs_without_a_transformers_twin_export_via_remote_code(tmp_path, options, architecture):
    model = random_remote_model(seed=2, **options)
    summary = export_auto(model, tmp_path)
    assert summary["architecture"] == architecture and summary["max_logit_diff"] <= 1e-4
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["post_norm_layers"] == model.config.n_post_ln and cfg["positions"] == model.config.positions
    auto = getattr(transformers, summary["auto_class"])
    hf = auto.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(hf).__name__ == architecture
    tokens = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if architecture == "KilnForMaskedLM":
            ours, theirs = kiln_mlm_logits(model, tokens), hf(input_ids=tokens).logits
        elif architecture == "KilnModel":
            ours, theirs = model.backbone(tokens), hf(input_ids=tokens).last_hidden_state
            assert summary["dropped"] == ["heads.rtd.proj.weight", "heads.rtd.proj.bias"]
        else:
            ours, theirs = model(tokens), hf(input_ids=tokens).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    if options.get("attention") == "prefix":  # bidirectional inside the prefix, causal after it
        prefix = torch.tensor([25, 4])
        with torch.no_grad():
            diff = (model(tokens, attention="prefix", prefix=prefix) - hf(input_ids=tokens, prefix=prefix).logits)
        assert diff.abs().max().item() <= 1e-4


def test_remote_decoder_generates_like_kiln(tmp_path):
    model = random_remote_model(seed=4, norm="mix", mix_alpha=0.5, positions="learned", tie_embeddings=False)
    export_auto(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    prompts = [[0, 5, 17, 33], [0, 9, 8, 7, 6, 5, 4]]
    ids, mask, _ = padded_batch([torch.tensor(p) for p in prompts], 7, left=[True, True])  # KV cache + padding
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                      pad_token_id=SPECIAL_IDS[PAD])[:, 7:]
    assert out.tolist() == [generate(model, p, 6, temperature=0.0) for p in prompts]


def test_export_auto_keeps_llama_and_follows_head(tmp_path):
    decoder = random_model(2, True)
    summary = export_auto(decoder, tmp_path / "llama")
    assert (summary["architecture"], summary["remote_code"]) == ("LlamaForCausalLM", False)
    assert not (tmp_path / "llama" / "modeling_kiln.py").exists()
    both = random_remote_model(heads={"mlm": {}})  # a causal config with an MLM head (clm-mlm): head picks
    assert choose_architecture(both) == "LlamaForCausalLM"
    summary = export_auto(both, tmp_path / "mlm", head="mlm")
    assert summary["architecture"] == "KilnForMaskedLM" and summary["max_logit_diff"] <= 1e-4
    assert json.loads((tmp_path / "mlm" / "config.json").read_text())["attention"] == "bidirectional"
    assert choose_architecture(both, "none") == "KilnModel"


def test_remote_export_refusals(tmp_path, monkeypatch):
    base = dict(vocab_size=300, max_seq_len=64, n_layer=2, n_head=2, d_model=32, attention="bidirectional",
                heads={"mlm": {}})
    Extended = dataclasses.make_dataclass("Extended", [("fancy", int, 0)], bases=(TransformerConfig,))
    assert remote_incompatibilities(Extended(**base)) == []
    model = Extended(**base, fancy=1).build()
    with pytest.raises(ExportError, match="model.fancy=1"):
        export_auto(model, tmp_path / "a", verify=False)
    model = TransformerConfig(**base).build()
    model.backbone.extra = torch.nn.Linear(32, 32)
    with pytest.raises(ExportError, match="backbone.extra.weight"):
        export_auto(model, tmp_path / "b", verify=False)
    with pytest.raises(ExportError, match="not a causal LM"):
        export_auto(TransformerConfig(**base).build(), tmp_path / "c", head="lm")
    with pytest.raises(ExportError, match="no MLM head"):
        export_auto(TransformerConfig(**{**base, "heads": {}}).build(), tmp_path / "d", head="mlm")
    with pytest.raises(ExportError, match="unknown"):
        export_auto(TransformerConfig(**base).build(), tmp_path / "e", head="classifier")
    assert not any((tmp_path / n).exists() for n in "abcde")

    from kiln.model import hf_remote
    from kiln.model.remote import modeling_kiln

    model = random_remote_model(attention="bidirectional", heads={"mlm": {}})
    shipped = tmp_path / "shipped"  # a shipped file that differs from the class verified in memory
    shutil.copytree(hf_remote.REMOTE_DIR, shipped)
    source = (shipped / "modeling_kiln.py").read_text()
    (shipped / "modeling_kiln.py").write_text(source.replace("F.gelu(self.dense(hidden))",
                                                             'F.gelu(self.dense(hidden), approximate="tanh")'))
    monkeypatch.setattr(hf_remote, "REMOTE_DIR", shipped)
    with pytest.raises(ExportError, match="loads back with different outputs"):
        export_auto(model, tmp_path / "f")
    monkeypatch.undo()

    def relu_head(self, hidden, embedding):  # a wrong class is refused before anything is written
        return torch.nn.functional.linear(self.norm(torch.relu(self.dense(hidden))), embedding, self.bias)

    monkeypatch.setattr(modeling_kiln.KilnMLMHead, "forward", relu_head)
    with pytest.raises(ExportError, match="disagrees with kiln"):
        export_auto(model, tmp_path / "g")
    assert not (tmp_path / "f").exists() and not (tmp_path / "g").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipped"]  # no temporary folder left behind


def test_cli_exports_an_encoder_with_remote_code(tiny_run, tmp_path):
    vocab = load_model(latest_checkpoint(tiny_run.stage("train") / "checkpoints")).config.vocab_size
    torch.manual_seed(0)
    encoder = TransformerConfig(vocab_size=vocab, max_seq_len=64, n_layer=2, n_head=2, d_model=32,
                                attention="bidirectional", heads={"mlm": {}}).build()
    save_pretrained(encoder, tmp_path / "ckpt")
    out = tmp_path / "encoder"
    res = CliRunner().invoke(app, ["export", str(tiny_run.root), "--checkpoint", str(tmp_path / "ckpt"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "KilnForMaskedLM" in text and "max |logit diff|" in text and "trust_remote_code=True" in text
    assert (out / "tokenizer.json").exists() and (out / "modeling_kiln.py").exists()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.mask_token == MASK
    fill = transformers.pipeline("fill-mask", model=str(out), trust_remote_code=True)
    assert len(fill(f"King {MASK} queen", top_k=3)) == 3
    res = CliRunner().invoke(app, ["export", str(tiny_run.root), "--checkpoint", str(tmp_path / "ckpt"),
                                   "--out", str(tmp_path / "x"), "--head", "lm"])
    assert res.exit_code == 2 and "not a causal LM" in res.output
