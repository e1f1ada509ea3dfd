"""Loss-based sample reweighting: causal LM where each sample's loss gets a softmax weight from its own loss.

Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic Loss-Based Sample Reweighting for Improved
Large Language Model Pretraining", ICLR 2025 (arXiv:2502.06733). Spec: shared/methods/data.md section 7.

Per optimizer step:

1. every sample's loss l_i is its mean token cross-entropy; a sample is a packed row (``unit: sequence``, as
   the reference implementation) or one document's piece of a row (``unit: document``);
2. the losses of the **step's global batch** (every micro-batch of every rank, all-gathered under torchrun) are
   normalised to [-1, 1] with that batch's min and max: l~ = (2 l - (max + min)) / (max - min) (all 0 when
   max = min);
3. a strategy f maps l~ to a score (kiln/objectives/reweight_args.py: ``linupper`` min(l~ + 1, 1),
   ``quadratic`` 1 - l~^2, ``extremes`` |l~|, ``upper`` 0.5 l~ + 0.5; ``uniform`` 0 as an ablation);
4. w = softmax(f / r) over the global batch (weights sum to 1; uniform as r -> inf; constants for backward,
   as in the paper) and the step's loss is sum_i w_i l_i (uniform weights give the mean, not N x the mean);
5. for the first ``warmup_steps`` steps the loss is the plain token-weighted mean (exactly ``clm``).

**The batch is the optimizer step's, not the micro-batch's** (the reference softmaxes over one micro-batch of
every rank): so weights, losses and gradients do not depend on ``train.micro_batch_size`` or the number of
ranks, and 2 ranks reproduce one process at the same global batch. The price: when a rank has K > 1
micro-batches, the first loss call of a step also runs the other K - 1 forwards without gradients to know the
whole batch's losses first ((K - 1) / K of one forward extra; none at one micro-batch per rank). The trainer
divides every micro-batch's returned sum by the step's global target count T (and DDP averages over ranks,
which the trainer undoes), so each micro-batch returns T x sum_{i in it} w_i l_i.

Logged: the train row's ``loss`` is the optimised (weighted) loss; ``ce_per_target`` is the plain token-mean
cross-entropy of the same batch (comparable with ``clm``); validation is the usual bits per byte. The step's
weight statistics are in :attr:`LossReweighted.stats`; the ``reweight_stats`` callback (kiln/train/reweight.py)
writes them into the train rows. The LM loss uses full logits (``train.loss_chunk_tokens`` and the compiled
loss are not used: per-token losses are needed). Not for use inside ``mixture`` under torchrun (the gather
needs every rank to run this objective in every step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Prepared
from kiln.objectives.clm import IGNORE, CausalLM
from kiln.objectives.reweight_args import DEFAULTS, canonical_strategy, check_reweight_args


def normalise_losses(losses: torch.Tensor) -> torch.Tensor:
    """Per-sample losses mapped to [-1, 1] by the batch's min and max (min -> -1, max -> 1); all 0 when equal."""
    lo, hi = losses.min(), losses.max()
    span = hi - lo
    if not bool(span > 1e-12 * max(1.0, float(hi.abs()))):
        return torch.zeros_like(losses)
    return (2 * losses - (hi + lo)) / span


def strategy_scores(normalised: torch.Tensor, strategy: str) -> torch.Tensor:
    """f(l~) of the named strategy (reweight_args.STRATEGIES)."""
    x = normalised
    name = canonical_strategy(strategy)
    if name == "linupper":
        return torch.clamp(x + 1, max=1.0)
    if name == "quadratic":
        return 1 - x * x
    if name == "extremes":
        return x.abs()
    if name == "upper":
        return 0.5 * x + 0.5
    if name == "uniform":
        return torch.zeros_like(x)
    raise ValueError(f"unknown reweighting strategy {strategy!r}")


def sample_weights(losses: torch.Tensor, strategy: str, r: float) -> torch.Tensor:
    """softmax(f(l~) / r) over all of ``losses`` (1-D): the weights, summing to 1."""
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"sample_weights: expected a non-empty 1-D tensor of losses, got shape {tuple(losses.shape)}")
    return torch.softmax(strategy_scores(normalise_losses(losses), strategy) / r, dim=0)


def weight_stats(weights: torch.Tensor) -> dict[str, float]:
    """min, max, entropy / log N (1 = uniform) and N of a weight vector."""
    n = weights.numel()
    w = weights.double()
    entropy = float(-(w * torch.log(w.clamp_min(1e-300))).sum())
    return {"reweight_w_min": float(w.min()), "reweight_w_max": float(w.max()),
            "reweight_w_entropy_ratio": entropy / math.log(n) if n > 1 else 1.0,
            "reweight_samples": n}


def sample_ids(batch: Batch, targets: torch.Tensor, unit: str) -> tuple[torch.Tensor, int]:
    """(ids, n): each target position's sample index in 0..n-1 (row order, then segment), -1 where no target.

    A sample is a row (``sequence``) or a (row, segment) piece (``document``); a target belongs to the segment
    of the token it is predicted from. Samples without any target do not exist (every id has >= 1 target).
    """
    valid = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)
    key = rows * (targets.shape[1] + 1) + (batch.segments.clamp_min(-1) + 1 if unit == "document" else 0)
    ids = torch.full_like(targets, -1)
    if bool(valid.any()):
        uniq, inverse = torch.unique(key[valid], return_inverse=True)
        ids[valid] = inverse
        return ids, int(uniq.numel())
    return ids, 0


def _all_gather(obj: Any) -> list[Any]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class LossReweighted(CausalLM):
    """Causal LM with loss-based sample weights over the step's global batch (module docstring)."""

    name = "reweight"

    def __init__(self, strategy: str = DEFAULTS["strategy"], r: float = DEFAULTS["r"],
                 warmup_steps: int = DEFAULTS["warmup_steps"], unit: str = DEFAULTS["unit"]) -> None:
        check_reweight_args({"strategy": strategy, "r": r, "warmup_steps": warmup_steps, "unit": unit})
        self.strategy, self.r = canonical_strategy(strategy), float(r)
        self.warmup_steps, self.unit = int(warmup_steps), unit
        self._prepared: list[Prepared] = []  # this rank's micro-batches of the current step, as prepared (CPU)
        self._weights: list[torch.Tensor | None] | None = None  # per micro-batch: its samples' weights
        self._total_targets = 0  # the step's global target count
        self.stats: dict[str, float] = {}  # the last step's weight statistics (reweight_stats logs them)

    def configure(self, **kwargs: Any) -> None:
        super().configure(**kwargs)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"train.objective_args.warmup_steps: {self.warmup_steps} >= train.steps "
                             f"{self.total_steps}, so the sample weights would never apply; lower it")

    def begin_step(self, step: int, micro_offset: int = 0) -> None:
        super().begin_step(step, micro_offset)
        self._prepared, self._weights = [], None
        self.stats = {"reweight_active": float(step >= self.warmup_steps)}

    def prepare(self, batch: Batch) -> Prepared:
        p = super().prepare(batch)
        if self.step >= self.warmup_steps:
            ids, n = sample_ids(batch, p.tensors["targets"], self.unit)
            p.tensors["sample_ids"] = ids
            p.extra.update(reweight_micro=len(self._prepared), reweight_samples=n)
            self._prepared.append(p)
        return p

    # ------------------------------------------------------------------ loss
    def _sample_sums(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed CE per sample, targets per sample) of one micro-batch; the sums carry the graph."""
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], positions=t["positions"], segments=t.get("segments"), attention="causal")
        logits = model.lm_head(hidden)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least (bf16 autocast)
        token = F.cross_entropy(logits.flatten(0, 1), t["targets"].flatten(), ignore_index=IGNORE, reduction="none")
        ids = t["sample_ids"].flatten()
        valid = ids >= 0
        n = prepared.extra["reweight_samples"]
        sums = torch.zeros(n, dtype=token.dtype, device=token.device).index_add(0, ids[valid], token[valid])
        counts = torch.bincount(ids[valid], minlength=n)
        return sums, counts

    def _step_weights(self, model: nn.Module, first: int, first_means: torch.Tensor) -> None:
        """Per-sample losses of every micro-batch of the step on every rank -> this rank's weights per micro."""
        device = first_means.device
        means: list[torch.Tensor] = []
        for j, p in enumerate(self._prepared):
            if j == first:
                means.append(first_means)
                continue
            with torch.no_grad():
                sums, counts = self._sample_sums(model, p.to(device))
            means.append(sums / counts)
        local = torch.cat(means).double().cpu().tolist() if means else []
        local_targets = sum(p.n_targets for p in self._prepared)
        gathered = _all_gather((local, local_targets))
        rank = torch.distributed.get_rank() if len(gathered) > 1 else 0
        everything = torch.tensor([x for losses, _ in gathered for x in losses], dtype=torch.float64)
        self._total_targets = sum(n for _, n in gathered)
        if everything.numel() == 0:  # no targets anywhere in the step: nothing to weight
            self._weights = [torch.zeros(0, dtype=torch.float64) for _ in means]
            return
        weights = sample_weights(everything, self.strategy, self.r)
        start = sum(len(losses) for losses, _ in gathered[:rank])
        self._weights = []
        for m in means:
            self._weights.append(weights[start:start + m.numel()])
            start += m.numel()
        self.stats.update(weight_stats(weights))
        self.stats["reweight_loss_min"], self.stats["reweight_loss_max"] = float(everything.min()), \
            float(everything.max())

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "reweight_micro" not in prepared.extra:  # warm-up: the plain token-weighted mean (exactly clm)
            loss_sum, metrics = super().loss(model, prepared)
            return loss_sum, {**metrics, "ce_sum": loss_sum.detach()}
        k = prepared.extra["reweight_micro"]
        sums, counts = self._sample_sums(model, prepared)
        means = sums / counts
        if self._weights is None:  # the first micro-batch of the step on this rank
            self._step_weights(model, k, means.detach())
        assert self._weights is not None
        w = self._weights[k].to(device=means.device, dtype=means.dtype)
        return self._total_targets * (w * means).sum(), {"ce_sum": sums.detach().sum()}

