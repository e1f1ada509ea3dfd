"""The ``augment`` corpus step: add augmented copies of documents (EDA or LM sampling), optionally filtered.

A whole-corpus step (the synonym list and the filter classifier are built from every document). Each augmented
document (those of ``apply_to``, and, when ``label_field`` is set, only those with a label) is followed by its
kept copies, ids ``<id>#aug<k>`` (``k`` = copy number before filtering), with metadata ``augmented_from: <id>``
and ``augment_op`` (``sr`` / ``ri`` / ``rs`` / ``rd`` / ``lm``); the other metadata (the label included) is
copied. Nothing is removed (``docs_out`` = input documents + kept copies), and the funnel row's ``summary`` holds
copies made / kept per operation, the synonym-list size and the protected words. The synonym list is written to
``augment-synonyms.json`` in the corpus folder.

- ``method: eda`` (:mod:`kiln.corpus.augment.eda`, Wei & Zou 2019): ``n_aug`` copies, operation rates
  ``alpha_*`` (0 disables one), synonyms from the corpus (``syn_*``).
- ``method: lm`` (:mod:`kiln.corpus.augment.lm`): ``n_aug`` samples of a kiln ``checkpoint`` (``lm_mode``).
- Protected words (never changed by EDA, kept by an LM rewrite): ``protected`` plus, with ``label_field``, the
  ``label_top_k`` most label-indicative words of each label (log-odds ratio, :func:`~kiln.corpus.augment.eda.
  label_tokens`).
- ``filter``: ``consistency`` / ``confidence`` (:mod:`kiln.corpus.augment.filters`) with a bag-of-words
  logistic classifier fitted on the labelled documents; needs ``label_field``.

.. code-block:: yaml

    corpus:
      steps:
        - step: augment
          label_field: label
          n_aug: 4
          filter: consistency
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

from pydantic import Field, model_validator

from kiln.corpus.augment.eda import EdaConfig, build_synonyms, eda, label_tokens
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepError, StepParams, StepReport
from kiln.section import INPUT_MODEL, INPUT_TREE


class AugmentParams(StepParams):
    step: Literal["augment"] = "augment"
    method: Literal["eda", "lm"] = Field("eda", description="EDA word operations, or samples of a kiln checkpoint")
    n_aug: int = Field(4, ge=1, le=64, description="augmented copies per document (before filtering)")
    alpha_sr: float = Field(0.1, ge=0.0, le=1.0, description="EDA synonym replacement rate (0 = off)")
    alpha_ri: float = Field(0.1, ge=0.0, le=1.0, description="EDA random insertion rate (0 = off)")
    alpha_rs: float = Field(0.1, ge=0.0, le=1.0, description="EDA random swap rate (0 = off)")
    alpha_rd: float = Field(0.1, ge=0.0, le=1.0, description="EDA random deletion probability (0 = off)")
    syn_window: int = Field(2, ge=1, le=10, description="co-occurrence window of the synonym list (words)")
    syn_min_count: int = Field(5, ge=1, description="words seen fewer times get no synonyms")
    syn_max_vocab: int = Field(5000, ge=2, le=50_000, description="most frequent words given synonyms")
    syn_top_k: int = Field(5, ge=1, le=50, description="neighbours kept per word")
    syn_min_sim: float = Field(0.3, ge=0.0, le=1.0, description="least PPMI cosine for a neighbour")
    protected: list[str] = Field(default_factory=list, description="words augmentation never touches")
    label_field: str | None = Field(None, description="metadata column holding the label: only labelled "
                                                      "documents are augmented; enables label words and filters")
    label_top_k: int = Field(10, ge=0, le=1000, description="label-indicative words protected per label (0 = none)")
    filter: Literal["none", "consistency", "confidence"] = Field("none", description="post-filter of the copies")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="least label probability for filter: confidence")
    apply_to: list[str] | None = Field(None, description="sources to augment (default: all)")
    seed: int = Field(0, description="seeds every copy (per document id, independent of order)")
    checkpoint: str | None = Field(None, description="method lm: a kiln run dir, checkpoint folder or export",
                                   json_schema_extra=INPUT_MODEL)
    tokenizer: str | None = Field(None, description="method lm: tokenizer folder (default: the checkpoint run's)",
                                  json_schema_extra=INPUT_TREE)
    lm_mode: Literal["continue", "rewrite"] = Field("rewrite", description="method lm: extend or resample the end")
    keep_fraction: float = Field(0.5, ge=0.0, le=1.0, description="method lm rewrite: share of words kept")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="method lm: sampled tokens at most")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="method lm: sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="method lm: nucleus mass")

    @model_validator(mode="after")
    def _check(self) -> AugmentParams:
        if self.filter != "none" and self.label_field is None:
            raise ValueError(f"augment: filter: {self.filter} needs label_field (the metadata column of the label)")
        if self.method == "lm" and not self.checkpoint:
            raise ValueError("augment: method: lm needs checkpoint (a kiln run dir, checkpoint folder or export)")
        if self.method == "eda" and max(self.alpha_sr, self.alpha_ri, self.alpha_rs, self.alpha_rd) == 0:
            raise ValueError("augment: every EDA rate (alpha_sr, alpha_ri, alpha_rs, alpha_rd) is 0")
        return self


def _label(doc: Doc, field: str | None) -> str | None:
    if field is None:
        return None
    v = doc.get(field)
    return None if v is None else str(v)


def run(docs: list[Doc], params: AugmentParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    rep = StepReport(ctx.step or params.label, docs_in=len(docs))
    chosen = [i for i, d in enumerate(docs)
              if (params.apply_to is None or d.get("source") in params.apply_to)
              and (params.label_field is None or _label(d, params.label_field) is not None)]
    labelled = [i for i in chosen if _label(docs[i], params.label_field) is not None]
    protected = set(params.protected)
    if labelled and params.label_top_k > 0:
        texts, labels = [docs[i]["text"] for i in labelled], [_label(docs[i], params.label_field) for i in labelled]
        if len(set(labels)) >= 2:
            for words in label_tokens(texts, labels, top_k=params.label_top_k).values():
                protected.update(words)
    keys = [str(docs[i]["id"]) for i in chosen]
    made: list[list[tuple[str, str]]]
    n_syn = 0
    if params.method == "eda":
        cfg = EdaConfig(params.alpha_sr, params.alpha_ri, params.alpha_rs, params.alpha_rd, params.n_aug)
        syn = build_synonyms([d["text"] for d in docs], window=params.syn_window, min_count=params.syn_min_count,
                             max_vocab=params.syn_max_vocab, top_k=params.syn_top_k, min_sim=params.syn_min_sim,
                             exclude=protected)
        n_syn = len(syn)
        if ctx.out_dir is not None:
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            (ctx.out_dir / "augment-synonyms.json").write_text(json.dumps(syn.to_json(), sort_keys=True) + "\n")
        made = []
        for i, key in zip(chosen, keys, strict=True):
            made.append(_guarded(ctx, rep, docs[i], lambda d, key=key: eda(d["text"], cfg, syn, protected,
                                                                          params.seed, key)))
    else:
        made = _lm_copies(docs, chosen, keys, params, ctx, protected, rep)
    kept = _filtered(docs, chosen, made, params)
    by_doc = dict(zip(chosen, kept, strict=True))
    out: list[Doc] = []
    ops_made, ops_kept = Counter(), Counter()
    for copies in made:
        ops_made.update(op for op, _ in copies)
    for i, doc in enumerate(docs):
        out.append(doc)
        for k, op, text in by_doc.get(i, []):
            ops_kept[op] += 1
            out.append({**doc, "id": f"{doc['id']}#aug{k}", "text": text, "augmented_from": str(doc["id"]),
                        "augment_op": op})
    rep.docs_out = len(out)
    rep.summary = {  # type: ignore[attr-defined]
        "augmented_docs": len(chosen), "copies_made": sum(ops_made.values()), "copies_kept": sum(ops_kept.values()),
        "made_by_op": dict(sorted(ops_made.items())), "kept_by_op": dict(sorted(ops_kept.items())),
        "synonym_words": n_syn, "protected": sorted(protected)[:200], "filter": params.filter,
    }
    return out, rep


def _guarded(ctx: StepContext, rep: StepReport, doc: Doc, fn):
    """``fn(doc)`` under ``on_error``: ``stop`` raises :class:`StepError` naming the document; ``skip`` counts the
    error and the document gets no copies (it is kept: a failed augmentation removes nothing)."""
    try:
        return fn(doc)
    except Exception as exc:  # noqa: BLE001 - any failure on one document is subject to on_error
        if ctx.on_error == "stop":
            raise StepError(f"corpus step '{rep.step}' failed on document '{doc['id']}': {type(exc).__name__}: "
                            f"{exc} (set corpus.on_error: skip to skip such documents)") from exc
        ctx.errors[rep.step] = ctx.errors.get(rep.step, 0) + 1
        return []


def _lm_copies(docs: list[Doc], chosen: list[int], keys: list[str], params: AugmentParams, ctx: StepContext,
               protected: set[str], rep: StepReport) -> list[list[tuple[str, str]]]:
    from pathlib import Path

    from kiln.corpus.augment.lm import LmAugmentConfig, lm_augment
    from kiln.corpus.learned.refmodel import ReferenceModel

    assert params.checkpoint is not None  # the validator requires it
    ref = ReferenceModel.load(ctx.resolve(params.checkpoint),
                              Path(ctx.resolve(params.tokenizer)) if params.tokenizer else None)
    cfg = LmAugmentConfig(mode=params.lm_mode, n_aug=params.n_aug, keep_fraction=params.keep_fraction,
                          max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                          seed=params.seed)
    made = []
    for i, key in zip(chosen, keys, strict=True):
        res = _guarded(ctx, rep, docs[i], lambda d, key=key: lm_augment([d["text"]], [key], ref.model, ref.tokenizer,
                                                                        cfg, protected)[0])
        made.append([("lm", t) for t in res])
    return made


def _filtered(docs: list[Doc], chosen: list[int], made: list[list[tuple[str, str]]],
              params: AugmentParams) -> list[list[tuple[int, str, str]]]:
    """Per chosen document, its kept copies as ``(k, op, text)``."""
    all_copies = [[(k, op, text) for k, (op, text) in enumerate(copies)] for copies in made]
    if params.filter == "none":
        return all_copies
    from kiln.corpus.augment.filters import BowClassifier, filter_augmented

    lab_docs = [d for d in docs if _label(d, params.label_field) is not None]
    labels = [_label(d, params.label_field) for d in lab_docs]
    if len(set(labels)) < 2:
        raise ValueError(f"augment: filter: {params.filter} needs 2+ labels in column "
                         f"'{params.label_field}', found {sorted(set(labels))}")
    clf = BowClassifier.fit([d["text"] for d in lab_docs], labels)  # type: ignore[arg-type]
    flat = [(ci, c) for ci, copies in enumerate(all_copies) for c in copies]
    texts = [c[2] for _, c in flat]
    labs = [_label(docs[chosen[ci]], params.label_field) for ci, _ in flat]
    keep, _ = filter_augmented(texts, labs, clf, params.filter, params.threshold)  # type: ignore[arg-type]
    out: list[list[tuple[int, str, str]]] = [[] for _ in all_copies]
    for (ci, c), k in zip(flat, keep, strict=True):
        if k:
            out[ci].append(c)
    return out


def augment_labelled(texts: list[str], labels: list[str], pool: list[str], cfg: EdaConfig, *, protect_top_k: int = 10,
                     filter: str = "none", threshold: float = 0.5, seed: int = 0, syn_min_count: int = 5
                     ) -> tuple[list[str], list[str], dict]:
    """A labelled training set with EDA copies added (originals first, then the kept copies in order):
    synonyms built from ``pool`` (any texts, e.g. labelled + unlabelled), the ``protect_top_k`` most
    label-indicative words per label protected, copies filtered as the step does. Returns (texts, labels, info)."""
    protected: set[str] = set()
    if protect_top_k > 0 and len(set(labels)) >= 2:
        for words in label_tokens(texts, labels, top_k=protect_top_k).values():
            protected.update(words)
    syn = build_synonyms(pool, min_count=syn_min_count, exclude=protected)
    new = [(t, lab) for i, (text, lab) in enumerate(zip(texts, labels, strict=True))
           for _, t in eda(text, cfg, syn, protected, seed, f"{i}:{text[:64]}")]
    keep = [True] * len(new)
    if filter != "none" and new:
        from kiln.corpus.augment.filters import BowClassifier, filter_augmented

        clf = BowClassifier.fit(texts, labels)
        keep = filter_augmented([t for t, _ in new], [lab for _, lab in new], clf, filter, threshold)[0].tolist()
    kept = [c for c, k in zip(new, keep, strict=True) if k]
    info = {"copies_made": len(new), "copies_kept": len(kept), "synonym_words": len(syn),
            "protected": sorted(protected)}
    return texts + [t for t, _ in kept], labels + [lab for _, lab in kept], info


STEPS = [StepDef(params=AugmentParams, run=run)]
