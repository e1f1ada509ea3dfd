"""Pseudo-label training with few labels: fine-tune on labels -> label unlabeled data -> train on the
pseudo-labels -> fine-tune on the labels, compared with fine-tuning on the labels only.

"Predictions For Pre-training Language Models" (self-training in the pre-training and fine-tuning steps; the
spec reports +3.6% with few labels, +0.2% with many), and the classic self-training recipe (Yarowsky 1995; Lee
2013, "Pseudo-Label"). Steps of :func:`pseudo_label`:

1. **teacher**: fit on the labelled set (this is also the *labels only* baseline);
2. **pseudo-label**: predict the unlabelled set; keep an example when its top probability is at least
   ``threshold``; with ``balance`` keep the same number per class (the most confident of each, as many as the
   rarest class has), so a teacher's bias toward one class is not amplified; at most ``max_pseudo`` and at most
   ``top_fraction`` of the pool. (A briefly fine-tuned network head can rank well yet stay near uniform: then
   ``threshold: 0`` with a ``top_fraction`` selects by rank instead of by an absolute probability.);
3. **student**: fit on the pseudo-labelled set, starting from the initial model (not from the teacher);
4. **fine-tune** the student on the labelled set;
5. held-out accuracy of the teacher (labels only) and of the fine-tuned student.

``rounds > 1`` repeats 2-4 with the fine-tuned student as the next teacher. The spec's extra MLM loss during
step 3 is not included. Two learners:

- :class:`BowLearner`: multinomial logistic regression on bag-of-words features
  (:class:`kiln.corpus.augment.filters.BowClassifier`); fine-tuning = an L2 prior centred on the student.
  CPU-cheap: the toy check (100 labelled, 10k unlabelled) runs on it.
- :class:`KilnLearner`: a kiln checkpoint's backbone + a linear head on the pooled window features, trained
  with AdamW exactly as the downstream probe's fine-tuning (:mod:`kiln.eval.probe`), on probe-task windows;
  :func:`probe_pseudo_label` runs the pipeline on a probe task (``kiln.eval.probe_tasks``) with ``n_labels``
  labelled training documents and the rest of the task's training documents as the unlabelled pool.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class PseudoLabelConfig:
    threshold: float = 0.9
    balance: bool = True
    max_pseudo: int | None = None
    top_fraction: float | None = None
    rounds: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"PseudoLabelConfig.threshold must be in [0, 1], got {self.threshold}")
        if self.rounds < 1 or (self.max_pseudo is not None and self.max_pseudo < 1):
            raise ValueError("PseudoLabelConfig: rounds >= 1 and max_pseudo >= 1 (or None)")
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"PseudoLabelConfig.top_fraction must be in (0, 1], got {self.top_fraction}")


class Learner(Protocol):
    def fit(self, x: Any, y: np.ndarray, init: Any = None) -> Any: ...

    def proba(self, state: Any, x: Any) -> np.ndarray: ...

    def take(self, x: Any, idx: np.ndarray) -> Any: ...

    def size(self, x: Any) -> int: ...


def select_confident(probs: np.ndarray, threshold: float, balance: bool, max_pseudo: int | None,
                     top_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending) and pseudo-labels of the kept unlabelled examples (see the module docstring);
    ``top_fraction`` caps the kept share of the pool (the most confident), like ``max_pseudo`` caps the count."""
    conf, pred = probs.max(1), probs.argmax(1)
    if top_fraction is not None:
        cap = max(1, int(top_fraction * len(probs)))
        max_pseudo = cap if max_pseudo is None else min(max_pseudo, cap)
    ok = np.flatnonzero(conf >= threshold)
    if balance and len(ok):
        classes = range(probs.shape[1])
        per = [ok[pred[ok] == c] for c in classes]
        n = min(len(p) for p in per)
        if max_pseudo is not None:
            n = min(n, max_pseudo // probs.shape[1])
        ok = np.concatenate([p[np.argsort(-conf[p], kind="stable")[:n]] for p in per])
    elif max_pseudo is not None and len(ok) > max_pseudo:
        ok = ok[np.argsort(-conf[ok], kind="stable")[:max_pseudo]]
    ok = np.sort(ok)
    return ok, pred[ok]


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean()) if len(y) else float("nan")


def pseudo_label(learner: Learner, lab_x: Any, lab_y: np.ndarray, unl_x: Any, test_x: Any, test_y: np.ndarray,
                 cfg: PseudoLabelConfig, unl_y: np.ndarray | None = None) -> dict:
    """Run the pipeline; ``unl_y`` (the hidden labels of the pool, if known) only reports pseudo-label accuracy.
    Returns ``labels_only_acc``, ``pseudo_acc`` (after the last round), ``gain`` and per-round details."""
    teacher = learner.fit(lab_x, lab_y)
    labels_only = accuracy(learner.proba(teacher, test_x), test_y)
    rounds = []
    acc = labels_only
    for r in range(cfg.rounds):
        probs = learner.proba(teacher, unl_x)
        idx, pseudo = select_confident(probs, cfg.threshold, cfg.balance, cfg.max_pseudo, cfg.top_fraction)
        row: dict[str, Any] = {"round": r + 1, "n_pseudo": int(len(idx)), "n_unlabelled": learner.size(unl_x),
                               "pseudo_counts": np.bincount(pseudo, minlength=probs.shape[1]).tolist()}
        if unl_y is not None:
            row["pseudo_label_acc"] = float((pseudo == unl_y[idx]).mean()) if len(idx) else None
        if len(idx) == 0:
            row["skipped"] = "no unlabelled example reached the threshold"
            rounds.append(row)
            break
        student = learner.fit(learner.take(unl_x, idx), pseudo)
        student = learner.fit(lab_x, lab_y, init=student)
        acc = accuracy(learner.proba(student, test_x), test_y)
        row["acc"] = acc
        rounds.append(row)
        teacher = student
    return {"labels_only_acc": labels_only, "pseudo_acc": acc, "gain": acc - labels_only, "rounds": rounds,
            "n_labelled": learner.size(lab_x), "config": asdict(cfg)}


# ----------------------------------------------------------------------------- bag-of-words learner


@dataclass
class BowLearner:
    """Texts in, :class:`~kiln.corpus.augment.filters.BowClassifier` states; ``features`` built once (no labels)
    from every text the pipeline sees; ``l2``: the penalty (toward zero, or toward the student when
    fine-tuning)."""

    features: Any
    n_classes: int
    l2: float = 1.0
    finetune_l2: float | None = None

    @classmethod
    def for_texts(cls, texts: Sequence[str], n_classes: int, min_count: int = 2, **kw: Any) -> BowLearner:
        from kiln.corpus.augment.filters import BowFeatures

        return cls(BowFeatures.build(texts, min_count=min_count), n_classes, **kw)

    def fit(self, x: Sequence[str], y: np.ndarray, init: Any = None) -> Any:
        from kiln.corpus.augment.filters import BowClassifier

        classes = [str(c) for c in range(self.n_classes)]
        l2 = self.l2 if init is None or self.finetune_l2 is None else self.finetune_l2
        return BowClassifier.fit(list(x), [str(int(v)) for v in y], features=self.features, classes=classes, l2=l2,
                                 init=init)

    def proba(self, state: Any, x: Sequence[str]) -> np.ndarray:
        return state.predict_proba(list(x))

    def take(self, x: Sequence[str], idx: np.ndarray) -> list[str]:
        return [x[int(i)] for i in idx]

    def size(self, x: Sequence[str]) -> int:
        return len(x)


# ----------------------------------------------------------------------------- kiln checkpoint learner


@dataclass
class KilnLearner:
    """Probe windows (:class:`kiln.eval.probe.Examples` tokens) in; states are ``(backbone model, head)``.
    Each fit trains a copy of ``init``'s model (default: the pretrained ``model``) and a head (zero-initialised,
    or ``init``'s) for ``cfg.finetune_steps`` AdamW steps at ``cfg.finetune_lr``, as the probe does."""

    model: Any
    cfg: Any  # kiln.eval.probe.ProbeConfig
    device: Any
    n_classes: int

    def fit(self, x: Any, y: np.ndarray, init: Any = None) -> Any:
        import torch
        import torch.nn.functional as F
        from torch import nn

        from kiln.eval.probe import pooled, probe_attention
        from kiln.model.heads import Pooler
        from kiln.train.loop import LoopConfig, run_loop

        cfg = self.cfg
        base, head0 = init if init is not None else (self.model, None)
        model = copy.deepcopy(base).to(self.device).train()
        if head0 is None:
            head = nn.Linear(model.config.d_model, self.n_classes).to(self.device)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        else:
            head = copy.deepcopy(head0).to(self.device)
        pooler, attention = Pooler(cfg.pool), probe_attention(model, cfg)
        labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        def loss_fn(step: int, micro: int) -> torch.Tensor:
            idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
            logits = head(pooled(model, pooler, x[idx].to(self.device), attention))
            return F.cross_entropy(logits.float(), labels[idx].to(self.device))

        run_loop([*model.backbone.parameters(), *head.parameters()], loss_fn,
                 LoopConfig(cfg.finetune_steps, warmup_steps=max(1, cfg.finetune_steps // 10)), lr=cfg.finetune_lr)
        return model.eval(), head.eval()

    def proba(self, state: Any, x: Any) -> np.ndarray:
        import torch

        from kiln.eval.probe import pooled, probe_attention
        from kiln.model.heads import Pooler

        model, head = state
        pooler, attention = Pooler(self.cfg.pool), probe_attention(model, self.cfg)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 64):
                logits = head(pooled(model, pooler, x[i : i + 64].to(self.device), attention))
                out.append(logits.float().softmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_classes))

    def take(self, x: Any, idx: np.ndarray) -> Any:
        import torch

        return x[torch.as_tensor(idx, dtype=torch.long)]

    def size(self, x: Any) -> int:
        return len(x)


def split_labelled(docs: Sequence[Any], n_labels: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``n_labels`` documents (a seeded sample, stratified by label: each label keeps its share, at least one)
    and the rest, both in input order."""
    if n_labels < 2 or n_labels >= len(docs):
        raise ValueError(f"pseudo-labels: n_labels must be in [2, {len(docs) - 1}] for {len(docs)} training "
                         f"documents, got {n_labels}")
    rng = np.random.default_rng(seed)
    labels = sorted({d.label for d in docs})
    by = {lab: [i for i, d in enumerate(docs) if d.label == lab] for lab in labels}
    quota = {lab: max(1, int(round(n_labels * len(by[lab]) / len(docs)))) for lab in labels}
    while sum(quota.values()) > n_labels:  # rounding overshoot: trim the largest quota
        quota[max(quota, key=lambda k: (quota[k], k))] -= 1
    chosen = set()
    for lab in labels:
        chosen.update(int(i) for i in rng.permutation(by[lab])[: quota[lab]])
    return [d for i, d in enumerate(docs) if i in chosen], [d for i, d in enumerate(docs) if i not in chosen]


def probe_pseudo_label(model: Any, train_docs: Sequence[Any], test_docs: Sequence[Any], encode, n_labels: int,
                       probe_cfg: Any, cfg: PseudoLabelConfig, device: Any, augment: Any = None) -> dict:
    """The pipeline on a probe task with a kiln checkpoint: ``n_labels`` of ``train_docs`` keep their labels,
    the others form the unlabelled pool (their labels only score the pseudo-labels); accuracy per test window.

    ``augment`` (a :class:`kiln.corpus.augment.eda.EdaConfig`): also fine-tune on the labelled documents plus
    their EDA copies (:func:`kiln.corpus.augment.steps.augment_labelled`: synonyms from all training texts, the
    label words protected, the consistency filter) and report ``augmented_acc`` next to ``labels_only_acc``."""
    from kiln.eval.probe import make_examples
    from kiln.eval.probe_tasks import LabelledDoc

    classes = sorted({d.label for d in train_docs} | {d.label for d in test_docs})
    lab_docs, unl_docs = split_labelled(train_docs, n_labels, cfg.seed)
    extra: dict[str, Any] = {}
    if augment is not None:
        from kiln.corpus.augment.steps import augment_labelled

        texts, labels, info = augment_labelled([d.text for d in lab_docs], [d.label for d in lab_docs],
                                               [d.text for d in train_docs], augment, filter="consistency",
                                               seed=cfg.seed)
        aug_docs = [LabelledDoc(t, lab, f"aug{i}") for i, (t, lab) in enumerate(zip(texts, labels, strict=True))]
        aug = make_examples(aug_docs, encode, classes, probe_cfg)
        test_ex = make_examples(list(test_docs), encode, classes, probe_cfg)
        learner = KilnLearner(model, probe_cfg, device, len(classes))
        extra["augmented_acc"] = accuracy(learner.proba(learner.fit(aug.tokens, aug.labels.numpy()), test_ex.tokens),
                                          test_ex.labels.numpy())
        extra["augment"] = {**{k: v for k, v in info.items() if k != "protected"}, "config": asdict(augment),
                            "n_train_windows": len(aug.labels)}
    lab, unl = make_examples(lab_docs, encode, classes, probe_cfg), make_examples(unl_docs, encode, classes, probe_cfg)
    test = make_examples(list(test_docs), encode, classes, probe_cfg)
    learner = KilnLearner(model, probe_cfg, device, len(classes))
    res = pseudo_label(learner, lab.tokens, lab.labels.numpy(), unl.tokens, test.tokens, test.labels.numpy(), cfg,
                       unl_y=unl.labels.numpy())
    res.update({"classes": classes, "n_labelled_docs": len(lab_docs), "n_unlabelled_docs": len(unl_docs),
                "n_test": len(test.labels), "probe_config": asdict(probe_cfg), **extra})
    return res


def run_pseudo_label_probe(run: Any, task: str, n_labels: int = 100, probe_cfg: Any = None,
                           cfg: PseudoLabelConfig | None = None, device: str = "cpu", out: Any = None,
                           augment: Any = None) -> dict:
    """The pipeline on probe task ``task`` of a kiln run (its corpus rows, tokenizer and final checkpoint, as
    ``kiln eval --probe`` reads them); writes ``pseudo-label-<task>.json`` to ``out`` (default: the run's eval
    folder). ``run``: a :class:`kiln.run.RunDir`; ``augment``: see :func:`probe_pseudo_label`."""
    import torch

    from kiln import atomic
    from kiln.artifacts import final_checkpoint
    from kiln.eval.probe import ProbeConfig
    from kiln.eval.probe_tasks import run_task
    from kiln.model.load import load_model

    cfg = cfg or PseudoLabelConfig()
    ckpt = final_checkpoint(run)
    model = load_model(ckpt, torch.device(device))
    probe_cfg = probe_cfg or ProbeConfig(seq_len=int(model.config.max_seq_len), seed=cfg.seed)
    train_docs, test_docs, encode = run_task(run, task, probe_cfg.test_fraction, probe_cfg.seed)
    res = {"task": task, "checkpoint": str(ckpt),
           **probe_pseudo_label(model, train_docs, test_docs, encode, n_labels, probe_cfg, cfg, torch.device(device),
                               augment)}
    name = task.replace(":", "-").replace("/", "-")
    folder = out if out is not None else run.stage("eval")
    atomic.write_json(folder / f"pseudo-label-{name}.json", res)
    return res
