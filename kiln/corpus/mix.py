"""Mixing and slicing: per-source sampling weights, and slices of the corpus by a metadata field.

Domain composition is one of the levers A Pretrainer's Guide (Longpre et al. 2023) measures, and data
age another: a model trained on an older slice and evaluated on a newer one shows the temporal gap.

``mix``: every document of group ``g`` (its ``by`` field, default ``source``) is emitted ``floor(w_g)``
times, plus once more for a deterministic ``round(frac(w_g) * n_g)`` of the group: those with the
lowest ``sha256("{seed}:mix:{id}")`` draws (salted: unsalted, the draw would equal the train/val split's
``sha256("{split_seed}:{id}")`` when the seeds match, and a weight below 1 would keep the validation
documents first). So weight 2.0 doubles every document, 0.5 keeps exactly half
(the same half on every run), 1.3 keeps every document and repeats 30% of them once. Copy ``j >= 1``
gets the id ``{id}#r{j}`` and every output document records its copy index in ``repeat_field``;
``mix.json`` in the corpus folder records per group the weight and the repeat counts.
Put ``mix`` after deduplication (an exact-dedup step would remove the copies) and split train/val by
:func:`base_id` so copies stay on their original's side.

``slice``: keep the documents whose ``field`` holds one of ``values``, or lies in ``[start, end)``
(numbers compare as numbers, anything else by its string form, so ISO dates order correctly). One recipe
per slice gives time-sliced runs; :func:`slice_values` lists a field's values with their sizes and
:func:`slice_steps` writes the step entry of each slice.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from kiln.corpus.artifacts import stage_dir
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport, nbytes

Scalar = str | int | float | bool
_REPEAT = re.compile(r"(#r\d+|#aug\d+)+$")  # mixed copies (mix) and augmented copies (augment)


class MixParams(StepParams):
    step: Literal["mix"] = "mix"
    weights: dict[str, float] = Field(default_factory=dict, description="group value -> weight (>= 0)")
    by: str = Field("source", description="the field whose value names a document's group")
    default_weight: float = Field(1.0, ge=0.0, description="weight of groups not named in `weights`")
    seed: int = 0
    repeat_field: str | None = Field("repeat", description="metadata field holding the copy index (0 = original)")

    @model_validator(mode="after")
    def _non_negative(self) -> MixParams:
        bad = {k: w for k, w in self.weights.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        return self


class SliceParams(StepParams):
    step: Literal["slice"] = "slice"
    field: str = Field(description="metadata field to slice by (e.g. edition, date, year)")
    values: list[Scalar] | None = Field(None, description="keep documents whose field is one of these")
    start: Scalar | None = Field(None, description="keep field >= start (range slice)")
    end: Scalar | None = Field(None, description="keep field < end (range slice)")
    keep_missing: bool = Field(False, description="keep documents that lack the field")

    @model_validator(mode="after")
    def _one_kind(self) -> SliceParams:
        ranged = self.start is not None or self.end is not None
        if (self.values is not None) == ranged:
            raise ValueError("give either `values` or a range (`start` and/or `end`)")
        return self


def draw(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from ``sha256("{seed}:{doc_id}")``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big") / 2**64


def base_id(doc_id: str) -> str:
    """The original id of a mixed or augmented copy (``a#r2``, ``a#aug1``, ``a#r2#aug0`` -> ``a``): the split
    draws by it, so a copy always lands in its original's split."""
    return _REPEAT.sub("", doc_id)


def copy_counts(ids: list[str], weight: float, seed: int) -> list[int]:
    """How many times each document of one group is emitted under ``weight`` (module docstring)."""
    whole = math.floor(weight)
    extra = round((weight - whole) * len(ids))
    chosen = set(sorted(range(len(ids)), key=lambda i: (draw(f"mix:{ids[i]}", seed), i))[:extra])
    return [whole + (i in chosen) for i in range(len(ids))]


def run_mix(docs: list[Doc], params: MixParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        groups.setdefault(str(doc.get(params.by)), []).append(i)
    copies = [0] * len(docs)
    summary: dict[str, dict[str, Any]] = {}
    for key, idx in groups.items():
        weight = params.weights.get(key, params.default_weight)
        counts = copy_counts([docs[i]["id"] for i in idx], weight, params.seed)
        for i, c in zip(idx, counts, strict=True):
            copies[i] = c
        summary[key] = {"weight": weight, "docs_in": len(idx), "docs_out": sum(counts),
                        "bytes_out": sum(c * nbytes(docs[i]["text"]) for i, c in zip(idx, counts, strict=True)),
                        "repeat_counts": {str(k): v for k, v in sorted(Counter(counts).items())}}
    out = []
    for doc, n in zip(docs, copies, strict=True):
        if n == 0:
            weight = summary[str(doc.get(params.by))]["weight"]
            ctx.remove(rep, doc, f"mix: {params.by}={doc.get(params.by)!r} weight {weight:g}, not drawn")
        for j in range(n):
            copy = {**doc, "id": doc["id"] if j == 0 else f"{doc['id']}#r{j}"}
            if params.repeat_field:
                copy[params.repeat_field] = j
            out.append(copy)
    rep.docs_out = len(out)
    out_dir = stage_dir(ctx)
    if out_dir is not None:
        (out_dir / "mix.json").write_text(json.dumps({"by": params.by, "seed": params.seed, "groups": summary},
                                                     indent=2, sort_keys=True))
    return out, rep


def _key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def in_slice(value: Any, params: SliceParams) -> bool:
    if value is None:
        return params.keep_missing
    if params.values is not None:
        return value in params.values
    key = _key(value)
    if params.start is not None and key < _key(params.start):
        return False
    return not (params.end is not None and key >= _key(params.end))


def run_slice(docs: list[Doc], params: SliceParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    def why(doc: Doc) -> str | None:
        value = doc.get(params.field)
        if in_slice(value, params):
            return None
        want = params.values if params.values is not None else f"[{params.start}, {params.end})"
        return f"slice: {params.field}={value!r} not in {want}"

    return ctx.filter(docs, params, why)


@dataclass(frozen=True)
class SliceValue:
    value: Any
    docs: int
    bytes: int


def slice_values(docs: list[Doc], field: str) -> list[SliceValue]:
    """Every value of ``field`` (None = missing) with its document and byte counts, in value order."""
    docs_n: Counter[Any] = Counter()
    bytes_n: Counter[Any] = Counter()
    for doc in docs:
        value = doc.get(field)
        docs_n[value] += 1
        bytes_n[value] += nbytes(doc["text"])
    order = sorted(docs_n, key=lambda v: (v is not None, _key(v)))
    return [SliceValue(v, docs_n[v], bytes_n[v]) for v in order]


def slice_steps(field: str, values: list[Any]) -> list[dict[str, Any]]:
    """One ``corpus.steps`` entry per value: append one to a recipe per time-sliced run."""
    return [{"step": "slice", "field": field, "values": [v]} for v in values]


STEPS = [StepDef(MixParams, run_mix), StepDef(SliceParams, run_slice)]
