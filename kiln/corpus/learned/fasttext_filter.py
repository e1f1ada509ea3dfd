"""fastText quality classifier (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification").

A linear bag-of-words/n-grams classifier is trained to tell *positive* documents (the kind to keep)
from *negative* ones, then every document is scored with P(positive) and kept by a ``threshold`` or a
``keep_fraction`` of the highest scores. This is the quality filter of GPT-3/Llama-style pipelines
and of A Pretrainer's Guide (Longpre et al. 2023), which also evaluates the ``inverse`` filter (keep
what the classifier rejects). The two classes are named in the recipe by selectors: a source label
and/or metadata values within the corpus being built, or an external jsonl/txt file. The trained
model is written to the corpus stage folder (``model_file``) so a run can be audited or re-scored.

Text given to fastText: lowercased, whitespace (newlines included) collapsed to single spaces, cut to
``max_chars`` characters. Training uses one thread and a fixed seed, so it is deterministic.

Cross-fitting (``cross_fit: K``, default 5): when the classes are selected from the corpus being filtered,
a classifier would otherwise score its own training documents (near-certain, memorised scores). Every
document is assigned to one of K folds by a hash of its id (and ``seed``); the documents of fold k are
scored by a classifier trained on the selected documents of the other folds (external-file documents are
in every training set), so no document is scored by a model that saw it. ``cross_fit: 0`` trains one
classifier on everything and scores in-sample. ``model_file`` is always the classifier trained on all
selected documents (for re-scoring new text); with only external-file classes one classifier suffices.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kiln.corpus.artifacts import stage_dir
from kiln.corpus.learned.params import DocSelector, FastTextQualityParams
from kiln.corpus.learned.select import apply_keep, keep_threshold, keep_top_fraction
from kiln.corpus.steps.base import Doc, StepContext, StepReport

POS, NEG = "__label__pos", "__label__neg"
_WS = re.compile(r"\s+")
__all__ = ["DocSelector", "FastTextQualityParams", "cross_fit_scores", "fasttext_text", "folds_of",
           "gather_labelled", "gather_texts", "train_classifier", "score_texts", "run"]


def fasttext_text(text: str, max_chars: int) -> str:
    """The line fastText sees for a document: lowercased, whitespace collapsed, at most ``max_chars``."""
    return _WS.sub(" ", text[:max_chars].lower()).strip()


def _matches(doc: Doc, sel: DocSelector) -> bool:
    if sel.source is not None and doc.get("source") != sel.source:
        return False
    return all(doc.get(key) in allowed for key, allowed in sel.where.items())


def gather_texts(sel: DocSelector, docs: list[Doc], ctx: StepContext | None = None) -> list[str]:
    """Texts selected by ``sel``: from ``docs`` (corpus selectors) or read from its file (``ctx.resolve``d)."""
    return [text for text, _ in gather_labelled(sel, docs, ctx)]


def gather_labelled(sel: DocSelector, docs: list[Doc], ctx: StepContext | None = None) -> list[tuple[str, int | None]]:
    """``(text, index in docs)`` selected by ``sel``; the index is None for a document read from a file."""
    from kiln.corpus.sources import read_jsonl, read_txt

    found: list[tuple[str, int | None]]
    if sel.path is None:
        found = [(d["text"], i) for i, d in enumerate(docs) if _matches(d, sel)]
    else:
        path = ctx.resolve(sel.path) if ctx is not None else Path(sel.path).expanduser()
        reader = read_txt(str(path), "external") if path.is_dir() or path.suffix == ".txt" else \
            read_jsonl(str(path), "external", sel.text_field)
        found = [(d["text"], None) for d in reader]
    return found[: sel.max_docs] if sel.max_docs else found


def folds_of(docs: list[Doc], k: int, seed: int) -> np.ndarray:
    """The cross-fitting fold (0..k-1) of every document, from a hash of its id."""
    from kiln.corpus.clean import split_score

    return np.array([min(int(split_score(str(d["id"]), seed) * k), k - 1) for d in docs], dtype=np.int64)


def cross_fit_scores(docs: list[Doc], targets: list[int], positive: list[tuple[str, int | None]],
                     negative: list[tuple[str, int | None]], params: FastTextQualityParams) -> np.ndarray:
    """P(positive) of ``docs[targets]``, each from a classifier trained without the document's fold."""
    k = params.cross_fit
    fold = folds_of(docs, k, params.seed)
    scores = np.zeros(len(targets))
    for f in range(k):
        in_fold = [j for j, i in enumerate(targets) if fold[i] == f]
        if not in_fold:
            continue
        pos = [t for t, i in positive if i is None or fold[i] != f]
        neg = [t for t, i in negative if i is None or fold[i] != f]
        try:
            model = train_classifier(pos, neg, params)
        except ValueError as exc:
            raise ValueError(f"fasttext_quality cross-fit fold {f + 1}/{k}: {exc}; select more documents or "
                             "lower cross_fit") from None
        scores[in_fold] = score_texts(model, [docs[targets[j]]["text"] for j in in_fold], params.max_chars)
    return scores


def _fasttext() -> Any:
    try:
        import fasttext
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the fasttext_quality step needs fastText: pip install fasttext-numpy2 "
                          "(or fasttext / fasttext-wheel)") from exc
    return fasttext


def train_classifier(positive: list[str], negative: list[str], params: FastTextQualityParams,
                     save_to: Path | None = None) -> Any:
    """Train the supervised fastText model on the two text lists (single thread, seeded); save if asked."""
    pos = [t for t in (fasttext_text(x, params.max_chars) for x in positive) if t]
    neg = [t for t in (fasttext_text(x, params.max_chars) for x in negative) if t]
    if not pos or not neg:
        raise ValueError(f"fasttext_quality needs non-empty positive and negative sets (got {len(pos)} "
                         f"positive, {len(neg)} negative documents)")
    rng = np.random.default_rng(params.seed)
    lines = [f"{POS} {t}" for t in pos] + [f"{NEG} {t}" for t in neg]
    lines = [lines[i] for i in rng.permutation(len(lines))]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        model = _fasttext().train_supervised(
            input=str(train_file), epoch=params.epoch, lr=params.lr, dim=params.dim, wordNgrams=params.word_ngrams,
            minCount=params.min_count, bucket=params.bucket, thread=1, seed=params.seed, verbose=0, loss="softmax")
    if save_to is not None:
        model.save_model(str(save_to))
    return model


def score_texts(model: Any, texts: list[str], max_chars: int) -> np.ndarray:
    """P(positive) of every text under ``model``."""
    if not texts:
        return np.zeros(0)
    labels, probs = model.predict([fasttext_text(t, max_chars) for t in texts], k=2)
    out = np.zeros(len(texts))
    for i, (labs, ps) in enumerate(zip(labels, probs, strict=True)):
        out[i] = next((float(p) for lab, p in zip(labs, ps, strict=True) if lab == POS), 0.0)
    return np.clip(out, 0.0, 1.0)


def run(docs: list[Doc], params: FastTextQualityParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Train on the named classes, score the documents in ``apply_to`` and keep them by the rule."""
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    positive = [x for sel in params.positive for x in gather_labelled(sel, docs, ctx)]
    negative = [x for sel in params.negative for x in gather_labelled(sel, docs, ctx)]
    out_dir = stage_dir(ctx)
    targets = [i for i, d in enumerate(docs) if not params.apply_to or d.get("source") in params.apply_to]
    cross_fit = params.cross_fit >= 2 and any(i is not None for _, i in positive + negative)
    if out_dir is not None or not cross_fit:  # the all-documents classifier: model_file, or the in-sample scorer
        model = train_classifier([t for t, _ in positive], [t for t, _ in negative], params,
                                 out_dir / params.model_file if out_dir else None)
    if cross_fit:
        scores = cross_fit_scores(docs, targets, positive, negative, params)
    else:  # external-file classes (no scored document was trained on), or cross_fit: 0 (in-sample)
        scores = score_texts(model, [docs[i]["text"] for i in targets], params.max_chars)
    if params.threshold is not None:
        keep, rule = keep_threshold(scores, params.threshold), f"P(positive) < {params.threshold}"
    else:
        keep, rule = keep_top_fraction(scores, params.keep_fraction or 1.0), \
            f"not in the top {params.keep_fraction:.0%} by P(positive)"
    if params.inverse:
        keep, rule = ~keep, "inverse filter: " + rule.replace("<", ">=").replace("not in", "in")
    out = apply_keep(docs, targets, keep, scores, ctx, rep, params.score_field,
                     lambda score: f"{rule} (score {score:.3f})")
    return out, rep
