"""Hugging Face export: a kiln decoder as a ``transformers`` ``LlamaForCausalLM`` folder.

kiln's decoder *is* a Llama: pre-norm RMSNorm, RoPE in the "rotate half" layout, grouped-query
attention without biases (kv head j serves query heads j*g .. j*g+g-1 in both), SwiGLU
``down(silu(gate(x)) * up(x))``, a final RMSNorm and a (tied or untied) LM head. The export is
therefore a renaming of weights plus an exactly matching ``LlamaConfig``:

=======================================  ===========================================
kiln                                     transformers (LlamaForCausalLM)
=======================================  ===========================================
backbone.tok_emb.weight                  model.embed_tokens.weight
backbone.blocks.{i}.attn_norm.weight     model.layers.{i}.input_layernorm.weight
backbone.blocks.{i}.attn.w{q,k,v,o}      model.layers.{i}.self_attn.{q,k,v,o}_proj
backbone.blocks.{i}.mlp_norm.weight      model.layers.{i}.post_attention_layernorm.weight
backbone.blocks.{i}.mlp.w_{gate,up,down} model.layers.{i}.mlp.{gate,up,down}_proj
backbone.norm.weight                     model.norm.weight
lm_head.weight (untied only)             lm_head.weight
=======================================  ===========================================

A configuration with no exact Llama twin (post-LN / Mix-LN, learned or no positions,
bidirectional or prefix attention, any unknown option away from its default, any backbone weight
the table does not name) is refused with :class:`ExportError`, never exported approximately;
:mod:`kiln.model.hf_remote` exports those (and encoders) with kiln's own remote-code class instead.
Document-masked attention is a training-time mask only and exports as plain causal attention.
Heads other than the LM head (MLM, pooler, ...) are not part of a causal LM and are left out.

A mixture-of-experts decoder (``model.moe`` with ``every: 1``) is a Mixtral (Jiang et al. 2024, "Mixtral of
Experts", arXiv:2401.04088): the same Llama layout with ``MixtralSparseMoeBlock`` MLPs, whose router is a
softmax over all experts, top-k, renormalised to sum 1, exactly as ``kiln/model/moe.py``. It exports as
``MixtralForCausalLM`` (:func:`to_mixtral`), the experts stacked as transformers stores them:

=============================================  =====================================================
kiln                                           transformers (MixtralForCausalLM)
=============================================  =====================================================
backbone.blocks.{i}.mlp.router.weight           model.layers.{i}.mlp.gate.weight
backbone.blocks.{i}.mlp.experts.{e}.w_gate/w_up  model.layers.{i}.mlp.experts.gate_up_proj[e] = [gate; up]
backbone.blocks.{i}.mlp.experts.{e}.w_down      model.layers.{i}.mlp.experts.down_proj[e]
=============================================  =====================================================

Mixtral has experts in every layer: ``moe.every > 1`` is refused. ``moe.capacity_factor`` acts in training only
(inference never drops), so it exports unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kiln.model.config import TransformerConfig
from kiln.tokenizer.special import BOS, EOS, PAD, SPECIAL_IDS

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    from kiln.model.heads import LanguageModel


class ExportError(ValueError):
    """The model cannot be exported exactly."""


# TransformerConfig fields the Llama mapping covers, that only matter for training (init, attention kernel), or
# that leave the causal LM alone (extra heads are not exported; mix_alpha only acts under norm=mix).
LLAMA_FIELDS = frozenset({
    "vocab_size", "max_seq_len", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden", "rope_base",
    "tie_embeddings", "norm_eps", "init_std", "attention_backend", "heads", "mix_alpha", "rope_scaling",
})

# Model options: the values that keep the decoder a Llama, and why the others have no transformers twin.
# Any other field must be at its default, which is the behaviour kiln had before the field existed.
_OPTIONS: dict[str, tuple[frozenset[Any], str]] = {
    "attention": (frozenset({"causal"}),
                  "LlamaForCausalLM attention is causal; bidirectional/prefix-LM attention has no Llama twin"),
    "norm": (frozenset({"pre"}), "Llama is pre-norm; Post-LN and Mix-LN have no transformers twin"),
    "positions": (frozenset({"rope"}), "Llama uses RoPE; learned or no positions have no Llama twin"),
}

_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {
    "backbone.tok_emb.weight": "model.embed_tokens.weight",
    "backbone.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_BLOCK_KEY = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def llama_incompatibilities(cfg: TransformerConfig) -> list[str]:
    """Why ``cfg`` has no exact ``LlamaForCausalLM`` twin (empty when it has one)."""
    problems = []
    if cfg.rope_scaling is not None and cfg.rope_scaling["type"] != "base":
        problems.append(f"model.rope_scaling={cfg.rope_scaling!r}: only a base change (type base) exports, as "
                        "Llama's rope_theta; position interpolation (linear) is not exported")
    for field in dataclasses.fields(cfg):
        if field.name in LLAMA_FIELDS:
            continue
        value = getattr(cfg, field.name)
        if field.name in _OPTIONS:
            allowed, why = _OPTIONS[field.name]
            if value not in allowed:
                problems.append(f"model.{field.name}={value!r}: {why}")
        elif value != _field_default(field):
            problems.append(f"model.{field.name}={value!r}: an option the Llama export does not know; "
                            f"only its default ({_field_default(field)!r}) is known to keep the decoder a Llama")
    return problems


def kiln_to_llama_key(key: str) -> str | None:
    """The ``LlamaForCausalLM`` name of a kiln state-dict key (None: not part of a Llama)."""
    if key in _TOP_MAP:
        return _TOP_MAP[key]
    m = _BLOCK_KEY.match(key)
    if m and m.group(2) in _LAYER_MAP:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def llama_config(cfg: TransformerConfig, dtype: torch.dtype = torch.float32) -> LlamaConfig:
    """The ``LlamaConfig`` that describes exactly the decoder ``cfg`` (refuses one without a twin)."""
    from transformers import LlamaConfig

    problems = llama_incompatibilities(cfg)
    if problems:
        raise ExportError("this model has no exact LlamaForCausalLM twin, refusing to export:\n  "
                          + "\n  ".join(problems))
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=float(cfg.rope_theta),  # rope_scaling type base is a different base, nothing more
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        bos_token_id=SPECIAL_IDS[BOS],
        eos_token_id=SPECIAL_IDS[EOS],
        pad_token_id=SPECIAL_IDS[PAD],
        torch_dtype=str(dtype).removeprefix("torch."),
        architectures=["LlamaForCausalLM"],
    )


def llama_state_dict(model: LanguageModel) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kiln weights under Llama names, and the kiln keys left out (heads other than the LM head).

    A backbone weight the mapping does not name (learned positions, biases, ...) raises ExportError.
    """
    state, dropped, unknown = {}, [], []
    for key, tensor in model.state_dict().items():
        name = kiln_to_llama_key(key)
        if name is None:
            (unknown if key.startswith("backbone.") else dropped).append(key)
        elif not (key == "lm_head.weight" and model.tied):
            state[name] = tensor.detach()
    if unknown:
        raise ExportError("backbone weights with no LlamaForCausalLM counterpart, refusing to export: "
                          + ", ".join(unknown))
    if model.tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state, dropped


def to_llama(model: LanguageModel, dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, list[str]]:
    """An in-memory ``LlamaForCausalLM`` with ``model``'s weights (fp32 on CPU), and the dropped keys."""
    from transformers import LlamaForCausalLM

    config = llama_config(model.config, dtype)
    state, dropped = llama_state_dict(model)
    hf = _loaded(LlamaForCausalLM(config).float(), config, state, "Llama")
    return hf.eval(), dropped


def mixtral_incompatibilities(cfg: TransformerConfig) -> list[str]:
    """Why ``cfg`` has no exact ``MixtralForCausalLM`` twin (empty when it has one)."""
    if cfg.moe is None:
        return ["model.moe is not set: a dense decoder exports as LlamaForCausalLM"]
    problems = llama_incompatibilities(dataclasses.replace(cfg, moe=None))
    if cfg.moe["every"] != 1:
        problems.append(f"model.moe.every={cfg.moe['every']}: MixtralForCausalLM has experts in every layer; "
                        "kiln models with dense layers between MoE layers have no transformers twin")
    return problems


def mixtral_config(cfg: TransformerConfig, dtype: torch.dtype = torch.float32) -> MixtralConfig:
    """The ``MixtralConfig`` that describes exactly the MoE decoder ``cfg`` (refuses one without a twin)."""
    from transformers import MixtralConfig

    problems = mixtral_incompatibilities(cfg)
    if problems:
        raise ExportError("this model has no exact MixtralForCausalLM twin, refusing to export:\n  "
                          + "\n  ".join(problems))
    moe = cfg.moe
    return MixtralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=moe["expert_hidden"],
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        sliding_window=None, attention_dropout=0.0, num_experts_per_tok=moe["top_k"],
        num_local_experts=moe["n_experts"], output_router_logits=False, router_aux_loss_coef=moe["aux_loss_weight"],
        router_jitter_noise=0.0, rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        bos_token_id=SPECIAL_IDS[BOS], eos_token_id=SPECIAL_IDS[EOS], pad_token_id=SPECIAL_IDS[PAD],
        torch_dtype=str(dtype).removeprefix("torch."), architectures=["MixtralForCausalLM"],
    )


_EXPERT_KEY = re.compile(r"^backbone\.blocks\.(\d+)\.mlp\."
                         r"(router\.weight|experts\.(\d+)\.(w_gate|w_up|w_down)\.weight)$")


def mixtral_state_dict(model: LanguageModel) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kiln weights under Mixtral names (experts stacked per layer), and the kiln keys left out."""
    state, dropped, unknown = {}, [], []
    experts: dict[int, dict[str, dict[int, torch.Tensor]]] = {}
    for key, tensor in model.state_dict().items():
        m = _EXPERT_KEY.match(key)
        if m and m.group(2) == "router.weight":
            state[f"model.layers.{m.group(1)}.mlp.gate.weight"] = tensor.detach()
        elif m:
            experts.setdefault(int(m.group(1)), {}).setdefault(m.group(4), {})[int(m.group(3))] = tensor.detach()
        elif (name := kiln_to_llama_key(key)) is not None:
            if not (key == "lm_head.weight" and model.tied):
                state[name] = tensor.detach()
        else:
            (unknown if key.startswith("backbone.") else dropped).append(key)
    if unknown:
        raise ExportError("backbone weights with no MixtralForCausalLM counterpart, refusing to export: "
                          + ", ".join(unknown))
    for layer, mats in experts.items():
        n = len(mats["w_gate"])
        prefix = f"model.layers.{layer}.mlp.experts"
        gate_up = [torch.cat([mats["w_gate"][e], mats["w_up"][e]]) for e in range(n)]  # gate rows first
        state[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        state[f"{prefix}.down_proj"] = torch.stack([mats["w_down"][e] for e in range(n)])
    if model.tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state, dropped


def to_mixtral(model: LanguageModel, dtype: torch.dtype = torch.float32) -> tuple[MixtralForCausalLM, list[str]]:
    """An in-memory ``MixtralForCausalLM`` with ``model``'s weights (fp32 on CPU), and the dropped keys."""
    from transformers import MixtralForCausalLM

    config = mixtral_config(model.config, dtype)
    state, dropped = mixtral_state_dict(model)
    return _loaded(MixtralForCausalLM(config).float(), config, state, "Mixtral").eval(), dropped


def _loaded(hf: Any, config: Any, state: dict[str, torch.Tensor], family: str) -> Any:
    """``hf`` with ``state`` loaded (fp32, CPU), refusing a partial load: a transformers version that names things
    differently must never export half a model; tied embeddings must really be tied."""
    missing, unexpected = hf.load_state_dict({k: v.float().cpu() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ExportError(f"weight names do not match this transformers' {family}: missing {missing}, "
                          f"unexpected {unexpected}")
    if config.tie_word_embeddings and hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr():
        raise ExportError("transformers did not tie lm_head to embed_tokens")
    return hf


@torch.no_grad()
def max_logit_diff(model: LanguageModel, hf: torch.nn.Module, tokens: torch.Tensor) -> float:
    """max |kiln logits - transformers logits| on ``tokens`` (B, T), positions 0..T-1 (``hf`` fp32 on CPU)."""
    ours = model.eval()(tokens.to(next(model.parameters()).device)).float().cpu()
    theirs = hf(input_ids=tokens).logits
    return (ours - theirs).abs().max().item()


def export_hf(model: LanguageModel, out: str | Path, tokenizer_dir: str | Path | None = None,
              dtype: torch.dtype = torch.float32, verify: bool = True, seed: int = 0) -> dict[str, Any]:
    """Write ``model`` (and kiln's tokenizer from ``tokenizer_dir``) as a Hugging Face folder: a
    ``LlamaForCausalLM``, or a ``MixtralForCausalLM`` for a mixture-of-experts model.

    ``verify`` runs kiln and transformers on a random batch first (fp32) and refuses when the logits
    differ by more than 1e-4 x max(1, |logits|). Returns a summary (dropped keys, measured diff).
    """
    out = Path(out)
    moe = model.config.moe is not None
    hf, dropped = to_mixtral(model, dtype) if moe else to_llama(model, dtype)
    architecture = "MixtralForCausalLM" if moe else "LlamaForCausalLM"
    summary: dict[str, Any] = {"format": "hf", "architecture": architecture, "dropped": dropped,
                               "dtype": str(dtype).removeprefix("torch.")}
    if verify:
        gen = torch.Generator().manual_seed(seed)
        T = min(32, model.config.max_seq_len)
        tokens = torch.randint(0, model.config.vocab_size, (2, T), generator=gen)
        diff = max_logit_diff(model, hf, tokens)
        with torch.no_grad():
            scale = max(1.0, hf(input_ids=tokens).logits.abs().max().item())
        summary["max_logit_diff"] = diff
        if not diff <= 1e-4 * scale:
            raise ExportError(f"exported model disagrees with kiln: max |logit diff| {diff:.3g}; not writing {out}")
    hf.to(dtype).save_pretrained(out)
    if tokenizer_dir is not None:
        from kiln.tokenizer.hf import export_tokenizer

        export_tokenizer(tokenizer_dir, out, model_max_length=model.config.max_seq_len)
    summary["out"] = str(out)
    return summary
