"""Pre-trained distillation: a compact student, MLM-pretrained or not, distilled on unlabelled task text against a
fine-tuned teacher's soft labels, then fine-tuned on the labels.

Turc, Chang, Lee, Toutanova 2019, "Well-Read Students Learn Better: On the Importance of Pre-training Compact
Models", arXiv:1908.08962 (sec. 3, "Pre-trained Distillation"): (1) pre-train the compact model with masked LM;
(2) distil it on an unlabelled transfer set D_T of task text, minimising the cross-entropy between the teacher's
and the student's class distributions (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531: soft targets at temperature T, the loss scaled by T^2 so gradients keep their size);
(3) optionally fine-tune on the labelled data. The claim checked here: a pre-trained student beats a randomly
initialised one given the same distillation.

On kiln's probe tasks (:mod:`kiln.eval.probe_tasks`, e.g. ``genre``: comedy / history / tragedy of a
Shakespeare scene, split by play), in :func:`pretrained_distillation`:

1. **teacher**: a (larger) kiln model's backbone + a linear head fine-tuned on the labelled training windows
   (:class:`kiln.eval.pseudo_label.KilnLearner`, the probe's fine-tuning); its held-out accuracy is reported;
2. **soft labels**: the teacher's class log-probabilities on the transfer set: every training window, labels
   unused (``n_labels`` labelled documents when given, the rest only in the transfer set);
3. **distil** each student (its backbone + a zero-initialised head) for ``steps`` AdamW steps on
   :func:`soft_label_loss` (T^2 KL(p_T(teacher) || p_T(student)), which differs from the soft cross-entropy by
   the teacher's entropy, a constant: 0 exactly when the distributions agree); only the student's parameters
   are optimised and the teacher is never run with gradients;
4. **fine-tune** the distilled student (backbone and head) on the labelled windows, as the probe does;
5. held-out accuracy (per window) after distillation and after fine-tuning, and, as a reference, of the student
   fine-tuned on the labels alone.

Student and teacher may differ in width, depth, attention (an MLM student is bidirectional, a CLM teacher
causal: each pools under its own mask, :func:`kiln.eval.probe.probe_attention`) and context length: only class
probabilities are matched. They must share the tokenizer (one ``encode`` makes the windows of both).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.eval.probe import ProbeConfig, make_examples, pooled, probe_attention
from kiln.eval.pseudo_label import KilnLearner, accuracy, split_labelled
from kiln.model.heads import Pooler
from kiln.train.loop import LoopConfig, run_loop


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 1.0  # Turc et al. match the plain distributions; > 1 softens (Hinton et al.)
    steps: int = 300  # distillation AdamW steps per student
    lr: float = 3e-4
    batch_size: int = 32
    teacher_steps: int | None = None  # teacher fine-tuning steps; None = the probe's finetune_steps
    finetune: bool = True  # step 4
    ft_only_baseline: bool = True  # also fine-tune each student on the labels alone (no distillation)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"DistillConfig.temperature must be > 0, got {self.temperature}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"DistillConfig: steps >= 1, batch_size >= 1 and lr > 0 (got steps {self.steps}, "
                             f"batch_size {self.batch_size}, lr {self.lr})")
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise ValueError(f"DistillConfig.teacher_steps must be >= 1 or None, got {self.teacher_steps}")


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch; ``teacher_logits`` may be
    log-probabilities (a softmax is shift-invariant) and are never differentiated."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"soft labels: the student gives {tuple(student_logits.shape)} class scores, the teacher "
                         f"{tuple(teacher_logits.shape)}; both must score the same classes")
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (t * t)


def teacher_log_probs(learner: KilnLearner, state: Any, x: torch.Tensor) -> torch.Tensor:
    """The fine-tuned teacher's class log-probabilities on windows ``x`` (no gradients), shape (N, classes)."""
    probs = torch.as_tensor(learner.proba(state, x), dtype=torch.float32)
    return probs.clamp(min=1e-12).log()


def distil(model: nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor, cfg: DistillConfig,
           probe_cfg: ProbeConfig, device: torch.device) -> tuple[tuple[nn.Module, nn.Linear], dict]:
    """Step 3: a copy of ``model`` + a zero-initialised linear head trained on :func:`soft_label_loss` against
    ``teacher_logits`` over windows ``x``; ``model`` is left untouched. Returns ``((model, head), stats)`` with
    the mean loss of the first and last tenth of the steps."""
    if len(x) != len(teacher_logits):
        raise ValueError(f"distil: {len(x)} transfer windows but {len(teacher_logits)} teacher soft labels")
    student = copy.deepcopy(model).to(device).train()
    head = nn.Linear(student.config.d_model, teacher_logits.shape[1]).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    pooler, attention = Pooler(probe_cfg.pool), probe_attention(student, probe_cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    losses: list[float] = []

    def loss_fn(step: int, micro: int) -> torch.Tensor:
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        logits = head(pooled(student, pooler, x[idx].to(device), attention))
        loss = soft_label_loss(logits, teacher_logits[idx].to(device), cfg.temperature)
        losses.append(float(loss.detach()))
        return loss

    run_loop([*student.backbone.parameters(), *head.parameters()], loss_fn,
             LoopConfig(cfg.steps, warmup_steps=max(1, cfg.steps // 10)), lr=cfg.lr)
    k = max(1, len(losses) // 10)
    stats = {"distill_loss_first": float(np.mean(losses[:k])), "distill_loss_last": float(np.mean(losses[-k:]))}
    return (student.eval(), head.eval()), stats


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose argmax class is the same in two probability (or score) arrays."""
    return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else float("nan")


def pretrained_distillation(teacher: nn.Module, students: Mapping[str, nn.Module], train_docs: Sequence[Any],
                            test_docs: Sequence[Any], encode, probe_cfg: ProbeConfig, cfg: DistillConfig,
                            device: torch.device, n_labels: int | None = None) -> dict:
    """Steps 1-5 of the module docstring on one probe task. ``students``: name -> model (e.g. ``pretrained`` and
    ``random``); ``n_labels``: labelled training documents (a stratified sample, :func:`split_labelled`), None =
    all. Returns ``teacher_acc`` and per student ``distill_acc`` (after step 3), ``final_acc`` (after step 4),
    ``ft_only_acc``, the distillation losses, the student/teacher agreement on the test windows and the per-window
    correctness lists (``*_correct``, test-window order) for paired intervals."""
    if not students:
        raise ValueError("pretrained distillation: no student models given")
    classes = sorted({d.label for d in train_docs} | {d.label for d in test_docs})
    lab_docs = list(train_docs) if n_labels is None else split_labelled(train_docs, n_labels, cfg.seed)[0]
    lab = make_examples(lab_docs, encode, classes, probe_cfg)
    transfer = make_examples(list(train_docs), encode, classes, probe_cfg)  # labels unused from here on
    test = make_examples(list(test_docs), encode, classes, probe_cfg)
    test_y, lab_y = test.labels.numpy(), lab.labels.numpy()
    n = len(classes)

    def correct(probs: np.ndarray) -> list[int]:  # per test window, for paired comparisons across students
        return (probs.argmax(1) == test_y).astype(int).tolist()

    teacher_cfg = probe_cfg if cfg.teacher_steps is None else dataclasses.replace(
        probe_cfg, finetune_steps=cfg.teacher_steps)
    t_learner = KilnLearner(teacher, teacher_cfg, device, n)
    t_state = t_learner.fit(lab.tokens, lab_y)
    t_test = t_learner.proba(t_state, test.tokens)
    soft = teacher_log_probs(t_learner, t_state, transfer.tokens)
    res: dict[str, Any] = {
        "classes": classes, "n_labelled_docs": len(lab_docs), "n_transfer_windows": len(transfer.labels),
        "n_labelled_windows": len(lab.labels), "n_test": len(test.labels),
        "teacher_acc": accuracy(t_test, test_y), "teacher_correct": correct(t_test),
        "teacher_transfer_acc": accuracy(soft.numpy(), transfer.labels.numpy()),  # soft-label quality (info)
        "majority_acc": float(np.bincount(test_y, minlength=n).max() / max(1, len(test_y))),
        "config": asdict(cfg), "probe_config": asdict(probe_cfg), "students": {},
    }
    for name, model in students.items():
        learner = KilnLearner(model, probe_cfg, device, n)
        state, stats = distil(model, transfer.tokens, soft, cfg, probe_cfg, device)
        p_distil = learner.proba(state, test.tokens)
        row: dict[str, Any] = {**stats, "distill_acc": accuracy(p_distil, test_y),
                               "distill_agreement": agreement(p_distil, t_test), "distill_correct": correct(p_distil)}
        if cfg.finetune:
            p_final = learner.proba(learner.fit(lab.tokens, lab_y, init=state), test.tokens)
            row.update(final_acc=accuracy(p_final, test_y), final_agreement=agreement(p_final, t_test),
                       final_correct=correct(p_final))
        if cfg.ft_only_baseline:
            p_ft = learner.proba(learner.fit(lab.tokens, lab_y), test.tokens)
            row.update(ft_only_acc=accuracy(p_ft, test_y), ft_only_correct=correct(p_ft))
        res["students"][name] = row
    return res


def random_init_like(model: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised model of ``model``'s exact configuration (same shape, heads and options), seeded."""
    torch.manual_seed(seed)
    return model.config.build().eval()
