"""``plant``: turn a clean corpus into a mixed pool with known junk and toxic documents.

The pool of the A Pretrainer's Guide study (Longpre et al. 2023, as kiln reproduces it at CPU scale): the
Guide filters a web crawl for quality and toxicity; kiln's built-in corpora are clean, so this step plants
what those filters are meant to find, and records where it did so:

- junk: ``round(junk_fraction * n)`` garbled documents (:mod:`kiln.corpus.junk`: character soup, repeated
  lines, symbol spam, digit tables, a looping phrase, word salad), the kinds taken in turn from
  ``junk_kinds``; word-based kinds draw from the corpus's own words (its first ``vocab_words`` word tokens,
  so with their frequencies). Ids ``plant/junk/<kind>/<n>``, ``source`` = ``junk_source``; each is placed
  at a position drawn from its id, so the pool interleaves them;
- toxic: the ``round(toxic_fraction * m)`` documents (of the ``m`` eligible: ``apply_to`` sources, at
  least one word) with the lowest ``sha256("{seed}:plant:toxic:{id}")`` draw (salted, so not the documents
  the train/val split draw ``sha256("{seed}:{id}")`` puts in validation) get ``max(1, round(toxic_rate * words))``
  words of the bad-word list (``words_file``, default kiln's ``badwords_en``) inserted after random words.
  Ids, sources and metadata stay, so the train/val split and the task suite's held-out rule are unchanged.

Every output document gets ``field`` (default ``planted``): None, ``"junk:<kind>"`` or ``"toxic"``. The
funnel row counts the toxic documents as changed (docs_out - docs_in = junk added); ``plant.json`` in the
corpus folder records the counts per kind and the ids of the planted documents. The step is a function
of its input and ``seed`` only (not of its position among the steps). Put it after deduplication.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

from pydantic import Field

from kiln.atomic import write_json
from kiln.corpus.artifacts import stage_dir
from kiln.corpus.junk import GARBLED_KINDS, garbled
from kiln.corpus.mix import draw
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport
from kiln.corpus.words import word_spans, words

JunkKind = Literal["soup", "repeated_lines", "symbols", "digits", "loop", "salad"]


class PlantParams(StepParams):
    step: Literal["plant"] = "plant"
    junk_fraction: float = Field(0.15, ge=0.0, le=10.0, description="junk documents added, per input document")
    junk_kinds: list[JunkKind] = Field(default_factory=lambda: list(GARBLED_KINDS), min_length=1,
                                       description="garbled kinds, used in turn")
    junk_source: str = Field("junk", min_length=1, description="`source` label of the junk documents")
    vocab_words: int = Field(200_000, ge=1, description="corpus word tokens the word-based junk draws from")
    toxic_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of eligible documents made toxic")
    toxic_rate: float = Field(0.03, gt=0.0, le=1.0, description="bad words inserted per word of a toxic document")
    words_file: str | None = Field(None, description="bad words, one per line; default: kiln's list (badwords_en)")
    apply_to: list[str] = Field(default_factory=list, description="sources eligible for toxic words; [] = all")
    field: str = Field("planted", min_length=1, description="metadata field naming what was planted")
    seed: int = 0


def corpus_words(docs: list[Doc], limit: int) -> list[str]:
    """The first ``limit`` word tokens (letters/digits) of ``docs``, in order: a frequency-weighted vocabulary."""
    out: list[str] = []
    for doc in docs:
        out.extend(w for w in words(doc["text"]) if w[0].isalnum())
        if len(out) >= limit:
            return out[:limit]
    return out


def insert_words(text: str, bad: list[str], rate: float, rng: random.Random) -> tuple[str, int]:
    """``text`` with ``max(1, round(rate * n_words))`` words of ``bad`` inserted after random words."""
    spans = [s for s in word_spans(text) if text[s[0]].isalnum()]
    if not spans:
        return text, 0
    k = max(1, round(rate * len(spans)))
    after = sorted(rng.choices(range(len(spans)), k=k))
    pieces, pos = [], 0
    for i in after:
        end = spans[i][1]
        pieces += [text[pos:end], " " + rng.choice(bad)]
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces), k


def _bad_words(params: PlantParams, ctx: StepContext) -> list[str]:
    from kiln.corpus.assets import read_word_list, resolve

    path = ctx.resolve(params.words_file) if params.words_file else resolve("badwords_en", ctx.cache_dir)
    listed = sorted(w for w in read_word_list(path) if words(w) == [w])  # single words only
    if not listed:
        raise ValueError(f"plant: no single-word entries in the bad-word list {path}")
    return listed


def run_plant(docs: list[Doc], params: PlantParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    bad = _bad_words(params, ctx)
    eligible = [i for i, d in enumerate(docs) if (not params.apply_to or d.get("source") in params.apply_to)
                and any(c.isalnum() for c in d["text"])]
    n_toxic = round(params.toxic_fraction * len(eligible))
    toxic = set(sorted(eligible, key=lambda i: (draw(f"plant:toxic:{docs[i]['id']}", params.seed), i))[:n_toxic])
    out: list[Doc] = []
    inserted = 0
    for i, doc in enumerate(docs):
        if i in toxic:
            rng = random.Random(f"{params.seed}:toxic:{doc['id']}")
            text, k = insert_words(doc["text"], bad, params.toxic_rate, rng)
            inserted += k
            doc = ctx.change(rep, doc, text, f"planted {k} toxic words")
            out.append({**doc, params.field: "toxic"})
        else:
            out.append({**doc, params.field: None})

    n_junk = round(params.junk_fraction * len(docs))
    vocab = corpus_words(docs, params.vocab_words) if n_junk else []
    if n_junk and not vocab:
        raise ValueError("plant: junk_fraction > 0 needs documents with words to draw word-based junk from")
    junk: list[tuple[float, Doc]] = []
    taken = {str(d["id"]) for d in docs} if n_junk else set()
    kinds: Counter[str] = Counter()
    for j in range(n_junk):
        kind = params.junk_kinds[j % len(params.junk_kinds)]
        doc_id = f"plant/junk/{kind}/{j}"
        if doc_id in taken:
            raise ValueError(f"plant: the corpus already has a document '{doc_id}' (is `plant` listed twice?)")
        text = garbled(kind, random.Random(f"{params.seed}:{doc_id}"), vocab)
        doc = {"id": doc_id, "text": text, "source": params.junk_source, params.field: f"junk:{kind}"}
        junk.append((draw(f"plant:position:{doc_id}", params.seed) * len(docs), doc))
        kinds[kind] += 1
        rep.example(doc, f"planted junk: {kind}")
    merged = _interleave(out, sorted(junk, key=lambda x: (x[0], x[1]["id"])))
    rep.docs_out = len(merged)
    out_dir = stage_dir(ctx)
    if out_dir is not None:
        record = {"seed": params.seed, "docs_in": len(docs), "junk": dict(sorted(kinds.items())),
                  "toxic_docs": len(toxic), "toxic_words": inserted, "field": params.field,
                  "toxic_ids": [str(docs[i]["id"]) for i in sorted(toxic)], "junk_ids": [d["id"] for _, d in junk]}
        write_json(out_dir / "plant.json", record)
    return merged, rep


def _interleave(docs: list[Doc], junk: list[tuple[float, Doc]]) -> list[Doc]:
    """``docs`` in order with each junk document placed before input position ``ceil(pos)``."""
    out: list[Doc] = []
    k = 0
    for i, doc in enumerate(docs):
        while k < len(junk) and junk[k][0] <= i:
            out.append(junk[k][1])
            k += 1
        out.append(doc)
    out.extend(d for _, d in junk[k:])
    return out


STEPS = [StepDef(PlantParams, run_plant)]
