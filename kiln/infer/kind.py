"""Is a run's model an encoder? One rule for every command that must know (``eval``, ``generate``).

A model is an *encoder* when its default attention is bidirectional (``model.attention``), or when its
training objective does not train the LM head left to right (``Objective.lm_eval`` False: MLM, ELECTRA,
ERNIE-Gram, MP3, CLM -> MLM, a mixture with any of them). An encoder has no meaningful bits per byte (eval
reports the objective's own validation loss instead) and no left-to-right samples (generate writes none).
"""

from __future__ import annotations

from typing import Any

from kiln.objectives import build_objective


def encoder_reason(objective: str, objective_args: dict[str, Any] | None, attention: str) -> str | None:
    """Why the model trained by ``objective`` with default ``attention`` is an encoder; None for a decoder."""
    if attention == "bidirectional":
        return "model.attention is bidirectional (an encoder)"
    if not build_objective(objective, **(objective_args or {})).lm_eval:
        return f"train.objective '{objective}' trains an encoder (no left-to-right language model)"
    return None


def run_encoder_reason(recipe: Any, attention: str | None = None) -> str | None:
    """:func:`encoder_reason` of a recipe; ``attention`` (a loaded checkpoint's) overrides ``model.attention``."""
    return encoder_reason(recipe.train.objective, recipe.train.objective_args, attention or recipe.model.attention)
