"""The arguments of the ``reweight`` objective (kiln/objectives/reweight.py), checked without importing torch.

The recipe validates ``train.objective_args`` when it loads; for ``reweight`` the values are checked here too
(strategy name, temperature, warm-up, sample unit), so a bad recipe fails before any stage runs.

Method: Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic Loss-Based Sample Reweighting for
Improved Large Language Model Pretraining", ICLR 2025 (arXiv:2502.06733).
"""

from __future__ import annotations

from typing import Any

# strategy name -> f(l~) on the normalised loss l~ in [-1, 1] (spec: shared/methods/data.md section 7)
STRATEGIES = {
    "linupper": "min(l~ + 1, 1): down-weights the easiest (lowest-loss) half, flat above the middle",
    "quadratic": "1 - l~^2: favours medium losses (the paper's 'mid')",
    "extremes": "|l~|: favours the easiest and the hardest samples",
    "upper": "0.5 l~ + 0.5: linear in the loss, favours the hardest samples",
    "uniform": "0: equal weight per sample (mean of per-sample mean losses), the ablation of the strategy",
}
ALIASES = {"mid": "quadratic"}  # the reference implementation's names
UNITS = ("sequence", "document")  # a sample: a packed row, or one document's piece inside a row
DEFAULTS: dict[str, Any] = {"strategy": "linupper", "r": 0.4, "warmup_steps": 1000, "unit": "sequence"}


def canonical_strategy(name: str) -> str:
    return ALIASES.get(name, name)


def check_reweight_args(args: dict[str, Any], where: str = "train.objective_args") -> None:
    """ValueError naming ``where.<key>`` and what was expected when a ``reweight`` argument is invalid."""
    unknown = [k for k in args if k not in DEFAULTS]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: not an argument of objective 'reweight'; accepted: "
                         f"{', '.join(DEFAULTS)}")
    strategy = args.get("strategy", DEFAULTS["strategy"])
    if not isinstance(strategy, str) or canonical_strategy(strategy) not in STRATEGIES:
        raise ValueError(f"{where}.strategy: expected one of {', '.join([*STRATEGIES, *ALIASES])}, got {strategy!r}")
    r = args.get("r", DEFAULTS["r"])
    if isinstance(r, bool) or not isinstance(r, int | float) or not r > 0 or r != r or r == float("inf"):
        raise ValueError(f"{where}.r: expected a finite temperature > 0 (softmax(f / r); the paper uses 0.4-1.0), "
                         f"got {r!r}")
    warmup = args.get("warmup_steps", DEFAULTS["warmup_steps"])
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"{where}.warmup_steps: expected an integer >= 0 (steps of plain token-mean loss before "
                         f"the weights apply), got {warmup!r}")
    unit = args.get("unit", DEFAULTS["unit"])
    if unit not in UNITS:
        raise ValueError(f"{where}.unit: expected one of {', '.join(UNITS)}, got {unit!r}")
