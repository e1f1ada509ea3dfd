"""Pretraining objectives behind one interface (see base.py)."""

from kiln.objectives.base import Objective, Prepared
from kiln.objectives.clm import CausalLM

OBJECTIVES: dict[str, type[Objective]] = {"clm": CausalLM}


def build_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}'; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]()


__all__ = ["OBJECTIVES", "Objective", "Prepared", "build_objective"]
