"""Post-filters for augmented text, and the small bag-of-words classifier they (and the toy pseudo-labels) use.

The augmentation surveys (Feng et al. 2021, "A Survey of Data Augmentation Approaches for NLP", arXiv
2105.03075; Chai et al. 2025, "Text Data Augmentation for Large Language Models: A Comprehensive Survey of
Methods, Challenges, and Opportunities", arXiv 2501.18845) filter augmented examples with a classifier trained on
the originals:

- **consistency**: keep an augmented copy only when the classifier predicts the original's label for it;
- **confidence**: keep it only when the classifier's probability of the original's label is >= ``threshold``.

:class:`BowClassifier` is that classifier when no model is given: multinomial logistic regression on
log(1 + count) bag-of-words features (vocabulary: words, normalised as in :mod:`kiln.corpus.augment.eda`, seen
``min_count`` times in the texts it is built from), fitted by L-BFGS (scipy) to convergence, so it is
deterministic. ``fit(..., init=other)`` *fine-tunes*: the L2 penalty pulls the weights toward ``other``'s instead
of toward zero (a Gaussian prior centred on the previous solution), which is what "train on pseudo-labels, then
fine-tune on the labels" means for a convex model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from kiln.corpus.augment.eda import norm, words_of

FilterMode = Literal["none", "consistency", "confidence"]


class TextClassifier(Protocol):
    classes: list[str]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


# ----------------------------------------------------------------------------- the filters


def label_index(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    known = {c: i for i, c in enumerate(classes)}
    missing = sorted({str(lab) for lab in labels} - set(known))
    if missing:
        raise ValueError(f"labels {missing} are not among the classifier's classes {list(classes)}")
    return np.array([known[str(lab)] for lab in labels], dtype=np.int64)


def consistency_mask(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where the predicted class (argmax) equals the original's label."""
    return probs.argmax(1) == labels


def confidence_mask(probs: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """True where the probability of the original's label is at least ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
    return probs[np.arange(len(labels)), labels] >= threshold


def filter_augmented(texts: Sequence[str], labels: Sequence[str], classifier: TextClassifier, mode: FilterMode,
                     threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(keep mask, probability of the label)`` of augmented ``texts`` whose originals carry ``labels``."""
    if len(texts) != len(labels):
        raise ValueError(f"filter_augmented: {len(texts)} texts but {len(labels)} labels")
    if not len(texts):
        return np.zeros(0, dtype=bool), np.zeros(0)
    y = label_index(labels, classifier.classes)
    probs = classifier.predict_proba(texts)
    p = probs[np.arange(len(y)), y]
    if mode == "none":
        return np.ones(len(y), dtype=bool), p
    if mode == "consistency":
        return consistency_mask(probs, y), p
    if mode == "confidence":
        return confidence_mask(probs, y, threshold), p
    raise ValueError(f"unknown filter mode {mode!r}; modes: none, consistency, confidence")


# ----------------------------------------------------------------------------- a bag-of-words classifier


@dataclass
class BowFeatures:
    """A word vocabulary and the log(1 + count) features of texts over it (a scipy CSR matrix)."""

    vocab: dict[str, int]

    @classmethod
    def build(cls, texts: Sequence[str], min_count: int = 1, max_vocab: int = 50_000) -> BowFeatures:
        counts = Counter(w for t in texts for w in (norm(x) for x in words_of(t)) if w)
        ranked = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda kv: (-kv[1], kv[0]))
        return cls({w: i for i, (w, _) in enumerate(ranked[:max_vocab])})

    def transform(self, texts: Sequence[str]):
        from scipy import sparse

        rows, cols, vals = [], [], []
        for r, t in enumerate(texts):
            c = Counter(self.vocab[k] for k in (norm(x) for x in words_of(t)) if k in self.vocab)
            for j, v in sorted(c.items()):
                rows.append(r)
                cols.append(j)
                vals.append(np.log1p(v))
        return sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(self.vocab)), dtype=np.float64)


@dataclass
class BowClassifier:
    """Multinomial logistic regression on :class:`BowFeatures` (see the module docstring)."""

    features: BowFeatures
    classes: list[str]
    weights: np.ndarray  # (V + 1, C): the last row is the bias

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], *, features: BowFeatures | None = None,
            classes: Sequence[str] | None = None, l2: float = 1.0, init: BowClassifier | None = None,
            sample_weight: np.ndarray | None = None, max_iter: int = 500) -> BowClassifier:
        """Fit to ``labels``; ``l2`` penalises the distance to ``init``'s weights (zero without ``init``).
        The loss is the (weighted) mean cross-entropy plus ``l2 / (2 n) * ||W - W0||^2`` (bias unpenalised)."""
        from scipy.optimize import minimize

        if len(texts) != len(labels) or not len(texts):
            raise ValueError(f"BowClassifier.fit: {len(texts)} texts and {len(labels)} labels (need equal, > 0)")
        if init is not None:
            features, classes = init.features, init.classes
        features = features or BowFeatures.build(texts)
        classes = list(classes) if classes is not None else sorted({str(x) for x in labels})
        y = label_index(labels, classes)
        x = features.transform(texts)
        n, v, c = x.shape[0], x.shape[1], len(classes)
        w0 = init.weights.copy() if init is not None else np.zeros((v + 1, c))
        sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        sw = sw / sw.sum()
        onehot = np.zeros((n, c))
        onehot[np.arange(n), y] = 1.0
        reg = l2 / n

        def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
            w = flat.reshape(v + 1, c)
            z = x @ w[:v] + w[v]
            z -= z.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            d = w[:v] - w0[:v]
            f = -float((sw * (onehot * logp).sum(1)).sum()) + 0.5 * reg * float((d * d).sum())
            g_z = (np.exp(logp) - onehot) * sw[:, None]
            grad = np.vstack([x.T @ g_z + reg * d, g_z.sum(0, keepdims=True)])
            return f, grad.ravel()

        res = minimize(loss, w0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
        return cls(features, classes, res.x.reshape(v + 1, c))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        x = self.features.transform(texts)
        v = x.shape[1]
        z = x @ self.weights[:v] + self.weights[v]
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(texts).argmax(1)]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        return float(np.mean([p == str(y) for p, y in zip(self.predict(texts), labels, strict=True)]))
