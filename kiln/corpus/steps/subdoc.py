"""Sub-document exact dedup (Yi: Young et al. 2024): lines or paragraphs repeated across documents.

A unit (line, or paragraph = text between blank lines) of at least ``min_chars`` characters whose exact
text (stripped) already appeared in an earlier document is deleted from later documents; repeats within
one document are left to ``gopher_repetition``. A document left with under ``min_doc_chars`` characters is
removed.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams

_PARA = re.compile(r"\n\s*\n")


class SubdocDedupParams(StepParams):
    step: Literal["subdoc_dedup"] = "subdoc_dedup"
    unit: Literal["line", "paragraph"] = "line"
    min_chars: int = Field(40, ge=1, description="shorter units are never removed (blank lines, short refrains)")
    min_doc_chars: int = Field(1, ge=0)


def run_subdoc_dedup(docs: list[Doc], params: SubdocDedupParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    rep = StepReport(params.step, docs_in=len(docs))
    seen: set[bytes] = set()
    sep = "\n" if params.unit == "line" else "\n\n"
    out = []
    for doc in docs:
        units = doc["text"].split("\n") if params.unit == "line" else _PARA.split(doc["text"])
        keep, mine = [], set()
        for u in units:
            key = hashlib.blake2b(u.strip().encode(), digest_size=16).digest()
            if len(u.strip()) >= params.min_chars and key in seen:
                continue
            keep.append(u)
            mine.add(key)
        seen |= mine
        text = sep.join(keep).strip("\n")
        if len(text) < params.min_doc_chars:
            ctx.remove(rep, doc, f"nothing left after removing repeated {params.unit}s")
            continue
        out.append(ctx.change(rep, doc, text, f"repeated {params.unit}s removed"))
    rep.docs_out = len(out)
    return out, rep


STEPS = [StepDef(SubdocDedupParams, run_subdoc_dedup)]
