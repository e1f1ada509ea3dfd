"""Pre-trained distillation mechanics (Turc et al. 2019, arXiv:1908.08962; kiln/eval/pretrained_distill.py)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from kiln.eval.pretrained_distill import (
    DistillConfig,
    distil,
    pretrained_distillation,
    random_init_like,
    soft_label_loss,
)
from kiln.eval.probe import ProbeConfig, make_examples
from kiln.eval.probe_tasks import LabelledDoc
from kiln.model.config import TransformerConfig

VOCAB = 96
WORDS_A = [f"a{i}" for i in range(12)]
WORDS_B = [f"b{i}" for i in range(12)]
SHARED = [f"s{i}" for i in range(24)]
ID = {w: 40 + i for i, w in enumerate(WORDS_A + WORDS_B + SHARED)}  # clear of the reserved special ids


def encode(texts: list[str]) -> list[list[int]]:
    return [[ID[w] for w in t.split()] for t in texts]


def docs(n: int, seed: int, prefix: str) -> list[LabelledDoc]:
    """Two classes: a document mixes shared words with words of its class's own set (a quarter of the words)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "A" if i % 2 == 0 else "B"
        own = WORDS_A if label == "A" else WORDS_B
        words = [rng.choice(own) if rng.random() < 0.25 else rng.choice(SHARED) for _ in range(64)]
        out.append(LabelledDoc(" ".join(words), label, f"{prefix}{i}"))
    return out


def tiny(d_model: int, seed: int, attention: str = "causal") -> torch.nn.Module:
    torch.manual_seed(seed)
    return TransformerConfig(vocab_size=VOCAB, max_seq_len=32, n_layer=2, n_head=2, d_model=d_model,
                             attention=attention).build().eval()


PROBE = ProbeConfig(seq_len=32, windows=2, finetune_steps=40, finetune_lr=3e-3, batch_size=16, seed=0)


def test_soft_label_loss_is_zero_for_equal_distributions_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 3, generator=g)
    for t in (1.0, 2.0, 4.0):
        assert float(soft_label_loss(s, s + 5.0, t)) == pytest.approx(0.0, abs=1e-6)  # shift: same probabilities
        assert float(soft_label_loss(s, s.softmax(-1).log(), t)) == pytest.approx(0.0, abs=1e-6)  # log-probs
    other = torch.randn(8, 3, generator=g)
    assert float(soft_label_loss(s, other, 2.0)) > 0.01
    # T^2 KL at temperature T: computed by hand
    t = 2.0
    p, q = (other / t).softmax(-1), (s / t).softmax(-1)
    assert float(soft_label_loss(s, other, t)) == pytest.approx(float((p * (p / q).log()).sum(-1).mean() * t * t),
                                                                rel=1e-5)
    with pytest.raises(ValueError, match=r"student gives \(8, 3\).*teacher \(8, 4\)"):
        soft_label_loss(s, torch.zeros(8, 4), 1.0)


def test_gradient_reaches_only_the_student(one_thread):
    from kiln.eval.probe import pooled
    from kiln.model.heads import Pooler

    teacher, student = tiny(48, 0), tiny(32, 1, "bidirectional")
    t_head, s_head = torch.nn.Linear(48, 2), torch.nn.Linear(32, 2)
    ex = make_examples(docs(8, 0, "g"), encode, ["A", "B"], PROBE)
    pool = Pooler("mean")
    t_logits = t_head(pooled(teacher, pool, ex.tokens, "causal"))  # built with autograd on, on purpose
    assert t_logits.requires_grad
    loss = soft_label_loss(s_head(pooled(student, pool, ex.tokens, "bidirectional")), t_logits, 2.0)
    loss.backward()
    assert all(p.grad is None for p in [*teacher.parameters(), *t_head.parameters()])
    grads = [p.grad for p in student.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_distil_matches_the_teacher_and_leaves_the_model_untouched(one_thread):
    """Soft labels from a rule the student can learn (the class's own words); the KL falls >= 60% and the
    distilled student agrees with the teacher's argmax on most held-out windows."""
    train, test = docs(40, 1, "t"), docs(20, 2, "h")
    ex, ex_test = (make_examples(d, encode, ["A", "B"], PROBE) for d in (train, test))

    def rule(tokens: torch.Tensor) -> torch.Tensor:  # teacher log-odds: count of A words minus B words
        a = ((tokens >= 40) & (tokens < 52)).sum(1).float()
        b = ((tokens >= 52) & (tokens < 64)).sum(1).float()
        return torch.stack([a - b, b - a], 1) * 0.5

    student = tiny(32, 3, "bidirectional")
    before = [p.detach().clone() for p in student.parameters()]
    cfg = DistillConfig(temperature=2.0, steps=80, lr=3e-3, batch_size=16, seed=0)
    (model, head), stats = distil(student, ex.tokens, rule(ex.tokens), cfg, PROBE, torch.device("cpu"))
    assert stats["distill_loss_last"] < 0.4 * stats["distill_loss_first"], stats
    from kiln.eval.probe import pooled
    from kiln.model.heads import Pooler

    with torch.no_grad():
        pred = head(pooled(model, Pooler("mean"), ex_test.tokens, "bidirectional")).argmax(-1)
    agree = float((pred == rule(ex_test.tokens).argmax(-1)).float().mean())
    assert agree >= 0.8, agree
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    with pytest.raises(ValueError, match="40 transfer windows but 3 teacher soft labels"):
        distil(student, ex.tokens[:40], torch.zeros(3, 2), cfg, PROBE, torch.device("cpu"))


def test_pipeline_runs_end_to_end_on_a_tiny_task(one_thread):
    """Teacher (wider, causal) fine-tuned on labels, two students (bidirectional; one a fresh copy) distilled on
    the unlabelled transfer windows and fine-tuned: every number present, the teacher above the majority."""
    train, test = docs(32, 4, "t"), docs(16, 5, "h")
    teacher, student = tiny(48, 0), tiny(32, 1, "bidirectional")
    fresh = random_init_like(student, seed=7)
    assert fresh.config == student.config
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), student.parameters(), strict=True))
    cfg = DistillConfig(temperature=2.0, steps=25, lr=3e-3, batch_size=16, teacher_steps=50, seed=0)
    probe = dataclasses.replace(PROBE, finetune_steps=20)
    res = pretrained_distillation(teacher, {"pretrained": student, "random": fresh}, train, test, encode, probe,
                                  cfg, torch.device("cpu"), n_labels=12)
    assert res["classes"] == ["A", "B"] and res["n_labelled_docs"] == 12
    assert res["n_transfer_windows"] == 2 * len(train) and res["n_test"] == 2 * len(test)
    assert res["teacher_acc"] > res["majority_acc"] + 0.2, res
    for name in ("pretrained", "random"):
        row = res["students"][name]
        for key in ("distill_acc", "final_acc", "ft_only_acc", "distill_agreement", "final_agreement"):
            assert 0.0 <= row[key] <= 1.0 and np.isfinite(row[key]), (name, key, row)
        assert row["distill_loss_last"] < row["distill_loss_first"], row
    with pytest.raises(ValueError, match="no student models"):
        pretrained_distillation(teacher, {}, train, test, encode, PROBE, cfg, torch.device("cpu"))
