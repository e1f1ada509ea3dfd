"""``knowledge_triples``: knowledge triples from a document's metadata, prepended to its text.

ERNIE 3.0 (Sun et al. 2021, "ERNIE 3.0: Large-scale Knowledge Enhanced Pre-training for Language Understanding
and Generation", arXiv:2107.02137, sec. 3.2.2 "Universal Knowledge-Text Prediction") pairs a knowledge-graph
triple with the text it comes from and masks both, so recovering one needs the other. kiln's corpora carry the
knowledge in their metadata, so the triples are derived from it, deterministically:

- Shakespeare scenes (``play`` set): ``(SPEAKER, appears in, TITLE)`` for every speaker label of the scene (a
  line that is only an upper-case name and a period, ``COUNTESS.``), in order of first appearance; ``TITLE`` is
  the ``title`` metadata (else ``play``); a label must be followed by a non-blank line (the speech) and not
  start with a heading word (ACT, SCENE, PROLOGUE, ...);
- standard-library docstrings (``module`` and ``kind`` set, ``kind`` class or function):
  ``(NAME, <kind> defined in, MODULE)`` with ``NAME`` the last dotted part of the id;
- other documents are left unchanged.

At most ``max_triples`` per document. The block is written in front of the text with the reserved ``<|sep|>``
token (``kiln.tokenizer.special``; the tokenizer keeps it one id wherever it appears in the text) as the only
delimiter::

    <|sep|>HEAD<|sep|>RELATION<|sep|>TAIL<|sep|>HEAD<|sep|>...<|sep|>TAIL<|sep|><|sep|>TEXT

that is: an opening ``<|sep|>``, every field followed by one ``<|sep|>``, and an empty field (``<|sep|>`` twice)
closing the block, so the ``ernie3`` objective (``kiln/objectives/ernie3_uktp.py``) finds the fields and the
entities (fields 0 and 2 of every triple) by token ids alone. A field written right after a special token is
tokenized as a word at the start of a line, so a speaker in the block has the same tokens as the speaker label
in the scene (mid-sentence mentions, ``the COUNTESS``, carry a leading space and other tokens: they are not
found). Fields holding ``<|`` are dropped (no field can fake a delimiter).

Recipe::

    corpus:
      steps: [..., {step: knowledge_triples, max_triples: 8}]
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams
from kiln.tokenizer.special import SEP

SPEAKER = re.compile(r"^([A-Z][A-Z'\-]*(?: [A-Z][A-Z'\-]*){0,3})\.[ \t]*\n(?=[ \t]*\S)", re.M)
HEADINGS = frozenset({"ACT", "SCENE", "PROLOGUE", "EPILOGUE", "INDUCTION", "CHORUS"})
Triple = tuple[str, str, str]


class KnowledgeTriplesParams(StepParams):
    step: Literal["knowledge_triples"] = "knowledge_triples"
    max_triples: int = Field(8, ge=1, le=256, description="most triples prepended to one document")


def _clean(field: object) -> str | None:
    text = " ".join(str(field).split()) if field is not None else ""
    return text if text and "<|" not in text else None


def triples_of(doc: Doc, max_triples: int = 8) -> list[Triple]:
    """The knowledge triples of one document from its metadata (see the module docstring)."""
    out: list[Triple] = []
    if doc.get("play"):
        tail = _clean(doc.get("title")) or _clean(doc.get("play"))
        seen: set[str] = set()
        for m in SPEAKER.finditer(doc.get("text") or ""):
            head = _clean(m.group(1))
            if head and tail and head not in seen and len(head) > 1 and head.split()[0] not in HEADINGS:
                seen.add(head)
                out.append((head, "appears in", tail))
    elif doc.get("module") and doc.get("kind") in ("class", "function"):
        head = _clean(str(doc.get("id", "")).rsplit(".", 1)[-1].rsplit("/", 1)[-1])
        tail = _clean(doc["module"])
        if head and tail:
            out.append((head, f"{doc['kind']} defined in", tail))
    return out[:max_triples]


def knowledge_block(triples: list[Triple]) -> str:
    """``<|sep|>`` + every field followed by ``<|sep|>`` + a closing ``<|sep|>``; empty without triples."""
    if not triples:
        return ""
    return SEP + "".join(f"{field}{SEP}" for triple in triples for field in triple) + SEP


def run_knowledge(docs: list[Doc], params: KnowledgeTriplesParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Every document with its triples' block in front of its text (documents without triples unchanged)."""
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    out = []
    for doc in docs:
        if isinstance(doc.get("text"), str) and doc["text"].startswith(SEP):
            raise ValueError(f"corpus step '{rep.step}': document '{doc.get('id')}' already starts with {SEP} "
                             "(knowledge_triples listed twice?)")
        triples = triples_of(doc, params.max_triples)
        out.append(ctx.change(rep, doc, knowledge_block(triples) + doc["text"], "knowledge triples prepended")
                   if triples else doc)
    rep.docs_out = len(out)  # docs_changed: documents given triples (bytes_removed is negative: text was added)
    return out, rep


STEPS = [StepDef(KnowledgeTriplesParams, run_knowledge, per_doc=True)]
