"""Pretraining objectives behind one interface (see base.py); ``train.objective`` picks one by name and
``train.objective_args`` are its class's keyword arguments (checked when the recipe loads: spec.py).

The registry is imported lazily (PEP 562), so ``kiln.objectives.spec`` stays importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.objectives.base import Objective, Prepared


_OBJECTIVES: dict[str, type[Objective]] = {}


def _registry() -> dict[str, type[Objective]]:
    """The name -> class registry (one dict, filled on first use)."""
    if _OBJECTIVES:
        return _OBJECTIVES
    from kiln.objectives.clm import CausalLM
    from kiln.objectives.distill import SALT, KnowledgeDistillation
    from kiln.objectives.encoder import ELECTRA, MaskedLM
    from kiln.objectives.ernie3 import ERNIE3
    from kiln.objectives.ernie_gram import ERNIEGram
    from kiln.objectives.minilm import MiniLM
    from kiln.objectives.mp3 import MP3
    from kiln.objectives.rearranged import FIM, UL2, CodeGen2
    from kiln.objectives.reweight import LossReweighted
    from kiln.objectives.schedules import CLMThenMLM, Mixture
    from kiln.objectives.self_distill import SelfDistill

    _OBJECTIVES.update({
        "clm": CausalLM, "mlm": MaskedLM, "electra": ELECTRA, "fim": FIM, "ul2": UL2, "codegen2": CodeGen2,
        "mp3": MP3, "ernie_gram": ERNIEGram, "clm_mlm": CLMThenMLM, "mixture": Mixture,
        "kd": KnowledgeDistillation, "salt": SALT, "self_distill": SelfDistill, "minilm": MiniLM,
        "reweight": LossReweighted, "ernie3": ERNIE3,
    })
    return _OBJECTIVES


def build_objective(name: str, **kwargs: Any) -> Objective:
    objectives = _registry()
    if name not in objectives:
        raise ValueError(f"unknown objective '{name}'; available: {', '.join(sorted(objectives))}")
    try:
        return objectives[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"train.objective_args for '{name}': {exc}") from None


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVES":
        return _registry()
    if name in ("Objective", "Prepared"):
        from kiln.objectives import base

        return getattr(base, name)
    raise AttributeError(f"module 'kiln.objectives' has no attribute {name!r}")


__all__ = ["OBJECTIVES", "Objective", "Prepared", "build_objective"]
