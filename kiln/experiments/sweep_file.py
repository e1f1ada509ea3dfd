"""Sweep files: a base recipe, variants (recipe overrides), seeds, a budget and the metrics to compare.

```yaml
name: lr-sweep                  # default: the file's stem; runs go to <root>/<name>/
base: ../demo-small.yaml        # a recipe path (relative to the sweep file) or a built-in name ("demo")
overrides: {train.steps: 200}   # applied to every variant first (dotted keys, YAML values)
seeds: 2                        # N -> seeds 0..N-1, or a list [0, 7]; sets train.seed
budget: tokens                  # tokens | flops | {tokens: N} | {flops: F} (kiln/experiments/budget.py)
baseline: base                  # default: the first variant
metrics: [val_bpb]              # paths into eval/metrics.json, "/"-separated
variants: {base: {}, high-lr: {train.lr: 0.01}}
```

Everything is checked before anything runs (:func:`load_sweep`): the schema, and every variant's full
recipe through kiln's own recipe validation, so an error names the sweep file, the variant and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiln.recipe import NAME_PATTERN, Recipe, RecipeError, default_name, load_recipe, with_overrides

VARIANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$"  # a folder name; --vary names look like train.lr=0.001


class SweepError(ValueError):
    """A sweep file (or --vary grid) that cannot be run; the message names the file, variant and field."""


class SweepSpec(BaseModel):
    """The sweep file's schema (unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=NAME_PATTERN)
    base: str = Field(description="recipe path (relative to the sweep file) or built-in recipe name")
    overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: int | list[int] = 1
    budget: Literal["tokens", "flops"] | dict[Literal["tokens", "flops"], float] | None = None
    baseline: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["val_bpb"])
    variants: dict[str, dict[str, Any] | None] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"need at least one seed, got {v}")
        elif not v or len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"a non-empty list of distinct seeds >= 0, got {v}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if len(v) != 1:
                raise ValueError(f"one of {{tokens: N}} or {{flops: F}}, got {v}")
            n = next(iter(v.values()))
            if not (math.isfinite(n) and n > 0):
                raise ValueError(f"the budget must be a positive number, got {n}")
        return v

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(VARIANT_PATTERN, str(name)):
                raise ValueError(f"variant name {name!r}: letters, digits and . _ = , + - only (it names a folder)")
        return {str(k): dict(ov or {}) for k, ov in v.items()}

    @model_validator(mode="after")
    def _baseline_known(self) -> SweepSpec:
        if self.baseline is not None and self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not a variant ({', '.join(self.variants)})")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass
class Sweep:
    """A validated sweep: the spec, its resolved name and base, and each variant's full recipe (seed unset)."""

    spec: SweepSpec
    name: str
    base: str
    origin: str
    recipes: dict[str, Recipe]

    @property
    def baseline(self) -> str:
        return self.spec.baseline or next(iter(self.spec.variants))

    @property
    def seeds(self) -> list[int]:
        return self.spec.seed_list()


def as_override(key: str, value: Any) -> str:
    """A dotted ``key`` and a real YAML value as the ``key=value`` string :func:`kiln.recipe.apply_override` reads
    (flow-style YAML round-trips lists, mappings and quoted strings exactly)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def _schema_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid sweep file {origin}:"]
    for e in exc.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _resolve_base(base: str, folder: Path | None) -> str:
    if folder is not None and (folder / base).exists():
        return str(folder / base)
    return base


def validate_sweep(spec: SweepSpec, origin: str, folder: Path | None = None, default: str = "sweep") -> Sweep:
    """Every variant's recipe (base + overrides + variant overrides), validated; SweepError naming the variant."""
    base = _resolve_base(spec.base, folder)
    try:
        base_recipe = load_recipe(base)
    except RecipeError as exc:
        raise SweepError(f"{origin}: base: {exc}") from None
    common = [as_override(k, v) for k, v in spec.overrides.items()]
    try:
        shared = with_overrides(base_recipe, common, f"{origin} (overrides)")
    except RecipeError as exc:
        raise SweepError(str(exc)) from None
    recipes: dict[str, Recipe] = {}
    for variant, overrides in spec.variants.items():
        ovs = [as_override(k, v) for k, v in (overrides or {}).items()]
        try:
            recipes[variant] = with_overrides(shared, ovs, f"{origin}, variant '{variant}'")
        except RecipeError as exc:
            msg = str(exc)
            if not msg.startswith("invalid recipe"):
                msg = f"{origin}, variant '{variant}': {msg}"
            raise SweepError(msg) from None
    return Sweep(spec, spec.name or default, base, origin, recipes)


def load_sweep(path: str | Path) -> Sweep:
    """Read, check and expand-validate a sweep file; SweepError (naming file, variant and field) if unusable."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SweepError(f"{path}: cannot read the sweep file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise SweepError(f"{path}: expected a mapping (base, variants, ...) at the top level")
    if "variants" not in tree and {"corpus", "model", "train"} & set(tree):
        raise SweepError(f"{path} is a recipe, not a sweep file: sweep it with `kiln ablate {path} --vary "
                         "KEY=V1,V2`, or write a sweep file (base, variants, seeds)")
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as exc:
        raise SweepError(_schema_errors(exc, str(path))) from None
    return validate_sweep(spec, str(path), path.parent, default_name(path))
