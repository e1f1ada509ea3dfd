"""PreSelect: keep the documents whose loss predicts downstream ability.

Shum, Huang, Zhu, Zhang, He et al. 2025, "Predictive Data Selection: The Data That Predicts Is the Data That
Teaches" (arXiv 2503.00808; reference code hkust-nlp/PreSelect). A document is *predictive* when the ranking of
several reference models by their loss on it matches their ranking by a downstream score; such documents are
the ones a model learns abilities from. Steps, as kiln runs them (the ``preselect`` scorer step):

1. **Reference losses.** A seeded sample of the documents (``sample_docs``; all by default; the paper: ~900K)
   is scored by every reference model in bits per byte (:meth:`kiln.corpus.learned.refmodel.ReferenceModel.
   bits_per_byte`; the paper's BPC, and the same ranking within a document as summed token loss). References are
   kiln checkpoints (different sizes, or steps of one run) with a downstream score given directly (``score``) or
   read from their eval's ``metrics.json`` at a metric path (``rank_by``, e.g. ``tasks/shakespeare-cloze/acc``).
2. **Predictive strength** (:func:`predictive_strength`): over every pair of references with different
   downstream scores, the share of pairs in which the better model has the strictly lower loss on the document
   (the paper counts pairs, 15 for 6 models, and normalises to a fraction; kiln reports the fraction). A pair
   whose downstream scores tie orders nothing and is not counted; a document with no loss (no bytes) gets none.
3. **Labels** (:func:`choose_labels`): positives = the documents of perfect strength (``positive_min``, 1.0);
   negatives = as many of the other documents, lowest strength first (the released ``train_fasttext.py`` takes
   them from a sorted score list whose definition is missing; lowest-first is its evident intent). Ties in
   strength are broken by a seeded hash of the document id. Fewer positives than ``min_positives`` is an error
   that gives the counts; fewer non-positive documents than positives gives fewer negatives (logged).
4. **Classifier**: fastText (``__label__pos`` / ``__label__neg``, text lowercased with whitespace collapsed;
   epoch 3, lr 0.1, word bigrams as in the paper) via :mod:`kiln.corpus.learned.fasttext_filter`, single-threaded
   and seeded, saved as ``model_file`` in the corpus stage folder. Every document's score is P(positive). With
   ``cross_fit: K`` a document is scored by a classifier trained without its fold, and the held-out AUC of
   positives vs negatives is reported; the default (0) scores with the one classifier, as the paper does.
5. **Threshold** (not here): ``{step: select, field: preselect, keep_fraction: 0.1}`` keeps the highest scores
   holding 10% of the characters (``find_threshold.py``; :mod:`kiln.corpus.scoring.select`).

Artifacts in the corpus stage folder (when the pipeline gives one): ``<label>.json`` (references with their
scores and mean bits per byte, pair count, sample size, label counts, the strength histogram, held-out AUC) and
``<label>_strength.jsonl`` (per sampled document: id, bits per byte under each reference, strength, label).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.corpus.selection.preselect_steps import PreSelectParams, PreSelectReference
from kiln.corpus.steps.base import Doc, StepContext
from kiln.metric_path import metric_value

__all__ = ["LabelChoice", "choose_labels", "fit_preselect", "predictive_strength", "reference_losses",
           "reference_quality", "sample_documents"]


def predictive_strength(losses: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Per document (column of ``losses``, shape (models, docs)): the share of reference pairs with different
    ``quality`` (higher = better) in which the better model has the strictly lower loss; NaN if any loss is NaN."""
    losses = np.asarray(losses, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64).reshape(-1)
    if losses.ndim != 2 or losses.shape[0] != len(quality):
        raise ValueError(f"losses must have shape (models, docs) with {len(quality)} models, got {losses.shape}")
    if len(quality) < 2:
        raise ValueError(f"predictive strength needs at least 2 reference models, got {len(quality)}")
    if not np.all(np.isfinite(quality)):
        raise ValueError(f"reference downstream scores must be finite numbers, got {quality.tolist()}")
    pairs = [(i, j) if quality[i] > quality[j] else (j, i)
             for i in range(len(quality)) for j in range(i + 1, len(quality)) if quality[i] != quality[j]]
    if not pairs:
        raise ValueError(f"every reference has the same downstream score {quality[0]:g}: no pair of models is "
                         "ordered, so no document can be predictive")
    better = np.array([b for b, _ in pairs])
    worse = np.array([w for _, w in pairs])
    agree = (losses[better] < losses[worse]).sum(axis=0)
    out = agree / len(pairs)
    out[~np.all(np.isfinite(losses), axis=0)] = np.nan
    return out


@dataclass
class LabelChoice:
    """Indices (into the sampled documents) of the positives and negatives, and what limited them."""

    positive: np.ndarray
    negative: np.ndarray
    note: str | None = None


def _draws(ids: list[str], tag: str, seed: int) -> np.ndarray:
    from kiln.corpus.mix import draw

    return np.array([draw(f"{tag}:{i}", seed) for i in ids], dtype=np.float64)


def choose_labels(strength: np.ndarray, ids: list[str], positive_min: float = 1.0, min_positives: int = 1,
                  seed: int = 0) -> LabelChoice:
    """Positives: strength >= ``positive_min``; negatives: as many others, lowest strength first (seeded ties)."""
    strength = np.asarray(strength, dtype=np.float64)
    finite = np.isfinite(strength)
    is_pos = finite & (strength >= positive_min - 1e-12)
    pos = np.flatnonzero(is_pos)
    rest = np.flatnonzero(finite & ~is_pos)
    if len(pos) < min_positives:
        raise ValueError(f"preselect: only {len(pos)} of {int(finite.sum())} scored documents have predictive "
                         f"strength >= {positive_min:g} (min_positives: {min_positives}); sample more documents "
                         "(sample_docs), use references that differ more, or lower positive_min / min_positives")
    if len(rest) == 0:
        raise ValueError(f"preselect: all {len(pos)} scored documents have predictive strength >= {positive_min:g}, "
                         "so there are no negatives to train the classifier on; sample more documents or use "
                         "more references")
    tie = _draws([ids[i] for i in rest], "preselect-negative", seed)
    order = rest[np.lexsort((tie, strength[rest]))]
    neg = np.sort(order[: len(pos)])
    note = None
    if len(rest) < len(pos):
        note = f"{len(pos)} positives but only {len(rest)} other documents: {len(rest)} negatives"
    return LabelChoice(pos, neg, note)


def sample_documents(docs: list[Doc], n: int | None, seed: int) -> list[Doc]:
    """The ``n`` documents with the lowest seeded hash of their id (all when ``n`` is None), in corpus order."""
    if n is None or n >= len(docs):
        return list(docs)
    keys = _draws([str(d["id"]) for d in docs], "preselect-sample", seed)
    chosen = np.sort(np.argsort(keys, kind="stable")[:n])
    return [docs[i] for i in chosen]


# ---------------------------------------------------------------------------------------------- references


def _locate(ref: PreSelectReference, index: int, ctx: StepContext) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a reference; a missing one is an error naming it and the path."""
    from kiln.corpus.learned.refmodel import ReferenceModelError, resolve_checkpoint, resolve_tokenizer

    try:
        ckpt = resolve_checkpoint(ctx.resolve(ref.checkpoint))
        tok = resolve_tokenizer(ckpt, ctx.resolve(ref.tokenizer) if ref.tokenizer else None)
    except ReferenceModelError as exc:
        raise ReferenceModelError(f"preselect references[{index}] ({ref.checkpoint}): {exc}") from None
    return ckpt, tok


def find_eval_metrics(path: Path) -> Path | None:
    """A reference's default metrics file: ``eval/metrics.json`` in ``path`` or the nearest folder above it."""
    for folder in (path, *Path(path).resolve().parents):
        candidate = folder / "eval" / "metrics.json"
        if candidate.is_file():
            return candidate
    return None


def _eval_metrics_file(ckpt: Path) -> Path:
    found = find_eval_metrics(ckpt)
    if found is not None:
        return found
    raise FileNotFoundError(f"no eval/metrics.json in {ckpt} or any folder above it (run `kiln eval` on the "
                            "reference's run, or give the reference a `score` or a `metrics` file)")


def _numbers(metrics: Any, prefix: str = "") -> list[str]:
    """Every path to a number in ``metrics`` (for error messages)."""
    if not isinstance(metrics, dict):
        return []
    out: list[str] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(f"{prefix}{key}")
    return out


def _metric(ref: PreSelectReference, index: int, ckpt: Path, rank_by: str, ctx: StepContext) -> float:
    where = f"preselect references[{index}] ({ref.checkpoint})"
    try:
        file = ctx.resolve(ref.metrics) if ref.metrics else _eval_metrics_file(ckpt)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{where}: {exc}") from None
    if not file.is_file():
        raise FileNotFoundError(f"{where}: metrics file {file} not found")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: {file} is not readable JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{where}: {file} must hold a JSON object of metrics")
    value = metric_value(metrics, rank_by)
    if value is None:
        known = _numbers(metrics)
        raise ValueError(f"{where}: {file} has no number at rank_by '{rank_by}' (metric paths there: "
                         f"{', '.join(known[:30]) or 'none'})")
    scored = str(metrics.get("checkpoint") or "")
    evaluated = Path(scored).name
    if not ref.metrics and ckpt.name.startswith("step-") and evaluated.startswith("step-") and evaluated != ckpt.name:
        raise ValueError(f"{where}: the reference is checkpoint {ckpt.name} but {file} scores {evaluated}; give "
                         "this reference its own `score` or `metrics` file")
    return value


def reference_quality(params: PreSelectParams, ctx: StepContext) -> tuple[np.ndarray, list[Path], list[Path]]:
    """(downstream quality, higher = better; model folders; tokenizer folders) of the references, checked before
    any model loads: a missing checkpoint, tokenizer, metrics file or metric is an error naming it."""
    quality, ckpts, toks = [], [], []
    for i, ref in enumerate(params.references):
        ckpt, tok = _locate(ref, i, ctx)
        ckpts.append(ckpt)
        toks.append(tok)
        value = ref.score if ref.score is not None else _metric(ref, i, ckpt, params.rank_by or "", ctx)
        if not math.isfinite(value):
            raise ValueError(f"preselect references[{i}] ({ref.checkpoint}): downstream score {value} is not finite")
        quality.append(value if params.higher_is_better else -value)
    return np.array(quality, dtype=np.float64), ckpts, toks


def reference_losses(texts: list[str], ckpts: list[Path], toks: list[Path], params: PreSelectParams) -> np.ndarray:
    """Bits per byte of every text under every reference, shape (models, texts); one model in memory at a time."""
    import torch

    from kiln.corpus.learned.refmodel import ReferenceModel
    from kiln.progress import log

    out = np.zeros((len(ckpts), len(texts)))
    before = torch.get_num_threads()
    if params.threads:
        torch.set_num_threads(params.threads)
    try:
        for m, (ckpt, tok) in enumerate(zip(ckpts, toks, strict=True)):
            ref = ReferenceModel.load(ckpt, tok)
            out[m] = ref.bits_per_byte(texts, params.max_tokens, params.batch_size)
            log(f"preselect: reference {m + 1}/{len(ckpts)} ({ckpt}): mean {np.nanmean(out[m]):.4f} bits/byte "
                f"over {len(texts)} documents")
            del ref
    finally:
        torch.set_num_threads(before)
    return out


# ---------------------------------------------------------------------------------------------- the fit


@dataclass
class PreSelectFit:
    """What ``setup`` returns: the classifier(s) that score documents, and the summary written as an artifact."""

    classifiers: Any
    summary: dict[str, Any] = field(default_factory=dict)

    def score(self, docs: list[Doc]) -> np.ndarray:
        return self.classifiers.score(docs)


def train_labelled(texts: list[str], labels: np.ndarray, ids: list[str], params: PreSelectParams,
                   save_to: Path | None) -> Any:
    """fastText on texts labelled 1 (positive) / 0 (negative): a :class:`Classifiers` (cross-fitted if asked)."""
    from kiln.corpus.learned.fasttext_filter import Classifiers, folds_of, train_classifier

    pos = [t for t, y in zip(texts, labels, strict=True) if y == 1]
    neg = [t for t, y in zip(texts, labels, strict=True) if y == 0]
    full = train_classifier(pos, neg, params, save_to) if save_to is not None or params.cross_fit < 2 else None
    folds = []
    if params.cross_fit >= 2:
        fold = folds_of([{"id": i} for i in ids], params.cross_fit, params.seed)
        for f in range(params.cross_fit):
            keep = fold != f
            try:
                folds.append(train_classifier([t for t, y, k in zip(texts, labels, keep, strict=True) if k and y == 1],
                                              [t for t, y, k in zip(texts, labels, keep, strict=True) if k and y == 0],
                                              params))
            except ValueError as exc:
                raise ValueError(f"preselect cross-fit fold {f + 1}/{params.cross_fit}: {exc}; sample more "
                                 "documents or lower cross_fit") from None
    return Classifiers(full, folds, params.cross_fit, params.seed, params.max_chars)


def fit_preselect(docs: list[Doc], params: PreSelectParams, ctx: StepContext) -> PreSelectFit:
    """Reference losses on a sample, predictive strength, labels, the classifier (see the module docstring)."""
    from kiln.corpus.artifacts import stage_dir
    from kiln.corpus.scoring.rules import roc_auc
    from kiln.progress import log

    quality, ckpts, toks = reference_quality(params, ctx)
    targets = [d for d in docs if not params.apply_to or d.get("source") in params.apply_to]
    sample = sample_documents(targets, params.sample_docs, params.seed)
    ids = [str(d["id"]) for d in sample]
    losses = reference_losses([d["text"] for d in sample], ckpts, toks, params)
    strength = predictive_strength(losses, quality)
    labels = choose_labels(strength, ids, params.positive_min, params.min_positives, params.seed)
    if labels.note:
        log(f"preselect: {labels.note}")
    chosen = np.concatenate([labels.positive, labels.negative])
    y = np.concatenate([np.ones(len(labels.positive), dtype=np.int64), np.zeros(len(labels.negative), dtype=np.int64)])
    out_dir = stage_dir(ctx)
    classifiers = train_labelled([sample[i]["text"] for i in chosen], y, [ids[i] for i in chosen], params,
                                 out_dir / params.model_file if out_dir is not None else None)
    n_pairs = sum(quality[i] != quality[j] for i in range(len(quality)) for j in range(i + 1, len(quality)))
    finite = strength[np.isfinite(strength)]
    values, counts = np.unique(np.round(finite, 6), return_counts=True)
    summary: dict[str, Any] = {
        "references": [{"checkpoint": str(c), "score": float(q if params.higher_is_better else -q),
                        "mean_bpb": float(np.nanmean(row))
                        if np.isfinite(row).any() else None}
                       for c, q, row in zip(ckpts, quality, losses, strict=True)],
        "higher_is_better": params.higher_is_better, "pairs": int(n_pairs), "sampled": len(sample),
        "no_loss": int(len(strength) - len(finite)), "positives": int(len(labels.positive)),
        "negatives": int(len(labels.negative)), "note": labels.note,
        "strength_histogram": {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)},
        "model_file": str(out_dir / params.model_file) if out_dir is not None else None,
    }
    if params.cross_fit >= 2:
        held = classifiers.score([sample[i] for i in chosen])
        summary["heldout_auc"] = roc_auc(held[y == 1], held[y == 0])
    log(f"preselect: {len(sample)} documents, {n_pairs} model pairs; {len(labels.positive)} positives, "
        f"{len(labels.negative)} negatives" + (f"; held-out AUC {summary['heldout_auc']:.3f}"
                                              if "heldout_auc" in summary else ""))
    if out_dir is not None:
        _write_artifacts(out_dir, params.label, summary, sample, losses, strength, labels)
    return PreSelectFit(classifiers, summary)


def _write_artifacts(out_dir: Path, label: str, summary: dict[str, Any], sample: list[Doc], losses: np.ndarray,
                     strength: np.ndarray, labels: LabelChoice) -> None:
    from kiln import atomic

    atomic.write_json(out_dir / f"{label}.json", summary)
    tag = np.full(len(sample), -1)
    tag[labels.positive] = 1
    tag[labels.negative] = 0
    rows = []
    for i, d in enumerate(sample):
        bpb = [None if not np.isfinite(v) else round(float(v), 6) for v in losses[:, i]]
        rows.append(json.dumps({"id": str(d["id"]), "bpb": bpb,
                                "strength": None if not np.isfinite(strength[i]) else float(strength[i]),
                                "label": None if tag[i] < 0 else int(tag[i])}))
    atomic.write_text(out_dir / f"{label}_strength.jsonl", "\n".join(rows) + "\n")
