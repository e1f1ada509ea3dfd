"""Kiln's base steps: ``normalize``, ``empty``, ``length``, ``exact_dedup`` (the foundation's default pipeline)."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams


class NormalizeParams(StepParams):
    step: Literal["normalize"] = "normalize"
    form: Literal["NFC", "NFKC", "none"] = "NFC"


def run_normalize(docs: list[Doc], params: NormalizeParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Unicode form, ``\\n`` line endings, no trailing spaces, no outer blank lines; removes nothing."""
    from kiln.corpus.clean import normalize_text

    rep = StepReport(params.step, docs_in=len(docs))
    out = []
    for doc in docs:
        ok, text = ctx.guard(rep, doc, lambda d: normalize_text(d["text"], params.form))
        if ok:
            out.append(ctx.change(rep, doc, text, f"changed ({params.form}, line endings, trailing whitespace)"))
    rep.docs_out = len(out)
    return out, rep


class EmptyParams(StepParams):
    step: Literal["empty"] = "empty"


def run_empty(docs: list[Doc], params: EmptyParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    return ctx.filter(docs, params, lambda d: None if d["text"].strip() else "empty or whitespace only")


class LengthParams(StepParams):
    step: Literal["length"] = "length"
    min_chars: int = Field(200, ge=0)
    max_chars: int | None = Field(None, gt=0)


def run_length(docs: list[Doc], params: LengthParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    def why(doc: Doc) -> str | None:
        n = len(doc["text"])
        if n < params.min_chars:
            return f"too short: {n} < min_chars {params.min_chars}"
        if params.max_chars is not None and n > params.max_chars:
            return f"too long: {n} > max_chars {params.max_chars}"
        return None

    return ctx.filter(docs, params, why)


class ExactDedupParams(StepParams):
    step: Literal["exact_dedup"] = "exact_dedup"


def run_exact_dedup(docs: list[Doc], params: ExactDedupParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Exact duplicates (sha256 of the text) of an earlier document are removed; the first is kept (Yi stage 1)."""
    rep = StepReport(params.step, docs_in=len(docs))
    first: dict[bytes, str] = {}
    out = []
    for doc in docs:
        kept = first.setdefault(hashlib.sha256(doc["text"].encode("utf-8")).digest(), doc["id"])
        if kept == doc["id"]:
            out.append(doc)
        else:
            ctx.remove(rep, doc, f"exact duplicate of {kept}", duplicate_of=kept)
    rep.docs_out = len(out)
    return out, rep


STEPS = [
    StepDef(NormalizeParams, run_normalize, per_doc=True),
    StepDef(EmptyParams, run_empty, per_doc=True),
    StepDef(LengthParams, run_length, per_doc=True),
    StepDef(ExactDedupParams, run_exact_dedup),
]
