"""kiln.model.load: one loader for checkpoints, run folders and `kiln export` folders, with clear refusals."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kiln.model.config import TransformerConfig
from kiln.model.io import save_pretrained
from kiln.model.load import CheckpointError, ModelLoadError, load_model, resolve_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def small_model(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = TransformerConfig(**{"vocab_size": 97, "max_seq_len": 32, "n_layer": 2, "n_head": 4, "d_model": 32, **kw})
    model = cfg.build().eval()
    with torch.no_grad():  # norm gains start at 1: make them differ so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.no_grad():
        assert torch.equal(a.eval()(tokens()), b.eval()(tokens()))


def test_step_folder_and_run_layouts_resolve_to_the_latest_checkpoint(tmp_path):
    run = tmp_path / "run"
    old, new = small_model(0), small_model(1)
    save_pretrained(old, run / "train" / "checkpoints" / "step-000002")
    save_pretrained(new, run / "train" / "checkpoints" / "step-000010")
    latest = run / "train" / "checkpoints" / "step-000010"
    for path in (run, run / "train", run / "train" / "checkpoints", latest):
        assert resolve_model_dir(path) == latest
        assert_same(load_model(path), new)
    assert_same(load_model(run / "train" / "checkpoints" / "step-000002"), old)


def test_device_and_training_mode(tmp_path):
    save_pretrained(small_model(), tmp_path / "m")
    model = load_model(str(tmp_path / "m"), device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "cpu" and model.training


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.mkdir(), "no kiln checkpoint at"),
    (lambda p: p.write_text("x"), "a file, not a folder"),
])
def test_refuses_paths_without_a_model(tmp_path, setup, match):
    path = tmp_path / "thing"
    setup(path)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_refuses_broken_kiln_checkpoints(tmp_path):
    folder = save_pretrained(small_model(), tmp_path / "step-000001")
    (folder / "config.json").write_text('{"vocab_size": ')
    with pytest.raises(CheckpointError, match="config.json is not a valid model config"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"vocab_size": 97, "max_seq_len": 32, "wings": 2}))
    with pytest.raises(CheckpointError, match="unknown TransformerConfig fields: wings"):
        load_model(folder)
    save_pretrained(small_model(), folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "d_model": 64}))
    with pytest.raises(CheckpointError, match="does not hold the weights its config.json describes"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete: missing model.safetensors"):
        load_model(folder)


def test_refuses_foreign_hf_folders(tmp_path):
    folder = save_pretrained(small_model(), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="not a Llama checkpoint"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "kiln", "architectures": ["KilnForSomething"]}))
    with pytest.raises(ModelLoadError, match="KilnForSomething"):
        load_model(folder)


def test_train_checkpoint_load_model_delegates(tmp_path):
    from kiln.train import checkpoint

    model = small_model()
    save_pretrained(model, tmp_path / "run" / "train" / "checkpoints" / "step-000003")
    assert_same(checkpoint.load_model(tmp_path / "run"), model)
    assert checkpoint.CheckpointError is CheckpointError and issubclass(CheckpointError, ModelLoadError)


def test_reference_model_resolution_uses_the_loader(tmp_path):
    from kiln.corpus.learned.refmodel import ReferenceModelError, resolve_checkpoint

    save_pretrained(small_model(), tmp_path / "run" / "train" / "checkpoints" / "step-000004")
    assert resolve_checkpoint(tmp_path / "run").name == "step-000004"
    with pytest.raises(ReferenceModelError, match="no kiln checkpoint"):
        resolve_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- kiln export folders


@pytest.mark.parametrize("tied", [True, False])
def test_llama_export_folder_loads_exactly(tmp_path, tied):
    pytest.importorskip("transformers")
    from kiln.model.hf import export_hf

    model = small_model(tie_embeddings=tied, n_kv_head=2)
    export_hf(model, tmp_path / "hf", verify=False)
    back = load_model(tmp_path / "hf")
    assert back.config == model.config
    assert_same(back, model)


@pytest.mark.parametrize("kw,arch", [
    ({"norm": "mix", "mix_alpha": 0.5, "n_layer": 3}, "KilnForCausalLM"),
    ({"positions": "learned", "tie_embeddings": False}, "KilnForCausalLM"),
    ({"attention": "bidirectional", "heads": {"mlm": {}}}, "KilnForMaskedLM"),
    ({"attention": "bidirectional", "norm": "post"}, "KilnModel"),
])
def test_remote_code_export_folder_loads_exactly(tmp_path, kw, arch):
    pytest.importorskip("transformers")
    from kiln.model.hf_remote import export_remote

    model = small_model(**kw)
    summary = export_remote(model, tmp_path / "hf", verify=False)
    assert summary["architecture"] == arch
    back = load_model(tmp_path / "hf").eval()
    assert back.config.n_post_ln == model.config.n_post_ln
    with torch.no_grad():
        ids = tokens()
        assert torch.equal(back.backbone(ids), model.backbone(ids))
        if arch == "KilnForCausalLM":
            assert torch.equal(back(ids), model(ids))
        if arch == "KilnForMaskedLM":
            emb = model.backbone.tok_emb.weight
            assert torch.equal(back.heads["mlm"](back.backbone(ids), emb), model.heads["mlm"](model.backbone(ids), emb))
