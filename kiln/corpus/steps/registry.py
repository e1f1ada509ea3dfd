"""The step registry: every step's params model (joined into ``corpus.steps``) and its function.

Modules listed in ``MODULES`` expose ``STEPS: list[StepDef]``. The learned-filter, ProX and mixing modules
are optional here: a module that does not exist yet is skipped; any other import error is raised. Every
module of the :mod:`kiln.corpus.selection` package whose name ends in ``steps`` (one per data-selection
method: ``gotd_steps``, ...) is registered too, so a new method is a new file.
"""

from __future__ import annotations

import importlib
import pkgutil
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
    "kiln.corpus.steps.shuffle",
    "kiln.corpus.steps.knowledge",
    "kiln.corpus.scoring.select",
    "kiln.corpus.scoring.builtin",
    "kiln.corpus.learned.steps",
    "kiln.corpus.prox.steps",
    "kiln.corpus.mix",
)
OPTIONAL = frozenset({"kiln.corpus.learned.steps", "kiln.corpus.prox.steps", "kiln.corpus.mix"})


def _selection_modules() -> list[str]:
    import kiln.corpus.selection as pkg

    return sorted(f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if m.name.endswith("steps"))


def _load() -> dict[str, StepDef]:
    found: dict[str, StepDef] = {}
    for name in (*MODULES, *_selection_modules()):
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
