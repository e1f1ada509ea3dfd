"""The keyword arguments each objective accepts, readable without importing torch.

The recipe validates ``train.objective_args`` when it loads (before any stage runs) against this table;
``tests/test_callbacks.py`` checks that it equals the signature of every class in ``OBJECTIVES``. A new
objective adds its row here next to its entry in ``kiln/objectives/__init__.py``.
"""

from __future__ import annotations

from typing import Any

from kiln.objectives.distill_spec import check_distill_args
from kiln.objectives.reweight_args import check_reweight_args

# objective name -> {argument: required}
OBJECTIVE_ARGS: dict[str, dict[str, bool]] = {
    "clm": {},
    "mlm": {"ratio": False, "mask_prob": False, "random_prob": False},
    "electra": {"generator_ratio": False, "disc_weight": False, "mask_ratio": False, "temperature": False},
    "fim": {"rate": False, "spm_rate": False, "hlp_weight": False},
    "ul2": {"attention": False, "weights": False, "overflow": False},
    "codegen2": {"p_clm": False, "mean_span": False, "density": False, "loss_on": False},
    "mp3": {"eta": False},
    "ernie_gram": {"ratio": False, "max_n": False, "lexicon_size": False, "min_count": False, "min_t": False,
                   "lexicon_tokens": False},
    "clm_mlm": {"clm_fraction": False, "mlm_ratio": False},
    "mixture": {"weights": True, "args": False, "seed": False},
    "kd": {"teacher": False, "alpha": False, "temperature": False},
    "salt": {"teacher": False, "kd_steps": False, "alpha": False, "temperature": False, "select_fraction": False,
             "top_k": False},
    "self_distill": {"teacher": False, "base": False, "weight": False, "base_args": False},
    "minilm": {"teacher": False, "ce_weight": False, "attention": False},
    "reweight": {"strategy": False, "r": False, "warmup_steps": False, "unit": False},
    "ernie3": {"nlg_layers": False, "nlu_layers": False, "nlu_ratio": False, "nlu_weight": False, "nlg_weight": False,
               "mask_ratio": False, "kg_prob": False},
}


def check_objective_args(name: str, args: dict[str, Any], where: str = "train.objective_args") -> None:
    """ValueError naming ``where.<key>`` and the accepted keys when ``args`` do not fit objective ``name``."""
    if name not in OBJECTIVE_ARGS:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVE_ARGS))}")
    accepted = OBJECTIVE_ARGS[name]
    for key in args:
        if key not in accepted:
            raise ValueError(f"{where}.{key}: not an argument of objective {name!r}; accepted: "
                             f"{', '.join(accepted) or '(none)'}")
    for key, required in accepted.items():
        if required and key not in args:
            raise ValueError(f"{where}.{key}: required by objective {name!r}")
    if name == "mixture":
        _check_mixture(args, where)
    if name == "reweight":
        check_reweight_args(args, where)  # values: strategy, r, warmup_steps, unit (reweight_args.py)
    check_distill_args(name, args, where)  # value checks of kd / salt / self_distill (distill_spec.py)
    if name == "self_distill":
        check_objective_args(args.get("base", "clm"), args.get("base_args") or {}, f"{where}.base_args")


def _check_mixture(args: dict[str, Any], where: str) -> None:
    weights, sub = args["weights"], args.get("args") or {}
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{where}.weights: expected a mapping objective -> weight, got {weights!r}")
    if not isinstance(sub, dict):
        raise ValueError(f"{where}.args: expected a mapping objective -> arguments, got {sub!r}")
    for name in weights:
        if name == "mixture" or name not in OBJECTIVE_ARGS:
            raise ValueError(f"{where}.weights.{name}: not an objective a mixture can hold; available: "
                             f"{', '.join(sorted(set(OBJECTIVE_ARGS) - {'mixture'}))}")
    for name, kwargs in sub.items():
        if name not in weights:
            raise ValueError(f"{where}.args.{name}: arguments for an objective not in weights "
                             f"({', '.join(weights)})")
        if not isinstance(kwargs, dict):
            raise ValueError(f"{where}.args.{name}: expected a mapping of arguments, got {kwargs!r}")
        check_objective_args(name, kwargs, f"{where}.args.{name}")
