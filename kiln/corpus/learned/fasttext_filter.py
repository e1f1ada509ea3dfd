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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.corpus.artifacts import stage_dir
from kiln.corpus.learned.params import DocSelector, FastTextQualityParams
from kiln.corpus.scoring.rules import apply_keep, keep_threshold, keep_top_fraction
from kiln.corpus.steps.base import Doc, StepContext, StepReport

POS, NEG = "__label__pos", "__label__neg"
_WS = re.compile(r"\s+")
__all__ = ["Classifiers", "DocSelector", "FastTextQualityParams", "fasttext_text", "fit_classifiers", "folds_of",
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


@dataclass
class Classifiers:
    """The fitted classifiers of a step: one on every selected document (``full``) and, when cross-fitting,
    one per fold trained without that fold's documents (``folds``)."""

    full: Any
    folds: list[Any]
    k: int
    seed: int
    max_chars: int

    def score(self, docs: list[Doc]) -> np.ndarray:
        """P(positive) of ``docs``: each from its fold's classifier when cross-fitting, else from ``full``."""
        texts = [d["text"] for d in docs]
        if not self.folds:
            return score_texts(self.full, texts, self.max_chars)
        fold = folds_of(docs, self.k, self.seed)
        out = np.zeros(len(docs))
        for f in sorted(set(fold.tolist())):
            idx = np.flatnonzero(fold == f)
            out[idx] = score_texts(self.folds[f], [texts[i] for i in idx], self.max_chars)
        return out


def fit_classifiers(docs: list[Doc], params: Any, ctx: StepContext) -> Classifiers:
    """Train on the classes ``params.positive`` / ``params.negative`` select among ``docs`` (or from files).

    ``model_file`` in the stage folder always gets the all-documents classifier."""
    positive = [x for sel in params.positive for x in gather_labelled(sel, docs, ctx)]
    negative = [x for sel in params.negative for x in gather_labelled(sel, docs, ctx)]
    out_dir = stage_dir(ctx)
    cross_fit = params.cross_fit >= 2 and any(i is not None for _, i in positive + negative)
    full = None
    if out_dir is not None or not cross_fit:  # the all-documents classifier: model_file, or the in-sample scorer
        full = train_classifier([t for t, _ in positive], [t for t, _ in negative], params,
                                out_dir / params.model_file if out_dir else None)
    folds = []
    if cross_fit:
        k = params.cross_fit
        fold = folds_of(docs, k, params.seed)
        for f in range(k):
            try:
                folds.append(train_classifier([t for t, i in positive if i is None or fold[i] != f],
                                              [t for t, i in negative if i is None or fold[i] != f], params))
            except ValueError as exc:
                raise ValueError(f"{params.step} cross-fit fold {f + 1}/{k}: {exc}; select more documents or "
                                 "lower cross_fit") from None
    return Classifiers(full, folds, params.cross_fit, params.seed, params.max_chars)


def run(docs: list[Doc], params: FastTextQualityParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Train on the named classes, score the documents in ``apply_to`` and keep them by the rule."""
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    targets = [i for i, d in enumerate(docs) if not params.apply_to or d.get("source") in params.apply_to]
    scores = fit_classifiers(docs, params, ctx).score([docs[i] for i in targets])
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
