"""Sparse training as trainer callbacks: static masks (SPDF) and gradual magnitude pruning (The Journey Matters).

- ``spdf`` (:class:`StaticMask`): "SPDF: Sparse Pre-training and Dense Fine-tuning for Large Language Models"
  (Vithursan Thangarasa, Abhay Gupta, William Marshall, Tianda Li, Kevin Leong, Dennis DeCoste, Sean Lie,
  Shreyas Saxena, 2023, arXiv:2303.10464). Before the first step, a fixed unstructured mask removes the
  ``sparsity`` fraction of every targeted matrix (default: every 2-D weight of the transformer blocks, i.e. the
  q/k/v/out projections and the MLP matrices; embeddings, LM head and norms stay dense): ``mask=random``
  (seeded, the same on every rank) or ``mask=magnitude`` (the smallest |w|). Gradients of masked weights are
  zeroed after backward and the weights are set to 0 again after every optimizer step, so AdamW's moments and
  weight decay never revive them: masked weights are exactly 0 throughout. **Dense fine-tuning**: either
  ``dense_from: N`` (masks dropped after step N of the same run), or a new run with
  ``train.init_from: <sparse run>`` and no mask callback: it starts from the sparse weights (their zeros) and
  trains every weight.
- ``gradual_pruning`` (:class:`GradualPruning`): Zhu & Gupta's gradual magnitude pruning (arXiv:1710.01878)
  with the schedule of "The Journey Matters" (Jin et al. 2025, arXiv:2501.12486) by default: dense to 25% of
  the training steps, cubic ramp to ``final_sparsity`` at 75%, constant after (kiln/train/sparsity_schedule.py).
  Each update prunes, per matrix, the smallest-magnitude weights still kept (masks only grow).

Both log in every train row of ``metrics.jsonl``: ``sparsity`` (masked fraction of the targeted weights now),
``n_params_unmasked`` (the model's parameters minus the masked ones), ``n_params_bar`` (N̄: the parameter count
in effect averaged over the steps trained so far, Journey's average parameter count), ``flops_per_token_sparse``
(training FLOPs per token counting only unmasked matmul weights, :func:`kiln.model.flops.sparse_flops_per_token`)
and ``flops_per_token_bar`` (its average over the steps so far; times ``tokens`` = the run's sparse FLOPs).

Checkpoints: every checkpoint folder gets ``sparsity_masks.safetensors`` (the full keep-masks as uint8, by
parameter name); a resumed run reloads them (when the file is missing, e.g. a crash between the checkpoint and
the masks, the masks are read off the checkpoint's zeros, which are exactly the masked weights), and rebuilds
N̄'s running sum from the schedule, which fixes how many weights each step masks. A rollback
(``train.on_nonfinite=rollback``) reloads the masks of the checkpoint it returns to. The weights themselves hold
the zeros, so eval, generate and ``kiln export`` see a plain (dense-format) model with zeros, never masks.

Under DDP every rank computes the same masks; under FSDP2 masks are kept per local shard and computed from the
gathered full matrix (a collective every rank runs), so per-step losses equal one process.

This module imports no torch at import time (the recipe validates callback arguments through it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kiln.train.callbacks import TrainerCallback, TrainState
from kiln.train.sparsity_schedule import PruningSchedule, pruned_count

if TYPE_CHECKING:
    import torch

MASKS_FILE = "sparsity_masks.safetensors"
MASK_KINDS = ("random", "magnitude")
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def clean_name(name: str) -> str:
    """A parameter's name without activation-checkpointing / compile wrapper prefixes (as in the state dict)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor gathered from every rank (a collective), else the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local_part(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (shaped like ``p``) that this rank holds of ``p``: all of it unless ``p`` is an FSDP2
    DTensor, then its shard (computed locally: every rank has the same ``full``, no communication)."""
    if not hasattr(p, "to_local"):
        return full.to(p.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(_local(p).device), p.device_mesh, p.placements, src_data_rank=None).to_local()


def gather_mask(p: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """The full bool mask of ``p`` from this rank's shard of it (a collective under FSDP2)."""
    if not hasattr(p, "to_local"):
        return local
    import torch
    from torch.distributed.tensor import DTensor

    dt = DTensor.from_local(local.to(torch.uint8), p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
    return dt.full_tensor().bool()


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool keep-mask of ``scores``' shape with exactly its ``k`` lowest entries False (ties: first wins)."""
    import torch

    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:k]] = False
    return keep.view(scores.shape)


class SparseTraining(TrainerCallback):
    """Shared machinery: targets, masks (local shards), re-masking, accounting, checkpointing of the masks.

    Subclasses define :meth:`initial_masks` (before the first step), :meth:`update` (after a step) and
    :meth:`masked_in_step` (how many weights step ``t`` trains masked: deterministic, so a resumed run rebuilds
    N̄'s running sum)."""

    name = "sparse_training"

    def __init__(self, include: str = "backbone.blocks") -> None:
        self.include = include
        self.masks: dict[str, torch.Tensor] = {}  # clean parameter name -> bool keep-mask of its local shard
        self._drop: dict[str, torch.Tensor] = {}  # the masks' negations (what masked_fill_ zeroes)
        self.pruned: dict[str, int] = {}  # clean name -> masked weights in the full matrix
        self.numel: dict[str, int] = {}  # clean name -> weights in the full matrix
        self.matmul: set[str] = set()  # targets that are matmul weights (count in the FLOPs)
        self.total_steps = 1
        self.n_dense = 0  # the model's parameter count (each shared tensor once)
        self.dense = False  # masks dropped (dense fine-tuning)
        self.step = 0  # optimizer steps the masks and sums are for
        self.masked_sum = 0  # sum over the steps trained of the masked weights in effect (for N̄)
        self.matmul_masked_sum = 0  # the same, matmul weights only (for the average FLOPs)

    # ------------------------------------------------------------------ subclass interface
    def initial_masks(self, state: TrainState, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, state: TrainState, params: dict[str, torch.nn.Parameter], step: int) -> None:
        """After optimizer step ``step`` (the masks were applied): change the masks if the method does."""

    def masked_in_step(self, step: int) -> tuple[int, int]:
        """(all, matmul) weights masked during optimizer step ``step`` (1-based)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def targets(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The masked parameters by clean name: 2-D, trained, with ``include`` in the name."""
        return {clean_name(n): p for n, p in model.named_parameters()
                if self.include in clean_name(n) and p.dim() == 2 and p.requires_grad}

    def set_masks(self, params: dict[str, torch.nn.Parameter], full: dict[str, torch.Tensor]) -> None:
        """Install full keep-masks (identical on every rank): local shards kept, counts recorded."""
        for name, keep in full.items():
            self.masks[name] = local_part(params[name], keep)
            self._drop[name] = ~self.masks[name]
            self.pruned[name] = int(keep.numel() - keep.sum())

    def apply(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Masked weights to exactly 0 (masked_fill: also over inf/nan)."""
        if self.dense:
            return
        for name, p in params.items():
            _local(p.detach()).masked_fill_(self._drop[name], 0)

    def _static_counts(self, fraction: float) -> tuple[int, int]:
        counts = {n: pruned_count(fraction, self.numel[n]) for n in self.numel}
        return sum(counts.values()), sum(c for n, c in counts.items() if n in self.matmul)

    def _load_masks(self, state: TrainState, params: dict[str, torch.nn.Parameter]) -> None:
        """Masks of the checkpoint at ``state.step`` (resume, rollback): its masks file, else its zeros."""
        import torch

        ckpt = Path(state.out_dir or ".") / "checkpoints" / f"step-{state.step:06d}"
        file = ckpt / MASKS_FILE
        if file.exists():
            from safetensors.torch import load_file

            saved = load_file(str(file))
            missing = sorted(set(params) - set(saved))
            if missing:
                raise ValueError(f"{file}: no mask for {missing[0]} (the masks were saved for other parameters: "
                                 f"was `include` changed?)")
            full = {n: saved[n].bool() for n in params}
        else:  # a crash between the checkpoint and its masks: the masked weights are its exact zeros
            from kiln.progress import log

            log(f"[yellow]{self.name}: {file} missing; masks read off the checkpoint's zero weights[/yellow]")
            full = {n: _full(p.detach()) != 0 for n, p in params.items()}
        self.set_masks(params, {n: m.to(torch.bool) for n, m in full.items()})

    def _record(self, state: TrainState) -> None:
        """This step's numbers into the train row (after the step's accounting and any mask update)."""
        from kiln.model.flops import sparse_flops_per_token

        cfg, seq = state.model.config, state.model.config.max_seq_len
        masked = 0 if self.dense else sum(self.pruned.values())
        matmul = 0 if self.dense else sum(v for n, v in self.pruned.items() if n in self.matmul)
        n = max(self.step, 1)
        state.metrics["sparsity"] = masked / max(sum(self.numel.values()), 1)
        state.metrics["n_params_unmasked"] = self.n_dense - masked
        state.metrics["n_params_bar"] = self.n_dense - self.masked_sum / n
        state.metrics["flops_per_token_sparse"] = sparse_flops_per_token(cfg, seq, matmul)
        state.metrics["flops_per_token_bar"] = sparse_flops_per_token(cfg, seq, self.matmul_masked_sum / n)

    # ------------------------------------------------------------------ callback points
    def on_train_begin(self, state: TrainState) -> None:
        params = self.targets(state.model)
        if not params:
            raise ValueError(f"{self.name}.include: no 2-D trained parameter name contains {self.include!r}")
        self.total_steps = max(int(getattr(state.objective, "total_steps", 1)), 1)
        self.n_dense = state.model.num_params()
        self.numel = {n: p.numel() for n, p in params.items()}
        lm_head = getattr(getattr(state.model, "lm_head", None), "weight", None)
        emb = getattr(getattr(getattr(state.model, "backbone", None), "tok_emb", None), "weight", None)
        self.matmul = {n for n, p in params.items() if p is lm_head or p is not emb and "emb" not in n}
        self.step = state.step
        self.masks, self._drop, self.pruned = {}, {}, {}
        counts = [self.masked_in_step(t) for t in range(1, state.step + 1)]  # N̄'s running sums, replayed
        self.masked_sum = sum(c[0] for c in counts)
        self.matmul_masked_sum = sum(c[1] for c in counts)
        self.dense = self.is_dense_after(state.step)
        if self.dense:
            return
        if state.step == 0:
            self.set_masks(params, self.initial_masks(state, params))
        else:
            self._load_masks(state, params)
        self.apply(params)

    def is_dense_after(self, step: int) -> bool:
        """Whether the masks are dropped once ``step`` steps are done (dense fine-tuning)."""
        return False

    def on_step_begin(self, state: TrainState) -> None:
        """Before the step's forward: after a rollback, the checkpoint's masks; after a skipped step, that step's
        accounting and mask update (so the next forward already uses them, as in a run without the skip)."""
        if state.step < self.step:  # a rollback (train.on_nonfinite=rollback): back to that checkpoint's masks
            self.on_train_begin(state)
            return
        if state.step > self.step:  # steps skipped by train.on_nonfinite=skip
            params = self.targets(state.model)
            for t in range(self.step + 1, state.step + 1):
                self._advance(state, params, t)

    def after_backward(self, state: TrainState) -> None:
        if self.dense:
            return
        params = self.targets(state.model)
        for name, p in params.items():
            if p.grad is not None:
                _local(p.grad).masked_fill_(self._drop[name], 0)

    def after_optimizer_step(self, state: TrainState) -> None:
        params = self.targets(state.model)
        self.apply(params)
        self._advance(state, params, state.step)
        self._record(state)

    def _advance(self, state: TrainState, params: dict[str, torch.nn.Parameter], step: int) -> None:
        """Step ``step`` done: its masked weights into the running sums, then drop or update the masks."""
        self.step = step
        masked, matmul = self.masked_in_step(step)
        self.masked_sum += masked
        self.matmul_masked_sum += matmul
        if not self.dense and self.is_dense_after(step):
            self.dense = True
            self.masks, self._drop, self.pruned = {}, {}, {}
        elif not self.dense:
            self.update(state, params, step)

    def on_checkpoint(self, state: TrainState, path: Path) -> None:
        if self.dense:
            return
        import torch

        params = self.targets(state.model)
        full = {n: gather_mask(params[n], m).to(torch.uint8).cpu().contiguous() for n, m in self.masks.items()}
        if state.rank == 0:
            from safetensors.torch import save_file

            from kiln import atomic

            with atomic.staged_path(Path(path) / MASKS_FILE) as tmp:
                save_file(full, str(tmp), metadata={"step": str(state.step), "callback": self.name})


class StaticMask(SparseTraining):
    """SPDF: one fixed mask for the whole (sparse) run; ``dense_from`` drops it after that step."""

    name = "spdf"

    def __init__(self, sparsity: float, include: str = "backbone.blocks", mask: str = "random", seed: int = 0,
                 dense_from: int | None = None) -> None:
        super().__init__(include)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"{self.name}.sparsity: must be in [0, 1), got {sparsity}")
        if mask not in MASK_KINDS:
            raise ValueError(f"{self.name}.mask: must be one of {', '.join(MASK_KINDS)}, got {mask!r}")
        if dense_from is not None and (int(dense_from) != dense_from or dense_from < 0):
            raise ValueError(f"{self.name}.dense_from: a step number >= 0, got {dense_from}")
        self.sparsity, self.mask, self.seed, self.dense_from = float(sparsity), mask, int(seed), dense_from

    def initial_masks(self, state: TrainState, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        import torch

        out = {}
        for i, (name, p) in enumerate(sorted(params.items())):
            k = pruned_count(self.sparsity, p.numel())
            if self.mask == "random":
                gen = torch.Generator().manual_seed(self.seed * 100_003 + i)
                scores = torch.rand(tuple(p.shape), generator=gen)
            else:
                scores = _full(p.detach()).abs().float().cpu()
            out[name] = prune_lowest(scores, k)
        return out

    def is_dense_after(self, step: int) -> bool:
        return self.dense_from is not None and step >= self.dense_from

    def masked_in_step(self, step: int) -> tuple[int, int]:
        if self.dense_from is not None and step > self.dense_from:
            return 0, 0
        return self._static_counts(self.sparsity)


class GradualPruning(SparseTraining):
    """Gradual magnitude pruning on a :class:`PruningSchedule` (default: The Journey Matters' schedule)."""

    name = "gradual_pruning"

    def __init__(self, final_sparsity: float, start: float = 0.25, end: float = 0.75, ramp: str = "cubic",
                 every: int = 1, include: str = "backbone.blocks") -> None:
        super().__init__(include)
        self.schedule = PruningSchedule(float(final_sparsity), float(start), float(end), ramp, int(every))

    def _prune_to(self, params: dict[str, torch.nn.Parameter], sparsity: float) -> dict[str, torch.Tensor]:
        """Full keep-masks at ``sparsity`` per matrix: the smallest |w| among the weights still kept."""
        out = {}
        for name, p in sorted(params.items()):
            k = pruned_count(sparsity, p.numel())
            if self.masks and k == self.pruned.get(name):
                continue
            scores = _full(p.detach()).abs().float()
            if name in self.masks:  # already pruned weights stay pruned: lowest scores of all
                scores = scores.masked_fill(~gather_mask(p, self.masks[name]).to(scores.device), -1.0)
            out[name] = prune_lowest(scores, k)
        return out

    def initial_masks(self, state: TrainState, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        return self._prune_to(params, self.schedule.update_target(0, self.total_steps))

    def update(self, state: TrainState, params: dict[str, torch.nn.Parameter], step: int) -> None:
        if step % self.schedule.every or step >= self.total_steps:
            return
        changed = self._prune_to(params, self.schedule.update_target(step, self.total_steps))
        if changed:
            self.set_masks(params, changed)
            self.apply(params)

    def masked_in_step(self, step: int) -> tuple[int, int]:
        return self._static_counts(self.schedule.step_sparsity(step, self.total_steps))

    def closed_form_n_bar(self) -> float:
        """Journey's N̄ = N_dense - N_prunable * mean sparsity (continuous schedule; needs on_train_begin)."""
        return self.n_dense - sum(self.numel.values()) * self.schedule.mean_sparsity()
