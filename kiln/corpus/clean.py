"""Text normalisation, the ``corpus.select`` metadata filter, and the train/validation split.

The cleaning steps themselves live in the step registry (``kiln/corpus/steps/``); this module keeps
what they and the corpus stage share: :func:`normalize_text` (Unicode form, ``\\n`` line endings, no
trailing whitespace on lines, no outer blank lines), :func:`step_select`, and the split:
:func:`split_docs` assigns each document to train or validation by a hash of its id, or
:func:`split_tail` holds out the tail of the ordered concatenation (``corpus.split: tail``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from kiln.corpus.mix import base_id
from kiln.corpus.report import EXAMPLE_CHARS, MAX_EXAMPLES, Doc, StepReport, nbytes
from kiln.recipe import CorpusConfig

__all__ = ["Doc", "StepReport", "nbytes", "MAX_EXAMPLES", "EXAMPLE_CHARS"]

_TRAILING_WS = re.compile(r"[^\S\n]+$", re.M)  # the rule; normalize_text applies it per line


def normalize_text(text: str, form: str) -> str:
    """Unicode ``form`` (or ``none``), ``\\n`` line endings, lines right-stripped, outer blank lines cut."""
    if form != "none":
        text = unicodedata.normalize(form, text)  # type: ignore[arg-type]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # str.rstrip strips exactly the characters of the regex class [^\S\n] (both are str.isspace); 8x faster
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _filter(name: str, docs: list[Doc], why: Callable[[Doc], str | None]) -> tuple[list[Doc], StepReport]:
    """Keep documents for which ``why`` returns None; record the others with its reason."""
    rep = StepReport(name, docs_in=len(docs))
    out = []
    for doc in docs:
        reason = why(doc)
        if reason is None:
            out.append(doc)
            continue
        rep.docs_removed += 1
        rep.bytes_removed += nbytes(doc["text"])
        rep.example(doc, reason)
    rep.docs_out = len(out)
    return out, rep


def step_select(docs: list[Doc], cfg: CorpusConfig) -> tuple[list[Doc], StepReport]:
    """``corpus.select``: keep a document iff every named metadata field holds one of the listed values."""

    def why(doc: Doc) -> str | None:
        for key, allowed in cfg.select.items():
            if doc.get(key) not in allowed:
                return f"not selected: {key}={doc.get(key)!r} not in {allowed}"
        return None

    return _filter("select", docs, why)


# ----------------------------------------------------------------------------- split


def split_score(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from sha256 of ``"{seed}:{doc_id}"``: the document's split draw."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_docs(docs: list[Doc], fraction: float, seed: int) -> tuple[list[Doc], list[Doc], dict[str, Any]]:
    """``(train, val, info)``, both in input order. A doc is in val iff its score < ``fraction``.

    The rule looks at each id alone, so a document's side never depends on corpus order or on the
    other documents. One exception keeps tiny corpora usable: if ``fraction > 0``, there are at
    least 2 documents and none scored into val, the lowest-scoring one goes to val (``forced_val``);
    likewise if all scored into val, the highest-scoring one stays in train (``forced_train``).
    """
    scores = [split_score(base_id(d["id"]), seed) for d in docs]  # mixed copies follow their original
    in_val = [s < fraction for s in scores]
    info: dict[str, Any] = {"val_fraction": fraction, "seed": seed, "rule": "sha256(f'{seed}:{id}') < val_fraction",
                            "forced_val": None, "forced_train": None}  # fmt: skip
    if fraction > 0 and len(docs) >= 2:
        if not any(in_val):
            i = min(range(len(docs)), key=scores.__getitem__)
            in_val[i], info["forced_val"] = True, docs[i]["id"]
        elif all(in_val):
            i = max(range(len(docs)), key=scores.__getitem__)
            in_val[i], info["forced_train"] = False, docs[i]["id"]
    train = [d for d, v in zip(docs, in_val, strict=True) if not v]
    val = [d for d, v in zip(docs, in_val, strict=True) if v]
    info.update(
        train_docs=len(train), val_docs=len(val),
        train_bytes=sum(nbytes(d["text"]) for d in train), val_bytes=sum(nbytes(d["text"]) for d in val),
    )  # fmt: skip
    return train, val, info


TAIL_SUFFIX = "#tail"


def _order_key(doc: Doc, fields: list[str]) -> tuple:
    """Missing values first, then numbers in numeric order, then anything else by its string form."""
    key: list[tuple] = []
    for f in fields:
        v = doc.get(f)
        if v is None:
            key.append((0, 0.0, ""))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            key.append((1, float(v), ""))
        else:
            key.append((2, 0.0, str(v)))
    return tuple(key)


def split_tail(docs: list[Doc], fraction: float, order_by: list[str]) -> tuple[list[Doc], list[Doc], dict[str, Any]]:
    """``(train, val, info)``: val is the last ``fraction`` of the characters of the documents' concatenation.

    Documents are first sorted (stably) by the ``order_by`` metadata fields, then laid end to end; the
    cut sits at character ``len(concat) - round(fraction * len(concat))``. Documents wholly after it
    are val, those before it train; the one the cut falls inside is split in two: its head keeps its
    id in train, its tail goes to val as ``{id}#tail``. So the train texts followed by the val texts
    are exactly the concatenation, and val holds exactly ``round(fraction * total)`` characters. This is
    nanoGPT's ``shakespeare_char`` hold-out (the last 10% of one file) made document-aware.
    """
    ordered = sorted(docs, key=lambda d: _order_key(d, order_by)) if order_by else list(docs)
    total = sum(len(d["text"]) for d in ordered)
    n_val = round(fraction * total)
    cut = total - n_val
    train: list[Doc] = []
    val: list[Doc] = []
    offset, straddler = 0, None
    for doc in ordered:
        end = offset + len(doc["text"])
        if end <= cut:
            train.append(doc)
        elif offset >= cut:
            val.append(doc)
        else:
            k = cut - offset
            train.append({**doc, "text": doc["text"][:k]})
            val.append({**doc, "id": doc["id"] + TAIL_SUFFIX, "text": doc["text"][k:]})
            straddler = doc["id"]
        offset = end
    info: dict[str, Any] = {
        "rule": "tail", "val_fraction": fraction, "order_by": order_by, "total_chars": total, "cut_char": cut,
        "val_chars": n_val, "split_document": straddler, "first_val_id": val[0]["id"] if val else None,
        "train_docs": len(train), "val_docs": len(val),
        "train_bytes": sum(nbytes(d["text"]) for d in train), "val_bytes": sum(nbytes(d["text"]) for d in val),
    }  # fmt: skip
    return train, val, info
