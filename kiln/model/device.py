"""Device and precision names from a recipe (``train.device``, ``train.precision``) as torch objects.

Shared by the trainer, eval, infer and the CLI, so none of them needs the trainer to pick a device.
"""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is refused with a clear message."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; any other name as given."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name
