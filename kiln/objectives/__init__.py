"""Pretraining objectives behind one interface (see base.py); ``train.objective`` picks one by name and
``train.objective_args`` are its class's keyword arguments."""

from typing import Any

from kiln.objectives.base import Objective, Prepared
from kiln.objectives.clm import CausalLM
from kiln.objectives.encoder import ELECTRA, MaskedLM
from kiln.objectives.ernie_gram import ERNIEGram
from kiln.objectives.mp3 import MP3
from kiln.objectives.rearranged import FIM, UL2, CodeGen2
from kiln.objectives.schedules import CLMThenMLM, Mixture

OBJECTIVES: dict[str, type[Objective]] = {
    "clm": CausalLM, "mlm": MaskedLM, "electra": ELECTRA, "fim": FIM, "ul2": UL2, "codegen2": CodeGen2,
    "mp3": MP3, "ernie_gram": ERNIEGram, "clm_mlm": CLMThenMLM, "mixture": Mixture,
}


def build_objective(name: str, **kwargs: Any) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}'; available: {', '.join(sorted(OBJECTIVES))}")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"train.objective_args for '{name}': {exc}") from None


__all__ = ["OBJECTIVES", "Objective", "Prepared", "build_objective"]
