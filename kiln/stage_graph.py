"""The stage graph: stages declare inputs and outputs; the order is derived (topological), per recipe.

A stage's ``inputs`` may depend on the recipe (with ``tokens.synthetic`` the tokens stage reads no corpus
and no tokenizer). A run executes what its goal needs: the goal (``report`` for a full run, or the stage
named by ``--until``) and everything it reads, directly or not, in a topological order (ties broken by
registration order). Stages nobody needs do not run.

The input ``MODEL`` stands for "the checkpoint of the model stage before me": ``train``, then every
enabled post stage (``model=True``: fine-tune, soup, prune, grow, ... take a finished checkpoint and
write a new one) in registration order. A post stage's ``MODEL`` is the model stage before it; any other
stage's ``MODEL`` (eval, generate) is the last one of the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.recipe import Recipe
from kiln.run import RunDir, RunError

StageFn = Callable[[Recipe, RunDir, Path], dict]
MODEL = "@model"  # input placeholder: the newest model-producing stage before this one


@dataclass(frozen=True)
class Stage:
    """One stage: its recipe ``sections``, ``inputs`` (stage names, ``MODEL``, or a function of the recipe),
    the ``outputs`` its folder holds (documentation), and how it runs."""

    name: str
    sections: tuple[str, ...]
    fn: StageFn
    inputs: tuple[str, ...] | Callable[[Recipe], tuple[str, ...]] = ()
    outputs: tuple[str, ...] = ()
    in_place: bool = False  # the folder persists across interruptions (train resumes from its checkpoints)
    always: bool = False  # rerun every time (report)
    ranked: bool = False  # under torchrun every rank runs fn (train); other stages run on rank 0 alone
    shareable: bool = False  # completed folders go to / come from the stage store (kiln/store.py)
    model: bool = False  # writes checkpoints/step-N: eval, generate and export read the last such stage
    enabled: Callable[[Recipe], bool] | None = None  # None = always part of the graph
    extra: Callable[[Recipe], Any] | None = None  # fingerprinted parameters outside the recipe's sections

    def is_enabled(self, recipe: Recipe) -> bool:
        return self.enabled is None or bool(self.enabled(recipe))


STAGES: dict[str, Stage] = {}
ORDER: list[str] = []  # registration order (updated in place by register_stage)


def register_stage(stage: Stage, replace: bool = False) -> Stage:
    """Add a stage to the graph (a post stage: ``model=True, inputs=(MODEL,)``)."""
    if stage.name in STAGES and not replace:
        raise ValueError(f"stage '{stage.name}' is already registered")
    if stage.name not in STAGES:  # a model stage goes right after the last one (train, earlier post stages)
        models = [i for i, n in enumerate(ORDER) if STAGES[n].model]
        ORDER.insert(models[-1] + 1 if stage.model and models else len(ORDER), stage.name)
    STAGES[stage.name] = stage
    return stage


def unregister_stage(name: str) -> None:
    STAGES.pop(name, None)
    if name in ORDER:
        ORDER.remove(name)


def model_chain(recipe: Recipe) -> list[str]:
    """The enabled model-producing stages in order: ``train`` first, then post stages."""
    import kiln.stages  # noqa: F401 - registers the built-in stages (for callers that never imported the pipeline)

    return [n for n in ORDER if STAGES[n].model and STAGES[n].is_enabled(recipe)]


def stage_inputs_of(name: str, recipe: Recipe) -> tuple[str, ...]:
    """The stages ``name`` reads under ``recipe`` (``MODEL`` resolved)."""
    st = STAGES[name]
    raw = st.inputs(recipe) if callable(st.inputs) else st.inputs
    chain = model_chain(recipe)
    out = []
    for dep in raw:
        if dep == MODEL:
            before = chain[: chain.index(name)] if name in chain else chain
            if not before:
                raise RunError(f"stage '{name}' needs a model, and no model stage is enabled")
            dep = before[-1]
        if dep not in STAGES:
            raise RunError(f"stage '{name}' reads unknown stage '{dep}'")
        out.append(dep)
    return tuple(out)


def upstream(name: str, recipe: Recipe) -> list[str]:
    """Every stage ``name`` reads from, directly or not, in graph order."""
    seen: set[str] = set()
    todo = list(stage_inputs_of(name, recipe))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(stage_inputs_of(dep, recipe))
    return [n for n in topo_order(seen | {name}, recipe) if n in seen]


def topo_order(names: set[str] | list[str], recipe: Recipe) -> list[str]:
    """``names`` ordered so every stage comes after its inputs (ties: registration order)."""
    names = set(names)
    deps = {n: {d for d in stage_inputs_of(n, recipe) if d in names} for n in names}
    out: list[str] = []
    while deps:
        ready = [n for n in ORDER if n in deps and not deps[n]]
        if not ready:
            raise RunError(f"the stage graph has a cycle among {', '.join(sorted(deps))}")
        out.append(ready[0])
        del deps[ready[0]]
        for d in deps.values():
            d.discard(ready[0])
    return out


def plan_names(recipe: Recipe, goals: list[str]) -> list[str]:
    """The goals and everything they read, in topological order."""
    for g in goals:
        if g not in STAGES:
            raise RunError(f"unknown stage '{g}'; stages are {', '.join(ORDER)}")
    needed = set(goals)
    for g in goals:
        needed.update(upstream(g, recipe))
    return topo_order(needed, recipe)


def downstream(names: set[str], plan: list[str], recipe: Recipe) -> set[str]:
    """``names`` and every stage of ``plan`` that reads one of them, directly or not."""
    out = set(names)
    for n in plan:  # topological: inputs come first
        if set(stage_inputs_of(n, recipe)) & out:
            out.add(n)
    return out
