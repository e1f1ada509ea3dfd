"""Soft-label knowledge distillation (``kd``) and SALT (``salt``): a causal LM student learning from a teacher.

- ``kd`` (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015, arXiv:1503.02531): per
  target, ``(1 - alpha) * CE(y, p_s) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``; the ``T^2`` keeps
  the soft term's gradient scale independent of the temperature. ``alpha = 0`` computes the same CE as ``clm``
  (the KL term is added with weight 0.0), so a run is exactly a plain CE run.
- ``salt`` (Rawat et al., "A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small LMs", 2024,
  arXiv:2410.18779): the same loss with weight ``alpha`` (the paper's w) for the first ``kd_steps`` optimizer
  steps, then plain CE (an abrupt switch; the teacher is not run any more). The paper's KD term is the
  cross-entropy between the small model's and the student's distributions; this uses the KL, which differs from
  it by the teacher's entropy (a constant): the same gradients, and 0 when the two agree.
  **SALT_DS** (``select_fraction < 1``): the small model scores each sequence by the median per-token loss over
  the tokens whose label is in its top-``top_k`` predictions ("challenging yet learnable"); during the KD phase
  only the highest-scoring ``select_fraction`` of each micro-batch's rows get the KD term (the others train on
  CE). The paper selects the KD phase's sequences from the whole corpus; selecting within each micro-batch keeps
  the data order, the token count and resume untouched, at the price of a smaller pool to choose from.

Both are ``CausalLM`` objectives (validation reports bits per byte) and mix with others through ``mixture``.
Under ``train.loss_chunk_tokens`` the KD term, like the CE, runs a chunk of positions at a time
(:mod:`kiln.objectives.kd_loss`): neither model's full logits exist; SALT_DS scores one row's logits at a time.
The teacher (``train.teacher``) is loaded in :meth:`attach` onto the training device as a frozen module
(:mod:`kiln.objectives.teacher`) and must share the student's vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.data.loader import Batch
from kiln.objectives.base import Prepared
from kiln.objectives.clm import IGNORE, CausalLM, lm_loss_sum
from kiln.objectives.kd_loss import chunked_kd, kd_kl_sum
from kiln.objectives.teacher import attach_teacher, run_teacher, teacher_head_weight


def salt_ds_scores(teacher_logits: Tensor, targets: Tensor, top_k: int = 10) -> Tensor:
    """SALT_DS score per row: the median teacher loss over the row's targets that are in the teacher's top-k.

    ``teacher_logits`` (B, T, V), ``targets`` (B, T) with IGNORE where there is none; a row without such a
    target scores -inf (never selected first)."""
    valid = targets != IGNORE
    safe = targets.clamp(min=0)
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    loss = -logp.gather(-1, safe[..., None])[..., 0]
    k = min(top_k, teacher_logits.shape[-1])
    in_top = (teacher_logits.topk(k, dim=-1).indices == safe[..., None]).any(-1) & valid
    scores = torch.full((targets.shape[0],), float("-inf"), device=targets.device)
    for r in range(targets.shape[0]):
        picked = loss[r][in_top[r]]
        if picked.numel():
            scores[r] = picked.median()
    return scores


class KnowledgeDistillation(CausalLM):
    """Causal LM + temperature-scaled KL to a frozen teacher's next-token distribution (see the module doc)."""

    name = "kd"

    def __init__(self, teacher: str | None = None, alpha: float = 0.5, temperature: float = 1.0) -> None:
        if teacher is None:
            raise ValueError(f"objective {self.name!r} needs a teacher: set train.teacher")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"objective {self.name!r}: alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"objective {self.name!r}: temperature must be > 0, got {temperature}")
        self.teacher_path, self.alpha, self.temperature = teacher, float(alpha), float(temperature)

    def attach(self, device: torch.device) -> None:
        attach_teacher(self, device)
        super().attach(device)

    @property
    def teacher(self) -> nn.Module:
        frozen = self.frozen_modules()
        if "teacher" not in frozen:
            raise RuntimeError(f"objective {self.name!r}: the teacher is loaded by attach(device) before training")
        return frozen["teacher"]

    def kd_weight(self, prepared: Prepared) -> float | None:
        """The KD term's weight for this micro-batch (``alpha``); None: no KD term, the teacher is not run
        (SALT after its KD phase)."""
        return self.alpha

    def kd_rows(self, teacher_hidden: Tensor, targets: Tensor) -> Tensor:
        """Rows (B,) bool that get the KD term, when :meth:`kd_full_logits` (SALT_DS selects); default all."""
        return torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)

    def kd_terms(self, model: nn.Module, hidden: Tensor, teacher_hidden: Tensor,
                 targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(KL sum, the student's CE sum against ``targets`` or None) at N chosen positions, from both models'
        (N, d) final hidden states: a chunk of positions at a time under ``train.loss_chunk_tokens``
        (:mod:`kiln.objectives.kd_loss`), else from the full logits."""
        t_weight = teacher_head_weight(self.teacher)
        if self.loss_chunk_tokens and torch.is_grad_enabled():
            kl = chunked_kd(hidden, model.lm_head.weight, teacher_hidden, t_weight, self.temperature,
                            self.loss_chunk_tokens)
            return kl, None if targets is None else lm_loss_sum(model, hidden, targets, self.loss_chunk_tokens)
        student_logits = model.lm_head(hidden)
        kl = kd_kl_sum(student_logits, F.linear(teacher_hidden, t_weight), self.temperature)
        if targets is None:
            return kl, None
        return kl, F.cross_entropy(student_logits.float(), targets, reduction="sum")

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"), attention="causal")
        ce = lm_loss_sum(model, hidden, t["targets"], self.loss_chunk_tokens, self.compile_loss)
        weight = self.kd_weight(prepared)
        if weight is None:  # outside the KD phase: plain CE, the teacher is not run
            return ce, {}
        targets = t["targets"]
        valid = targets != IGNORE
        teacher_hidden = run_teacher(self.teacher, t, "causal", logits=False).hidden
        sel = valid
        if self.kd_full_logits():  # SALT_DS: score whole rows, KD only on the chosen ones
            sel = valid & self.kd_rows(teacher_hidden, targets)[:, None]
        kl, ce_sel = self.kd_terms(model, hidden[sel], teacher_hidden[sel], None if sel is valid else targets[sel])
        soft = weight * self.temperature ** 2 * kl
        # rows without KD (SALT_DS) keep their full CE: (1 - w) only on the chosen rows' targets
        loss = (1.0 - weight) * ce + soft if ce_sel is None else ce - weight * ce_sel + soft
        return loss, {"kd_kl_sum": kl.detach(), "kd_ce_sum": ce.detach()}

    def kd_full_logits(self) -> bool:
        """Whether the teacher's logits are needed at every position (SALT_DS scores rows), not only at targets."""
        return False


class SALT(KnowledgeDistillation):
    """KD with weight ``alpha`` for the first ``kd_steps`` steps, then plain CE; optional SALT_DS (module doc)."""

    name = "salt"

    def __init__(self, teacher: str | None = None, kd_steps: int = 100, alpha: float = 0.667,
                 temperature: float = 1.0, select_fraction: float = 1.0, top_k: int = 10) -> None:
        super().__init__(teacher, alpha, temperature)
        if kd_steps < 0:
            raise ValueError(f"objective 'salt': kd_steps must be >= 0, got {kd_steps}")
        if not 0.0 < select_fraction <= 1.0:
            raise ValueError(f"objective 'salt': select_fraction must be in (0, 1], got {select_fraction}")
        if top_k < 1:
            raise ValueError(f"objective 'salt': top_k must be >= 1, got {top_k}")
        self.kd_steps, self.select_fraction, self.top_k = int(kd_steps), float(select_fraction), int(top_k)

    def prepare(self, batch: Batch) -> Prepared:
        p = super().prepare(batch)
        p.extra["kd_phase"] = self.step < self.kd_steps  # decided when prepared: the step this batch trains
        return p

    def kd_weight(self, prepared: Prepared) -> float | None:
        return self.alpha if prepared.extra.get("kd_phase", self.step < self.kd_steps) else None

    def kd_full_logits(self) -> bool:
        return self.select_fraction < 1.0

    def kd_rows(self, teacher_hidden: Tensor, targets: Tensor) -> Tensor:
        head = teacher_head_weight(self.teacher)  # one row's (T, V) logits at a time
        scores = torch.cat([salt_ds_scores(F.linear(teacher_hidden[r : r + 1], head), targets[r : r + 1], self.top_k)
                            for r in range(targets.shape[0])])
        n = max(1, round(self.select_fraction * scores.shape[0]))
        # ties broken by row index (stable sort), so the choice is deterministic
        order = torch.sort(-scores, stable=True).indices[:n]
        rows = torch.zeros_like(scores, dtype=torch.bool)
        rows[order] = True
        return rows
