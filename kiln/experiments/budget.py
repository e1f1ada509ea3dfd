"""Equal-compute matching of a sweep's variants: ``budget: tokens | flops | {tokens: N} | {flops: F}``.

A variant's training cost is ``train.steps`` optimizer steps of ``tokens_per_step`` tokens (``batch_tokens``
rounded down to whole ``seq_len`` rows, at least one row: exactly what the trainer consumes) and
``flops_per_token`` training FLOPs per token (:mod:`kiln.model.flops`: 6N + attention, Kaplan et al. 2020;
PaLM appendix B). ``tokens`` / ``flops`` give every variant the baseline variant's training tokens / FLOPs;
``{tokens: N}`` / ``{flops: F}`` an explicit amount. ``batch_tokens`` is kept; ``train.steps`` becomes
``round(budget / per step)``, at least 1, and the recipe is re-validated (warm-up and the rest stay valid).

The vocabulary size in the FLOPs is the recipe's configured ``tokenizer.vocab_size`` (``tokens.synthetic``'s
``vocab_size`` for synthetic tokens), known before any tokenizer is trained; byte-level BPE may stop a little
short of it, so this counts the LM head at its configured width, the same for every variant sharing a tokenizer.
"""

from __future__ import annotations

from typing import Any

from kiln.recipe import Recipe, with_overrides


def tokens_per_step(recipe: Recipe) -> int:
    """Tokens one optimizer step trains on: ``batch_tokens // seq_len`` rows (at least 1) of ``seq_len``."""
    seq = recipe.data.seq_len
    return max(recipe.train.batch_tokens // seq, 1) * seq


def vocab_size(recipe: Recipe) -> int:
    syn = recipe.tokens.synthetic
    return syn.vocab_size if syn is not None else recipe.tokenizer.vocab_size


def flops_per_token(recipe: Recipe) -> float:
    """Training FLOPs per token of the recipe's model at its ``seq_len`` (see the module doc for the vocabulary)."""
    from kiln.model.config import TransformerConfig
    from kiln.model.flops import flops_per_token as fpt

    cfg = TransformerConfig.from_recipe(recipe.model, vocab_size(recipe), recipe.data.seq_len)
    return fpt(cfg, recipe.data.seq_len)


def cost(recipe: Recipe) -> dict[str, float | int]:
    """``{"steps", "tokens", "flops"}`` of the recipe's training as configured."""
    tokens = recipe.train.steps * tokens_per_step(recipe)
    return {"steps": recipe.train.steps, "tokens": tokens, "flops": float(tokens * flops_per_token(recipe))}


def budget_target(budget: str | dict[str, float] | None, baseline: Recipe) -> tuple[str, float] | None:
    """(kind, amount) to match, or None for no budget (every variant keeps its own ``train.steps``)."""
    if budget is None:
        return None
    if isinstance(budget, dict):
        kind, amount = next(iter(budget.items()))
        return kind, float(amount)
    return budget, float(cost(baseline)[budget])


def apply_budget(recipes: dict[str, Recipe], budget: str | dict[str, Any] | None, baseline: str,
                 origin: str = "sweep") -> tuple[dict[str, Recipe], dict[str, dict[str, float | int]]]:
    """Each variant's recipe with ``train.steps`` matched to the budget, and its resulting steps/tokens/FLOPs."""
    target = budget_target(budget, recipes[baseline])
    out: dict[str, Recipe] = {}
    costs: dict[str, dict[str, float | int]] = {}
    for name, recipe in recipes.items():
        if target is not None:
            kind, amount = target
            per_step = tokens_per_step(recipe) * (flops_per_token(recipe) if kind == "flops" else 1)
            steps = max(int(round(amount / per_step)), 1)
            recipe = with_overrides(recipe, [f"train.steps={steps}"], f"{origin}, variant '{name}' (budget)")
        out[name] = recipe
        costs[name] = cost(recipe)
    return out, costs
