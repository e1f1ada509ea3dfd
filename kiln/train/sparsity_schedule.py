"""Gradual pruning schedules and their time-averaged sparsity (torch-free: the recipe validates them).

Zhu & Gupta's gradual magnitude pruning ("To prune, or not to prune: exploring the efficacy of pruning for
model compression", Michael Zhu, Suyog Gupta, 2017, arXiv:1710.01878) raises a layer's sparsity from 0 to a
final ``s_f`` over ``n`` pruning steps with the cubic ramp

    s(u) = s_f * (1 - (1 - u)^3),   u in [0, 1] the position inside the pruning window,

pruning fast at first (while many redundant weights are left) and slowly at the end. "The Journey Matters:
Average Parameter Count over Pre-training Unifies Sparse and Dense Scaling Laws" (Tian Jin, Ahmed Imtiaz
Humayun, Utku Evci, Suvinay Subramanian, Amir Yazdanbakhsh, Dan Alistarh, Gintare Karolina Dziugaite, 2025,
arXiv:2501.12486) finds that what predicts a sparse pre-training run's loss is the *average* non-zero
parameter count over training, N̄, and that a near-optimal schedule is: dense for the first 25% of the
training compute, gradual pruning of the linear layers' weights until 75%, constant sparsity after. That is
this module's default (``start=0.25, end=0.75, ramp=cubic``); ``start``/``end`` as other fractions of
``train.steps`` give Zhu & Gupta's general form, and ``ramp=linear`` a linear ramp.

The time-averaged sparsity has a closed form (:meth:`PruningSchedule.mean_sparsity`):

    mean s = s_f * [(end - start) * m + (1 - end)],   m = 3/4 (cubic), 1/2 (linear),

so for the Journey schedule mean s = 0.625 s_f and N̄ = N_dense - N_prunable * 0.625 s_f.

Discretisation (what the callback does, :meth:`PruningSchedule.step_sparsity`): compute is spread evenly
over ``train.steps`` optimizer steps, step ``t`` (1-based) covering the fraction ``[(t-1)/T, t/T]``. Masks
are updated after every ``every``-th optimizer step (and before the first one), each update aiming at the
schedule's sparsity at the middle of the next step, so with ``every=1`` the step-average of the sparsity is
the midpoint rule of the integral above (error O(1/T^2)).
"""

from __future__ import annotations

from dataclasses import dataclass

RAMPS = ("cubic", "linear")
RAMP_MEAN = {"cubic": 0.75, "linear": 0.5}  # the integral of the ramp over u in [0, 1]


@dataclass(frozen=True)
class PruningSchedule:
    final_sparsity: float
    start: float = 0.25  # fraction of train.steps at which pruning starts (dense before)
    end: float = 0.75  # fraction at which the final sparsity is reached (constant after)
    ramp: str = "cubic"
    every: int = 1  # optimizer steps between mask updates

    def __post_init__(self) -> None:
        where = "gradual_pruning"
        if not 0.0 <= self.final_sparsity < 1.0:
            raise ValueError(f"{where}.final_sparsity: must be in [0, 1), got {self.final_sparsity}")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"{where}.start/end: need 0 <= start < end <= 1 (fractions of train.steps), got "
                             f"start={self.start}, end={self.end}")
        if self.ramp not in RAMPS:
            raise ValueError(f"{where}.ramp: must be one of {', '.join(RAMPS)}, got {self.ramp!r}")
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"{where}.every: must be a positive integer number of steps, got {self.every}")

    def sparsity_at(self, x: float) -> float:
        """Target sparsity at the fraction ``x`` of the training compute."""
        if x <= self.start:
            return 0.0
        if x >= self.end:
            return self.final_sparsity
        u = (x - self.start) / (self.end - self.start)
        ramp = 1.0 - (1.0 - u) ** 3 if self.ramp == "cubic" else u
        return self.final_sparsity * ramp

    def mean_sparsity(self) -> float:
        """Closed form of the sparsity averaged over the whole run (see the module docstring)."""
        return self.final_sparsity * ((self.end - self.start) * RAMP_MEAN[self.ramp] + (1.0 - self.end))

    def update_target(self, done: int, total: int) -> float:
        """The sparsity the masks get when updated after ``done`` optimizer steps (0: before the first): the
        schedule's value at the middle of step ``done + 1``."""
        return self.sparsity_at((done + 0.5) / max(total, 1))

    def last_update(self, step: int) -> int:
        """The ``done`` count of the mask update in effect during step ``step`` (1-based)."""
        return ((step - 1) // self.every) * self.every

    def step_sparsity(self, step: int, total: int) -> float:
        """The target sparsity of the masks in effect during optimizer step ``step`` (1-based)."""
        return self.update_target(self.last_update(step), total)


def pruned_count(sparsity: float, numel: int) -> int:
    """How many of a matrix's ``numel`` weights are masked at ``sparsity`` (rounded to the nearest)."""
    return min(int(round(sparsity * numel)), numel)


STATIC = {"spdf", "magnitude_mask", "kiln.train.sparsity:StaticMask", "kiln.train.callbacks_builtin:MagnitudeMask"}
GRADUAL = {"gradual_pruning", "kiln.train.sparsity:GradualPruning"}


def mean_masked_fraction(callbacks: list[dict], steps: int) -> float:
    """The run-averaged masked fraction of the block matmul weights that ``train.callbacks`` specs give over
    ``steps`` optimizer steps (0.0 without a sparsity callback): for sparse-aware FLOPs before training, e.g.
    ``sparse_flops_per_token(cfg, seq, fraction * block_matmul_params(cfg))`` in an equal-FLOPs budget. Only
    callbacks on the default target set (``include: backbone.blocks``) count: another set is not the block
    matmuls, and ValueError says so."""
    total = 0.0
    for spec in callbacks:
        name = spec.get("name")
        if name not in STATIC | GRADUAL:
            continue
        if spec.get("include", "backbone.blocks") != "backbone.blocks":
            raise ValueError(f"train.callbacks {name}: include={spec['include']!r} is not the block matmuls; the "
                             "sparse FLOPs of another target set are not computed before training")
        if name in STATIC:
            dense_from = spec.get("dense_from")
            share = 1.0 if dense_from is None else min(int(dense_from), steps) / max(steps, 1)
            total += float(spec["sparsity"]) * share
        else:
            args = {k: spec[k] for k in ("start", "end", "ramp", "every") if k in spec}
            total += PruningSchedule(float(spec["final_sparsity"]), **args).mean_sparsity()
    if total >= 1.0:
        raise ValueError(f"train.callbacks: the sparsity callbacks mask {total:.3f} of the block weights (>= 1)")
    return total
