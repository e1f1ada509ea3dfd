"""One loader for every saved kiln model: a checkpoint, a run's latest checkpoint, or a ``kiln export`` folder.

:func:`load_model` accepts

- a kiln checkpoint step folder (``.../checkpoints/step-N``) or a ``save_pretrained`` folder: ``config.json``
  (a :class:`~kiln.model.config.TransformerConfig`) + ``model.safetensors``;
- a ``checkpoints/`` folder, a run's ``train/`` stage folder or a run directory: its latest ``step-N``;
- a ``kiln export`` Hugging Face folder: ``LlamaForCausalLM`` (:mod:`kiln.model.hf_import`) or kiln's own
  remote-code classes (``model_type: kiln``; KilnForCausalLM, KilnForMaskedLM, KilnModel), read back without
  ``transformers``. A KilnModel / KilnForMaskedLM export carries no separate LM head: the loaded model's LM
  head is the (tied) token embedding.

Eval, infer, the corpus's model-based steps (reference models) and the trainer (teachers, ``train.init_from``)
all load through here, so a model saved one way is readable everywhere. Weights are read on CPU, converted to
fp32 and only then moved to ``device``. Anything that is not a loadable model raises :class:`ModelLoadError`
(a kiln checkpoint that is incomplete or corrupt: its subclass :class:`CheckpointError`) naming the path and
what was expected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from kiln.model.config import TransformerConfig
from kiln.model.heads import LanguageModel

STEP_DIR = re.compile(r"^step-(\d+)$")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class ModelLoadError(RuntimeError):
    """A path that holds no loadable model; the message names the path and what was expected there."""


class CheckpointError(ModelLoadError):
    """A kiln checkpoint that is incomplete or corrupt."""


def list_checkpoints(root: Path) -> list[Path]:
    """The ``step-N`` folders directly under ``root``, oldest first (none when ``root`` does not exist)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest ``step-N`` folder under ``root``, or None."""
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def _has_weights(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).exists() or (folder / WEIGHTS_INDEX).exists()


def resolve_model_dir(path: str | Path) -> Path:
    """The folder :func:`load_model` reads for ``path``: ``path`` itself when it holds weights or a config,
    else the latest ``step-N`` under ``path``, ``path/checkpoints`` or ``path/train/checkpoints``."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder (expected a kiln checkpoint step-N folder, a run's "
                             "train/ folder or run directory, or a `kiln export` folder)")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: a file, not a folder (expected a kiln checkpoint step-N folder, a run "
                             "directory or a `kiln export` folder)")
    if _has_weights(path) or (path / CONFIG_FILE).exists():
        return path
    for root in (path, path / "checkpoints", path / "train" / "checkpoints"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise ModelLoadError(f"no kiln checkpoint at {path} (looked for {WEIGHTS_FILE}, checkpoints/step-N, "
                         "train/checkpoints/step-N)")


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is not a valid model config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a valid model config (expected a JSON object)")
    return data


def _is_hf(config: dict[str, Any]) -> bool:
    return "model_type" in config or "architectures" in config


def load_kiln_folder(folder: Path) -> LanguageModel:
    """A kiln checkpoint / ``save_pretrained`` folder: build from config.json, load model.safetensors (CPU)."""
    from kiln.model.io import load_state

    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).exists():
            raise CheckpointError(f"checkpoint {folder} is incomplete: missing {name}")
    data = _read_config(folder)
    try:
        cfg = TransformerConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a valid model config ({exc})") from None
    model = cfg.build()
    try:
        load_state(model, folder / WEIGHTS_FILE)
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not hold the weights its config.json describes "
                              f"({str(exc).splitlines()[0]})") from None
    return model


def _remote_config(hf: dict[str, Any], arch: str) -> TransformerConfig:
    """The kiln config of a remote-code ``KilnConfig`` dict (see :func:`kiln.model.hf_remote.kiln_config`)."""
    n_layer = int(hf["num_hidden_layers"])
    norm = hf.get("norm", "pre")
    post = int(hf.get("post_norm_layers", 0))
    mix_alpha = min(1.0, (post + 0.5) / n_layer) if norm == "mix" else 0.25  # floor(alpha * n_layer) == post
    return TransformerConfig(
        vocab_size=int(hf["vocab_size"]), max_seq_len=int(hf["max_position_embeddings"]), n_layer=n_layer,
        n_head=int(hf["num_attention_heads"]), n_kv_head=hf.get("num_key_value_heads"),
        d_model=int(hf["hidden_size"]), ffn_hidden=int(hf["intermediate_size"]),
        rope_base=float(hf.get("rope_base", 10000.0)), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)), init_std=float(hf.get("initializer_range", 0.02)),
        attention=hf.get("attention", "causal"), norm=norm, mix_alpha=mix_alpha,
        positions=hf.get("positions", "rope"), heads={"mlm": {}} if arch == "KilnForMaskedLM" else {},
    )


def _remote_key(key: str, arch: str) -> str | None:
    if key.startswith("mlm_head."):
        return "heads.mlm." + key.removeprefix("mlm_head.")
    if key == "lm_head.weight":
        return key
    if arch == "KilnModel":
        return "backbone." + key
    if key.startswith("model."):
        return "backbone." + key.removeprefix("model.")
    return None


def load_remote(folder: Path, hf: dict[str, Any]) -> LanguageModel:
    """A kiln remote-code export (``model_type: kiln``) as a kiln model (fp32, CPU)."""
    from kiln.model.hf_import import read_safetensors

    archs = hf.get("architectures") or ["KilnModel"]
    arch = archs[0]
    if arch not in ("KilnModel", "KilnForMaskedLM", "KilnForCausalLM"):
        raise ModelLoadError(f"{folder / CONFIG_FILE}: architecture {arch!r} is not one kiln exports "
                             "(KilnModel, KilnForMaskedLM, KilnForCausalLM)")
    try:
        cfg = _remote_config(hf, arch)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{folder / CONFIG_FILE} is not a valid kiln remote-code config ({exc})") from None
    state, unknown = {}, []
    for key, tensor in read_safetensors(folder).items():
        name = _remote_key(key, arch)
        if name is None:
            unknown.append(key)
        else:
            state[name] = tensor.float()
    if unknown:
        raise ModelLoadError(f"{folder}: weights kiln has no place for: {', '.join(unknown[:8])}")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state.get("backbone.tok_emb.weight")
    model = cfg.build()
    if "mlm" in model.heads:
        model.heads["mlm"].norm.eps = float(hf.get("mlm_layer_norm_eps", cfg.norm_eps))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{folder}: weights do not match {arch}: missing {missing}, unexpected {unexpected}")
    return model


def load_hf_folder(folder: Path, hf: dict[str, Any]) -> LanguageModel:
    """A ``kiln export`` folder: Llama through :mod:`kiln.model.hf_import`, kiln's remote code through
    :func:`load_remote`."""
    from kiln.model.hf_import import ImportError_, load_llama

    if not _has_weights(folder):
        raise ModelLoadError(f"{folder}: a Hugging Face config.json but no {WEIGHTS_FILE} or {WEIGHTS_INDEX}")
    try:
        if hf.get("model_type") == "kiln":
            return load_remote(folder, hf)
        return load_llama(folder)
    except ImportError_ as exc:
        raise ModelLoadError(f"{folder}: cannot load as a kiln model: {exc}") from None
    except (KeyError, OSError, RuntimeError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"{folder}: unreadable Hugging Face export ({exc})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """The model saved at ``path`` (see the module docstring), read on CPU and moved to ``device``.

    The model comes back in training mode, as :meth:`torch.nn.Module` builds it; call ``.eval()`` to infer.
    """
    folder = resolve_model_dir(path)
    if (folder / CONFIG_FILE).exists():
        data = _read_config(folder)
        if _is_hf(data):
            return load_hf_folder(folder, data).to(device)
    return load_kiln_folder(folder).to(device)
