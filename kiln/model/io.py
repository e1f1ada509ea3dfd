"""Saving and loading model weights as safetensors.

safetensors refuses tensors that share memory, so a tied LM head (``lm_head.weight`` is
``backbone.tok_emb.weight``) is stored once, under the embedding's name, and re-tied on load simply
by copying into the existing parameters. Weights are read onto ``map_location`` (CPU by default)
and only then copied into the model, wherever it lives: nothing lands on a GPU by surprise.

A model folder (``save_pretrained``) is ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kiln.model.config import TransformerConfig
from kiln.model.heads import LanguageModel

TIED_KEY = "lm_head.weight"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_state(model: LanguageModel, path: str | Path) -> None:
    """Write the model's state dict to ``path`` (safetensors), a tied LM head only once."""
    state = model.state_dict()
    if model.tied:
        state.pop(TIED_KEY)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, str(path), metadata={"format": "pt"})  # one key: the map is written in random order


def load_state(model: LanguageModel, path: str | Path, map_location: str | torch.device = "cpu") -> None:
    """Load a safetensors state dict into ``model`` in place (strict: every key must match)."""
    state = load_file(str(path), device=str(map_location))
    if model.tied:
        if TIED_KEY in state:  # written by someone else with both copies: keep the embedding's
            state.pop(TIED_KEY)
        state[TIED_KEY] = state["backbone.tok_emb.weight"]
    model.load_state_dict(state, strict=True)


def save_pretrained(model: LanguageModel, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    save_state(model, folder / WEIGHTS_NAME)
    return folder


def load_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> LanguageModel:
    """Build the model described by ``folder/config.json`` and load its weights (on CPU; move it after)."""
    folder = Path(folder)
    config = TransformerConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
    model = config.build()
    load_state(model, folder / WEIGHTS_NAME, map_location)
    return model
