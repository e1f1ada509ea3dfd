"""Expansion: a sweep's variants x seeds -> one ordinary recipe and run directory each; the ``--vary`` grid.

Variant ``v``, seed ``s`` -> ``<root>/<sweep>/<v>/seed-<s>/`` running the variant's recipe with
``train.seed=s`` and ``name=<sweep>--<v>--s<s>`` (characters a recipe name cannot hold become ``-``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.experiments.sweep_file import SweepError, SweepSpec, as_override
from kiln.recipe import Recipe, with_overrides


@dataclass
class RunSpec:
    """One run of a sweep: which variant and seed, its full recipe and its run directory."""

    variant: str
    seed: int
    recipe: Recipe
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


def recipe_name(sweep: str, variant: str, seed: int) -> str:
    """``<sweep>--<variant>--s<seed>`` with every character a recipe name cannot hold replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{sweep}--{variant}--s{seed}")


def expand(name: str, recipes: dict[str, Recipe], seeds: list[int], sweep_root: Path) -> list[RunSpec]:
    """Variant-major list of runs: every variant's recipe with ``train.seed`` and ``name`` set per seed."""
    runs, names = [], set()
    for variant, recipe in recipes.items():
        for seed in seeds:
            rname = recipe_name(name, variant, seed)
            if rname in names:
                raise SweepError(f"variants give the same run name {rname}; rename one of them")
            names.add(rname)
            r = with_overrides(recipe, [f"train.seed={seed}", f"name={rname}"], f"variant '{variant}' seed {seed}")
            runs.append(RunSpec(variant, seed, r, sweep_root / variant / f"seed-{seed}"))
    return runs


def split_values(text: str) -> list[str]:
    """Split ``V1,V2,...`` at top-level commas (commas inside ``[]``, ``{}`` or quotes do not split)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_vary(spec: str) -> tuple[str, list[Any], list[str]]:
    """``KEY=V1,V2`` -> (key, YAML values, value texts as written)."""
    key, eq, raw = spec.partition("=")
    if not eq or not key.strip() or not raw.strip():
        raise SweepError(f"--vary {spec!r}: expected KEY=V1,V2,... (e.g. train.lr=0.001,0.003)")
    texts = split_values(raw)
    if any(not t for t in texts):
        raise SweepError(f"--vary {spec!r}: an empty value")
    if len(set(texts)) != len(texts):
        raise SweepError(f"--vary {spec!r}: a value repeats")
    try:
        values = [yaml.safe_load(t) for t in texts]
    except yaml.YAMLError as exc:
        raise SweepError(f"--vary {spec!r}: a value is not valid YAML ({exc})") from None
    return key.strip(), values, texts


def vary_spec(base: str, vary: list[str], seeds: int, overrides: list[str], name: str) -> SweepSpec:
    """The sweep of a recipe over the cartesian product of ``--vary`` keys; the first value of every key is the
    baseline. Variant names are ``key=value`` joined with ``,`` (``train.lr=0.001,model.n_layer=2``)."""
    axes = [parse_vary(v) for v in vary]
    keys = [k for k, _, _ in axes]
    if len(set(keys)) != len(keys):
        raise SweepError(f"--vary: a key is varied twice ({', '.join(keys)})")
    common: dict[str, Any] = {}
    for ov in overrides:
        key, eq, raw = ov.partition("=")
        if not eq:
            raise SweepError(f"override {ov!r}: expected KEY=VALUE, e.g. train.steps=50")
        common[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    variants: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*[list(zip(vals, texts, strict=True)) for _, vals, texts in axes]):
        label = ",".join(f"{k}={re.sub(r'[^A-Za-z0-9._+-]+', '-', t)}"
                         for k, (_, t) in zip(keys, combo, strict=True))
        if label in variants:
            raise SweepError(f"--vary: two value combinations give the same variant name {label}")
        variants[label] = {k: v for k, (v, _) in zip(keys, combo, strict=True)}
    return SweepSpec.model_validate({"name": name, "base": base, "overrides": common, "seeds": seeds,
                                     "variants": variants})


__all__ = ["RunSpec", "as_override", "expand", "parse_vary", "recipe_name", "split_values", "vary_spec"]
