"""Checkpoints: ``checkpoints/step-N/`` with model.safetensors, config.json, optimizer.pt, trainer_state.json.

Each checkpoint is assembled in a temporary directory and renamed into place, so a
crash mid-write leaves either the previous checkpoint or the complete new one.
``trainer_state.json`` holds the step, tokens seen, the data loader position and the
RNG states (rank 0's), which is what makes resume continue the same run exactly.

Under torch.distributed, single-process and DDP checkpoints are written by rank 0 alone (every rank holds
the same weights and optimizer state) while the others wait at a barrier. FSDP2 checkpoints
(``sharded=True``) replace ``optimizer.pt`` by ``dcp/``, a torch.distributed.checkpoint (DCP) folder that
every rank writes its shards of model + optimizer into (``get_state_dict``); DCP reshards on load
(``set_state_dict``), so such a checkpoint resumes at any world size, or in a plain single process.
``model.safetensors`` is still written (the full weights gathered to rank 0), so eval, generate and
export read every checkpoint the same way. A multi-node FSDP2 job needs the run directory on a shared
filesystem.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from kiln import atomic
from kiln.faults import maybe_fail
from kiln.model.io import TIED_KEY, load_state, save_state
from kiln.model.load import CheckpointError, latest_checkpoint, list_checkpoints  # noqa: F401 - re-exported
from kiln.model.load import load_model as _load_any
from kiln.train import dist

REQUIRED = ("model.safetensors", "config.json", "trainer_state.json")
DCP_DIR = "dcp"


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
                    trainer_state: dict, keep: int, sharded: bool = False) -> Path:
    """Write ``step-N`` atomically. Call on every rank: rank 0 writes, DCP (``sharded``) writes on all."""
    final = root / f"step-{step:06d}"
    if sharded:
        _save_sharded(final, model, optimizer, trainer_state)
    elif dist.current().is_main:
        try:
            with atomic.staged_dir(final) as tmp:
                save_state(model, tmp / "model.safetensors")
                maybe_fail("checkpoint")
                atomic.write_json(tmp / "config.json", model.config.to_dict())
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                atomic.write_json(tmp / "trainer_state.json", {**trainer_state, "rng": rng_state()})
        except atomic.WriteError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.save/safetensors report a failed write as their own types
            raise atomic.write_error(final, exc) from exc
    if dist.current().is_main:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _save_sharded(final: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict) -> None:
    """FSDP2: every rank writes its DCP shards into one staging folder, rank 0 the rest, then renames it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    main = dist.current().is_main
    tmp = final.with_name(f".{final.name}.sharded.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if main:
        if model.lm_head.weight is model.backbone.tok_emb.weight:
            full.pop(TIED_KEY, None)
        save_file({k: v.detach().contiguous() for k, v in full.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "tie_embeddings": str(TIED_KEY not in full)})
        atomic.write_json(tmp / "config.json", model.config.to_dict())
        atomic.write_json(tmp / "trainer_state.json", {**trainer_state, "rng": rng_state()})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()


def verify_checkpoint(path: Path) -> None:
    missing = [f for f in REQUIRED if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")


def load_model(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model at ``path`` (a checkpoint, run or export folder): :func:`kiln.model.load.load_model`."""
    return _load_any(path, device)


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load weights, optimizer state and RNG into ``model``/``optimizer``; return the trainer state.

    A ``dcp/`` checkpoint (FSDP2) loads through DCP, resharded to this job's world size and strategy (a
    plain or DDP model works too); otherwise ``model.safetensors`` + ``optimizer.pt``, which an FSDP2 model
    cannot take (its parameters are sharded DTensors).
    """
    verify_checkpoint(path)
    if (path / DCP_DIR).is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        with warnings.catch_warnings():  # without a process group DCP loads in this one process, as meant
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        if not (path / "optimizer.pt").exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: missing optimizer.pt (or {DCP_DIR}/)")
        if any(type(p).__name__ == "DTensor" for p in model.parameters()):
            raise CheckpointError(f"checkpoint {path} was written without FSDP2 (no {DCP_DIR}/); resume it with "
                                  "parallel.strategy=ddp or single")
        load_state(model, path / "model.safetensors")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = read_trainer_state(path)
    set_rng_state(state.pop("rng"))
    return state


def read_trainer_state(path: Path) -> dict:
    """``trainer_state.json`` of checkpoint ``path``, or CheckpointError naming what is wrong with it."""
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is corrupt ({exc}); delete checkpoint {path} to resume from the one "
                              "before it, or rerun with --force train") from None
    keys = ("step", "tokens_seen", "loader", "rng")
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else ["a JSON object"]
    if missing:
        raise CheckpointError(f"{file} lacks {', '.join(missing)}; delete checkpoint {path} to resume from the "
                              "one before it, or rerun with --force train")
    return state
