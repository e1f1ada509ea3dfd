"""Checkpoints: ``checkpoints/step-N/`` with model.safetensors, config.json, optimizer.pt, trainer_state.json.

Each checkpoint is assembled in a temporary directory and renamed into place, so a
crash mid-write leaves either the previous checkpoint or the complete new one.
``trainer_state.json`` holds the step, tokens seen, the data loader position and the
RNG states, which is what makes resume continue the same run exactly.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from kiln import atomic
from kiln.model.config import TransformerConfig
from kiln.model.io import load_state, save_state

STEP_DIR = re.compile(r"^step-(\d+)$")
REQUIRED = ("model.safetensors", "config.json", "optimizer.pt", "trainer_state.json")


class CheckpointError(RuntimeError):
    pass


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def rng_state() -> dict:
    state = {
        "python": base64.b64encode(json.dumps(random.getstate()).encode()).decode(),
        "numpy": _numpy_state(),
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    py = json.loads(base64.b64decode(state["python"]))
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        )


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep: int) -> Path:
    final = root / f"step-{step:06d}"
    with atomic.staged_dir(final) as tmp:
        save_state(model, tmp / "model.safetensors")
        atomic.write_json(tmp / "config.json", model.config.to_dict())
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        atomic.write_json(tmp / "trainer_state.json", {**trainer_state, "rng": rng_state()})
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def verify_checkpoint(path: Path) -> None:
    missing = [f for f in REQUIRED if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")


def load_model(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from config.json and load weights (read on CPU, then moved)."""
    for f in ("model.safetensors", "config.json"):
        if not (path / f).exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {f}")
    cfg = TransformerConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = cfg.build()
    load_state(model, path / "model.safetensors")
    return model.to(device)


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    verify_checkpoint(path)
    load_state(model, path / "model.safetensors")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = json.loads((path / "trainer_state.json").read_text())
    set_rng_state(state.pop("rng"))
    return state
