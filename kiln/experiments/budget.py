"""Equal-compute matching of a sweep's variants: ``budget: tokens | flops | {tokens: N} | {flops: F}``.

A variant's training cost is ``train.steps`` optimizer steps of ``tokens_per_step`` tokens (``batch_tokens``
rounded down to whole ``seq_len`` rows, at least one row: exactly what the trainer consumes) and
``flops_per_token`` training FLOPs per token (:mod:`kiln.model.flops`: 6N + attention, Kaplan et al. 2020;
PaLM appendix B). ``tokens`` / ``flops`` give every variant the baseline variant's training tokens / FLOPs;
``{tokens: N}`` / ``{flops: F}`` an explicit amount. ``batch_tokens`` is kept; ``train.steps`` becomes
the step count whose cost is nearest the budget (``round(budget / per step)``, a tie to the fewer steps), at
least 1, and the recipe is re-validated (warm-up and the rest stay valid).

Sparse training counts only unmasked weights: a recipe whose ``train.callbacks`` mask the block matmuls (SPDF's
``spdf``, ``gradual_pruning``; :func:`kiln.train.sparsity_schedule.mean_masked_fraction`, the run-averaged masked
fraction) costs ``flops_per_token - 6 x masked weights`` per token (SPDF's count, Thangarasa et al. 2023), so an
equal-FLOPs sweep gives a 75%-sparse variant about twice the dense steps. A mask that turns dense after a step
(``dense_from``) makes the average depend on ``train.steps``; the budget then searches for the steps.

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


def flops_per_token(recipe: Recipe, steps: int | None = None) -> float:
    """Training FLOPs per token of the recipe's model at its ``seq_len`` (see the module doc for the vocabulary),
    averaged over ``steps`` (default ``train.steps``) optimizer steps of its sparsity callbacks, if any."""
    from kiln.model.config import TransformerConfig
    from kiln.model.flops import block_matmul_params, sparse_flops_per_token
    from kiln.train.sparsity_schedule import mean_masked_fraction

    cfg = TransformerConfig.from_recipe(recipe.model, vocab_size(recipe), recipe.data.seq_len)
    masked = mean_masked_fraction(recipe.train.callbacks, steps or recipe.train.steps) * block_matmul_params(cfg)
    return sparse_flops_per_token(cfg, recipe.data.seq_len, masked)


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


def steps_for(recipe: Recipe, kind: str, amount: float) -> int:
    """The number of steps (>= 1) whose training tokens / FLOPs come nearest ``amount``. The cost grows with the
    steps, but not always linearly (a mask's ``dense_from`` share), so it is found by bisection."""
    def spent(n: int) -> float:
        return n * tokens_per_step(recipe) * (flops_per_token(recipe, n) if kind == "flops" else 1)

    hi = 1
    while spent(hi) < amount:
        hi *= 2
    lo = hi // 2  # spent(lo) < amount <= spent(hi), or lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if spent(mid) < amount else (lo, mid)
    return hi if lo == 0 or spent(hi) - amount < amount - spent(lo) else lo


def apply_budget(recipes: dict[str, Recipe], budget: str | dict[str, Any] | None, baseline: str,
                 origin: str = "sweep") -> tuple[dict[str, Recipe], dict[str, dict[str, float | int]]]:
    """Each variant's recipe with ``train.steps`` matched to the budget, and its resulting steps/tokens/FLOPs."""
    target = budget_target(budget, recipes[baseline])
    out: dict[str, Recipe] = {}
    costs: dict[str, dict[str, float | int]] = {}
    for name, recipe in recipes.items():
        if target is not None:
            kind, amount = target
            steps = steps_for(recipe, kind, amount)
            recipe = with_overrides(recipe, [f"train.steps={steps}"], f"{origin}, variant '{name}' (budget)")
        out[name] = recipe
        costs[name] = cost(recipe)
    return out, costs
