"""Hugging Face export through remote code, and the choice between it and Llama.

No ``transformers`` class is kiln's encoder: BERT and NomicBERT are Post-LN LayerNorm models (learned
positions / biases), ModernBERT has LayerNorm, GeGLU and local attention, EuroBERT's backbone is kiln's
Pre-LN encoder but its MLM head is one Linear, not BERT's dense-GELU-LayerNorm head kiln trains. Nor does
any class place norms Post-LN / Mix-LN in an otherwise Llama decoder, or take a prefix-LM mask. Those models
export with a documented remote-code class, ``kiln/model/remote/modeling_kiln.py`` (plain torch, kiln's
computation operation for operation), copied into the folder with ``configuration_kiln.py``; load them
with ``trust_remote_code=True``:

=================  ======================  ==========================================================
``head``           class (Auto class)      what it is
=================  ======================  ==========================================================
``mlm``            KilnForMaskedLM         encoder + MLM head (``AutoModelForMaskedLM``), bidirectional
``lm``             KilnForCausalLM         decoder (``AutoModelForCausalLM``; ``generate`` works)
``none``           KilnModel               the backbone's hidden states (``AutoModel``)
=================  ======================  ==========================================================

Weights keep kiln's names: ``backbone.X`` -> ``model.X`` (``X`` in KilnModel), ``heads.mlm.X`` ->
``mlm_head.X`` (the MLM decoder is the token embedding, as in kiln), ``lm_head.weight`` -> ``lm_head.weight``
(untied decoders only). Heads the class lacks (RTD, generator, ...) are left out and listed; document-masked
attention is a training-time mask and exports as the model's plain attention, as for Llama.

:func:`export_auto` picks the path: a causal decoder that Llama matches exactly still exports as
``LlamaForCausalLM`` (:mod:`kiln.model.hf`, no remote code); a bidirectional model exports as
KilnForMaskedLM when it has an ``mlm`` head, else KilnModel; any other decoder as KilnForCausalLM.
Every norm placement (pre / post / mix), position scheme (rope / learned / none) and attention
(causal / bidirectional / prefix) is covered; an unknown option away from its default, or a weight the
table does not name, is refused with :class:`~kiln.model.hf.ExportError`. Before writing, kiln's and the
exported class's outputs are compared in fp32, with and without padding (and with a prefix for a
prefix-LM), and the export is refused beyond 1e-4 x max(1, |logits|); the written folder is then loaded
back through its Auto class and must give the same outputs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kiln import atomic
from kiln.model.config import TransformerConfig
from kiln.model.hf import ExportError, _field_default, export_hf, llama_incompatibilities, mixtral_incompatibilities
from kiln.tokenizer.special import BOS, EOS, PAD, SPECIAL_IDS

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from kiln.model.heads import LanguageModel

REMOTE_DIR = Path(__file__).with_name("remote")
REMOTE_FILES = ("configuration_kiln.py", "modeling_kiln.py")
AUTO_CLASSES = {"KilnModel": "AutoModel", "KilnForMaskedLM": "AutoModelForMaskedLM",
                "KilnForCausalLM": "AutoModelForCausalLM"}
HEADS = {"mlm": "KilnForMaskedLM", "lm": "KilnForCausalLM", "none": "KilnModel"}

# TransformerConfig fields the remote class reproduces exactly, or that only matter for training
# (init, attention kernel); extra heads other than the MLM head are left out.
REMOTE_FIELDS = frozenset({
    "vocab_size", "max_seq_len", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden", "rope_base",
    "tie_embeddings", "norm_eps", "init_std", "attention_backend", "attention", "norm", "mix_alpha", "positions",
    "heads", "rope_scaling",
})
_TOP = {"tok_emb.weight", "pos_emb.weight", "norm.weight"}
_LAYER = {"attn_norm.weight", "attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "attn.wo.weight",
          "mlp_norm.weight", "mlp.w_gate.weight", "mlp.w_up.weight", "mlp.w_down.weight"}
_MLM = {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
_BLOCK = re.compile(r"^blocks\.\d+\.(.+)$")


def remote_incompatibilities(cfg: TransformerConfig) -> list[str]:
    """Why ``cfg`` cannot be exported exactly with the remote-code class (empty when it can)."""
    scaling = ([f"model.rope_scaling={cfg.rope_scaling!r}: only a base change (type base) exports, as rope_base"]
               if cfg.rope_scaling is not None and cfg.rope_scaling["type"] != "base" else [])
    return scaling + [
            f"model.{f.name}={getattr(cfg, f.name)!r}: an option the remote-code export does not know; only its "
            f"default ({_field_default(f)!r}) is known to keep the model exportable"
            for f in dataclasses.fields(cfg)
            if f.name not in REMOTE_FIELDS and getattr(cfg, f.name) != _field_default(f)]


def choose_architecture(model: LanguageModel, head: str = "auto") -> str:
    """``LlamaForCausalLM`` (``MixtralForCausalLM`` for a mixture-of-experts decoder) or a remote class name for
    ``head`` (auto | lm | mlm | none), or ExportError."""
    cfg = model.config
    if head == "auto":
        head = ("mlm" if "mlm" in cfg.heads else "none") if cfg.attention == "bidirectional" else "lm"
    if head not in HEADS:
        raise ExportError(f"head {head!r}: unknown; heads are auto, {', '.join(HEADS)}")
    if head == "mlm" and "mlm" not in model.heads:
        raise ExportError("head mlm: this model has no MLM head (model.heads has none; train with objective mlm)")
    if head == "lm" and cfg.attention == "bidirectional":
        raise ExportError("head lm: model.attention='bidirectional' is an encoder, not a causal LM; "
                          "export it with head mlm or none")
    if head == "lm" and cfg.moe is not None and not mixtral_incompatibilities(cfg):
        return "MixtralForCausalLM"
    if head == "lm" and not llama_incompatibilities(cfg):
        return "LlamaForCausalLM"
    return HEADS[head]


def kiln_config(model: LanguageModel, architecture: str, dtype: torch.dtype = torch.float32) -> Any:
    """The ``KilnConfig`` (with ``auto_map``) that describes ``model`` as ``architecture``."""
    from kiln.model.remote.configuration_kiln import KilnConfig

    problems = remote_incompatibilities(model.config)
    if problems:
        raise ExportError(f"this model cannot be exported exactly as {architecture}, refusing to export:\n  "
                          + "\n  ".join(problems))
    cfg = model.config
    mlm = model.heads["mlm"] if architecture == "KilnForMaskedLM" else None
    return KilnConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.max_seq_len, rope_base=float(cfg.rope_theta), rms_norm_eps=cfg.norm_eps,
        attention="bidirectional" if mlm is not None else cfg.attention,  # kiln's MLM objective is bidirectional
        norm=cfg.norm, post_norm_layers=cfg.n_post_ln, positions=cfg.positions,
        mlm_layer_norm_eps=mlm.norm.eps if mlm is not None else cfg.norm_eps, initializer_range=cfg.init_std,
        tie_word_embeddings=model.tied if architecture == "KilnForCausalLM" else True,
        bos_token_id=SPECIAL_IDS[BOS], eos_token_id=SPECIAL_IDS[EOS], pad_token_id=SPECIAL_IDS[PAD],
        torch_dtype=str(dtype).removeprefix("torch."), architectures=[architecture],
        auto_map={"AutoConfig": "configuration_kiln.KilnConfig",
                  **{auto: f"modeling_kiln.{name}" for name, auto in AUTO_CLASSES.items()
                     if name in (architecture, "KilnModel")}},
    )


def remote_state_dict(model: LanguageModel, architecture: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kiln weights under the remote class's names, and the kiln keys left out (other heads).

    A backbone or MLM-head weight the remote class has no place for raises ExportError.
    """
    state, dropped, unknown = {}, [], []
    base = "" if architecture == "KilnModel" else "model."  # a base model's weights carry no prefix
    for key, tensor in model.state_dict().items():
        if key.startswith("backbone."):
            name = key.removeprefix("backbone.")
            block = _BLOCK.match(name)
            if name in _TOP or (block and block.group(1) in _LAYER):
                state[base + name] = tensor.detach()
            else:
                unknown.append(key)
        elif key.startswith("heads.mlm.") and architecture == "KilnForMaskedLM":
            if key.removeprefix("heads.mlm.") in _MLM:
                state[key.replace("heads.mlm.", "mlm_head.", 1)] = tensor.detach()
            else:
                unknown.append(key)
        elif key == "lm_head.weight" and (model.tied or architecture == "KilnForCausalLM"):
            if not model.tied:
                state[key] = tensor.detach()
        else:
            dropped.append(key)
    if unknown:
        raise ExportError(f"weights with no {architecture} counterpart, refusing to export: " + ", ".join(unknown))
    return state, dropped


def to_remote(model: LanguageModel, architecture: str,
              dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, list[str]]:
    """An in-memory remote-code model (fp32 on CPU) with ``model``'s weights, and the dropped keys."""
    from kiln.model.remote import modeling_kiln

    config = kiln_config(model, architecture, dtype)
    state, dropped = remote_state_dict(model, architecture)
    hf = getattr(modeling_kiln, architecture)(config).float()
    missing, unexpected = hf.load_state_dict({k: v.float().cpu() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ExportError(f"weight names do not match {architecture}: missing {missing}, unexpected {unexpected}")
    return hf.eval(), dropped


@torch.no_grad()
def kiln_outputs(model: LanguageModel, architecture: str, tokens: torch.Tensor,
                 prefix: torch.Tensor | None = None) -> torch.Tensor:
    """What the exported class must reproduce: MLM logits, hidden states or LM logits (fp32, CPU)."""
    model = model.eval()
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    if architecture == "KilnForMaskedLM":
        out = model.heads["mlm"](model.backbone(tokens, attention="bidirectional"), model.backbone.tok_emb.weight)
    elif architecture == "KilnModel":
        out = model.backbone(tokens)
    elif prefix is not None:
        out = model(tokens, attention="prefix", prefix=prefix.to(device))
    else:
        out = model(tokens)
    return out.float().cpu()


@torch.no_grad()
def hf_outputs(hf: torch.nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
    """The exported class's logits (or hidden states for KilnModel)."""
    out = hf(input_ids=tokens, attention_mask=attention_mask, **({"prefix": prefix} if prefix is not None else {}))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def max_remote_diff(model: LanguageModel, hf: torch.nn.Module, architecture: str, seed: int = 0,
                    T: int = 32) -> tuple[float, float]:
    """(max |kiln - exported|, max |exported|) on a random batch, a left- and a right-padded row (each
    compared with kiln on the row alone) and, for a prefix-LM, prefix lengths."""
    cfg = model.config
    T = min(T, cfg.max_seq_len)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (2, T), generator=gen)
    theirs = hf_outputs(hf, tokens)
    diffs, scale = [(kiln_outputs(model, architecture, tokens) - theirs).abs().max().item()], theirs.abs().max().item()
    lengths = (T, max(1, T // 2), max(1, T // 3))
    padded = torch.full((3, T), SPECIAL_IDS[PAD])
    mask = torch.zeros(3, T, dtype=torch.long)
    rows = [torch.randint(0, cfg.vocab_size, (n,), generator=gen) for n in lengths]
    spans = [slice(0, T), slice(T - lengths[1], T), slice(0, lengths[2])]  # full, left-padded, right-padded
    for i, (row, span) in enumerate(zip(rows, spans, strict=True)):
        padded[i, span], mask[i, span] = row, 1
    theirs = hf_outputs(hf, padded, mask)
    for i, (row, span) in enumerate(zip(rows, spans, strict=True)):
        diffs.append((kiln_outputs(model, architecture, row[None])[0] - theirs[i, span]).abs().max().item())
    if architecture == "KilnForCausalLM" and cfg.attention == "prefix":
        prefix = torch.tensor([T // 2, 3])
        theirs = hf_outputs(hf, tokens, prefix=prefix)
        diffs.append((kiln_outputs(model, architecture, tokens, prefix) - theirs).abs().max().item())
    return max(diffs), scale


def check_folder(out: Path, architecture: str, hf: torch.nn.Module) -> None:
    """Load ``out`` through its Auto class (``trust_remote_code=True``): every weight must load, and its fp32
    outputs must equal those of ``hf`` (the in-memory model, holding the saved weights in fp32)."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[architecture])
    loaded, info = auto.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    bad = {k: v for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if (v := info.get(k))}
    if bad or type(loaded).__name__ != architecture:
        raise ExportError(f"{out} does not load back as {architecture} ({type(loaded).__name__}, {bad}); "
                          "this transformers version is not supported by the remote code")
    tokens = torch.randint(0, hf.config.vocab_size, (1, min(8, hf.config.max_position_embeddings)),
                           generator=torch.Generator().manual_seed(1))
    ours, theirs = hf_outputs(hf.float(), tokens), hf_outputs(loaded.float().eval(), tokens)
    if not torch.equal(ours, theirs):
        raise ExportError(f"{out} loads back with different outputs (max diff {(ours - theirs).abs().max():.3g})")


def export_remote(model: LanguageModel, out: str | Path, tokenizer_dir: str | Path | None = None,
                  dtype: torch.dtype = torch.float32, verify: bool = True, seed: int = 0,
                  architecture: str | None = None) -> dict[str, Any]:
    """Write ``model`` as a remote-code folder: config.json (with ``auto_map``), the two source files,
    model.safetensors and kiln's tokenizer. ``verify`` compares outputs first (fp32) and reloads the folder
    through its Auto class after; the files are written to a temporary sibling and moved into ``out`` only
    when both pass. Returns a summary (architecture, auto class, dropped keys, measured diff)."""
    out = Path(out)
    architecture = architecture or choose_architecture(model)
    if architecture not in AUTO_CLASSES:
        raise ExportError(f"{architecture}: not a remote-code class ({', '.join(AUTO_CLASSES)})")
    hf, dropped = to_remote(model, architecture, dtype)
    summary: dict[str, Any] = {"format": "hf", "architecture": architecture, "auto_class": AUTO_CLASSES[architecture],
                               "remote_code": True, "dropped": dropped, "dtype": str(dtype).removeprefix("torch.")}
    if verify:
        diff, scale = max_remote_diff(model, hf, architecture, seed)
        summary["max_logit_diff"] = diff
        if not diff <= 1e-4 * max(1.0, scale):
            raise ExportError(f"exported model disagrees with kiln: max |logit diff| {diff:.3g}; not writing {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # written whole, then moved into out
    try:
        hf.to(dtype).save_pretrained(tmp)
        for name in REMOTE_FILES:
            shutil.copyfile(REMOTE_DIR / name, tmp / name)
        if tokenizer_dir is not None:
            from kiln.tokenizer.hf import export_tokenizer

            export_tokenizer(tokenizer_dir, tmp, model_max_length=model.config.max_seq_len)
        if verify:
            check_folder(tmp, architecture, hf)
        out.mkdir(exist_ok=True)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["out"] = str(out)
    return summary


def export_auto(model: LanguageModel, out: str | Path, tokenizer_dir: str | Path | None = None,
                dtype: torch.dtype = torch.float32, verify: bool = True, seed: int = 0,
                head: str = "auto") -> dict[str, Any]:
    """Export with the exact ``LlamaForCausalLM`` twin when there is one, else with remote code
    (see :func:`choose_architecture`); the summary says which (``remote_code``)."""
    architecture = choose_architecture(model, head)
    before = atomic.snapshot(out)
    if architecture in ("LlamaForCausalLM", "MixtralForCausalLM"):
        summary = {**export_hf(model, out, tokenizer_dir, dtype, verify, seed),
                   "auto_class": "AutoModelForCausalLM", "remote_code": False}
    else:
        summary = export_remote(model, out, tokenizer_dir, dtype, verify, seed, architecture)
    atomic.follow_umask(out, before)  # transformers stages weights with mkstemp (0o600): give them the user's umask
    return summary
