"""The step registry: every step's params model (joined into ``corpus.steps``) and its function.

Modules listed in ``MODULES`` expose ``STEPS: list[StepDef]``. The learned-filter, ProX and mixing modules
are optional here: a module that does not exist yet is skipped; any other import error is raised.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, Union

from pydantic import Field

from kiln.corpus.steps.base import StepDef, StepFn

MODULES = (
    "kiln.corpus.steps.basic",
    "kiln.corpus.steps.heuristics",
    "kiln.corpus.steps.datatrove_filters",
    "kiln.corpus.steps.minhash",
    "kiln.corpus.steps.subdoc",
    "kiln.corpus.steps.plant",
    "kiln.corpus.steps.toxicity",
    "kiln.corpus.learned.steps",
    "kiln.corpus.prox.steps",
    "kiln.corpus.mix",
)
OPTIONAL = frozenset(MODULES[7:])


def _load() -> dict[str, StepDef]:
    found: dict[str, StepDef] = {}
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name in OPTIONAL and exc.name is not None and name.startswith(exc.name):
                continue
            raise
        for sd in getattr(mod, "STEPS", []):
            if sd.name in found:
                raise RuntimeError(f"corpus step '{sd.name}' registered twice ({name})")
            found[sd.name] = sd
    return found


REGISTRY: dict[str, StepDef] = _load()
StepSpec: Any = Annotated[Union[tuple(sd.params for sd in REGISTRY.values())], Field(discriminator="step")]  # noqa: UP007


def step_fn(name: str) -> StepFn:
    return REGISTRY[name].run
