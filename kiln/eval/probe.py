"""Downstream probe: how much a pretrained backbone knows about a label, by linear probe and by fine-tuning.

The standard two readings of a representation (e.g. Devlin et al. 2019, sec. 5.3 feature-based vs
fine-tuning; Alain & Bengio 2016 on linear probes): the :class:`~kiln.model.heads.Pooler` (mean or first
token) summarises a window of a document, and

- **linear probe**: the backbone frozen, a logistic-regression head on the standardised pooled features;
- **fine-tune**: backbone + linear head trained together for ``finetune_steps`` AdamW steps.

Examples are up to ``windows`` evenly spaced windows of ``seq_len`` tokens from each labelled document
(``<|bos|>`` + text tokens); the split is by document group (``probe_tasks``). Accuracy is per window on the
held-out split, next to two constant-predictor baselines on that same held-out split:

- ``majority_acc`` (``majority_class``): the best any constant predictor gets on the test windows, i.e. the
  share of the test split's most common label. A probe must beat this to show it learned anything.
- ``train_majority_acc`` (``train_majority_class``): what predicting the *train* split's most common label
  gets on the test windows (the constant a label-blind learner would fit). It can be far below
  ``majority_acc`` when the split by group shifts the label mix, so it is never the headline baseline.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.eval.probe_tasks import LabelledDoc
from kiln.model.heads import Pooler
from kiln.objectives.transforms.common import BOS_ID, PAD_ID
from kiln.progress import PlainLines, log
from kiln.train.loop import LoopConfig, run_loop


@dataclass
class ProbeConfig:
    seq_len: int = 128
    windows: int = 4
    test_fraction: float = 0.25
    pool: str = "mean"
    attention: str | None = None  # None: the model's own (prefix -> bidirectional over the whole window)
    linear_steps: int = 300
    linear_lr: float = 0.05
    finetune_steps: int = 150
    finetune_lr: float = 3e-4
    batch_size: int = 16
    seed: int = 0


@dataclass
class Examples:
    tokens: torch.Tensor  # (N, seq_len), PAD_ID after a short document's end
    labels: torch.Tensor  # (N,) class index

    @property
    def valid(self) -> torch.Tensor:
        return self.tokens != PAD_ID


def windows_of(ids: list[int], seq_len: int, k: int) -> list[list[int]]:
    """Up to ``k`` evenly spaced, non-overlapping windows of ``seq_len - 1`` tokens (each then led by bos)."""
    n, w = len(ids), seq_len - 1
    if n <= w:
        return [ids] if ids else []
    count = min(k, n // w)
    starts = np.linspace(0, n - w, count).round().astype(int)
    return [ids[s : s + w] for s in starts]


def make_examples(docs: list[LabelledDoc], encode, classes: list[str], cfg: ProbeConfig) -> Examples:
    """Windows of every document, ``encode(texts) -> list[list[int]]`` giving their token ids."""
    rows, labels = [], []
    for doc, ids in zip(docs, encode([d.text for d in docs]), strict=True):
        for win in windows_of(ids, cfg.seq_len, cfg.windows):
            rows.append([BOS_ID, *win] + [PAD_ID] * (cfg.seq_len - 1 - len(win)))
            labels.append(classes.index(doc.label))
    return Examples(torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


def probe_attention(model: nn.Module, cfg: ProbeConfig) -> str:
    mode = cfg.attention or model.config.attention
    return "bidirectional" if mode == "prefix" else mode  # a prefix spanning the window


def pooled(model: nn.Module, pooler: Pooler, tokens: torch.Tensor, attention: str) -> torch.Tensor:
    """Pooled backbone features (B, d); padding is its own segment, so real tokens never attend to it."""
    valid = tokens != PAD_ID
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    segments = torch.where(valid, 0, -1)
    hidden = model.backbone(tokens, positions, segments, attention=attention)
    return pooler(hidden, valid)


@torch.no_grad()
def features(model: nn.Module, ex: Examples, cfg: ProbeConfig, device: torch.device) -> torch.Tensor:
    model.eval()
    pooler, attention = Pooler(cfg.pool), probe_attention(model, cfg)
    out = [pooled(model, pooler, ex.tokens[i : i + 64].to(device), attention).float().cpu()
           for i in range(0, len(ex.tokens), 64)]
    return torch.cat(out)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 n_classes: int, cfg: ProbeConfig) -> float:
    """Full-batch logistic regression (Adam, small L2) on standardised features; held-out accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(cfg.seed)
    head = nn.Linear(xs.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.linear_lr, weight_decay=1e-3)
    for _ in range(cfg.linear_steps):
        opt.zero_grad()
        F.cross_entropy(head(xs), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((head(xt).argmax(-1) == test_y).float().mean())


def finetune(model: nn.Module, train: Examples, test: Examples, n_classes: int, cfg: ProbeConfig,
             device: torch.device) -> float:
    """Backbone + linear head on the pooled features, AdamW; held-out accuracy. ``model`` is left untouched."""
    model = copy.deepcopy(model).to(device).train()
    pooler, attention = Pooler(cfg.pool), probe_attention(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = nn.Linear(model.config.d_model, n_classes).to(device)
    nn.init.zeros_(head.weight)
    params = [*model.backbone.parameters(), *head.parameters()]

    lines = PlainLines("probe fine-tune", cfg.finetune_steps)  # plain progress lines in logs (no terminal)

    def loss_fn(step: int, micro: int) -> torch.Tensor:
        idx = torch.randint(0, len(train.tokens), (cfg.batch_size,), generator=gen)
        logits = head(pooled(model, pooler, train.tokens[idx].to(device), attention))
        loss = F.cross_entropy(logits.float(), train.labels[idx].to(device))
        if lines.due(step + 1):
            lines.update(step + 1, f"loss {float(loss.detach()):.4f}", force=True)
        return loss

    # the shared small loop: AdamW, linear warmup over the first 10% then constant, clipping at 1
    run_loop(params, loss_fn, LoopConfig(cfg.finetune_steps, warmup_steps=max(1, cfg.finetune_steps // 10)),
             lr=cfg.finetune_lr)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test.tokens), 64):
            logits = head(pooled(model, pooler, test.tokens[i : i + 64].to(device), attention))
            correct += int((logits.argmax(-1).cpu() == test.labels[i : i + 64]).sum())
    return correct / len(test.tokens)


def constant_baselines(train_labels: torch.Tensor, test_labels: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy of constant predictors on the test labels (see the module docstring).

    ``majority_*``: the test split's most common class, the best a constant predictor can score there (ties go
    to the class listed first); ``train_majority_*``: the train split's most common class, scored on the test.
    """
    if len(test_labels) == 0 or len(train_labels) == 0:
        raise ValueError(f"probe: no windows to score a baseline on ({len(train_labels)} train, "
                         f"{len(test_labels)} test)")
    test_counts = torch.bincount(test_labels, minlength=len(classes))
    train_counts = torch.bincount(train_labels, minlength=len(classes))
    best, train_best = int(test_counts.argmax()), int(train_counts.argmax())
    n = len(test_labels)
    return {
        "majority_class": classes[best], "majority_acc": float(test_counts[best]) / n,
        "train_majority_class": classes[train_best], "train_majority_acc": float(test_counts[train_best]) / n,
    }


def probe_model(model: nn.Module, train_docs: list[LabelledDoc], test_docs: list[LabelledDoc], encode,
                cfg: ProbeConfig, device: torch.device, finetuned: bool = True) -> dict:
    """Linear-probe (and fine-tune) accuracy of ``model`` with the majority baseline; a json-able dict."""
    classes = sorted({d.label for d in train_docs} | {d.label for d in test_docs})
    train, test = make_examples(train_docs, encode, classes, cfg), make_examples(test_docs, encode, classes, cfg)
    log(f"probe: {len(classes)} classes, {len(train.labels)} train / {len(test.labels)} test windows; linear probe")
    res = {
        "classes": classes,
        "n_train": len(train.labels), "n_test": len(test.labels),
        "n_train_docs": len(train_docs), "n_test_docs": len(test_docs),
        "test_label_counts": {classes[k]: v for k, v in sorted(Counter(test.labels.tolist()).items())},
        **constant_baselines(train.labels, test.labels, classes),
        "linear_acc": linear_probe(features(model, train, cfg, device), train.labels,
                                   features(model, test, cfg, device), test.labels, len(classes), cfg),
        "attention": probe_attention(model, cfg),
        "config": asdict(cfg),
    }
    log(f"probe: linear accuracy {res['linear_acc']:.3f} (majority baseline {res['majority_acc']:.3f})")
    if finetuned and cfg.finetune_steps > 0:
        log(f"probe: fine-tuning {cfg.finetune_steps} steps")
        res["finetune_acc"] = finetune(model, train, test, len(classes), cfg, device)
    return res
