"""Parallelism applied from outside the model, in a fixed order: checkpointing, compile, data parallel.

The model code knows nothing of any of this; :func:`parallelize` rewrites a built ``LanguageModel`` in place
(as torchtitan does, Liang et al. 2024) in this order, each step seeing the result of the one before:

1. **Activation checkpointing** (``parallel.activation_checkpointing``; Chen et al. 2016). ``full`` wraps
   every ``backbone.blocks[i]`` in a non-reentrant ``torch.utils.checkpoint`` wrapper, so only block inputs
   are kept for backward and each block's forward runs again there; ``selective`` wraps every other block
   (indices 0, 2, 4, ...), about half the saving for about half the recompute. The state-dict keys do not
   change (the wrapper strips its own prefix), so checkpoints load into unwrapped models.
2. **torch.compile per block, and the loss** (``parallel.compile``): ``block.compile()`` in place, on the
   checkpointed block when 1. applied; and the objective's LM loss (head matmul + fp32 cross-entropy) as one
   more graph (``Objective.set_compile_loss``; torchtitan compiles the loss separately too), so the fp32
   logits are fused away instead of written out. Off by default; off, nothing is compiled and the loss is
   bit-identical.
3. **Data parallel** (``parallel.strategy``): ``single`` (one process), ``ddp``
   (``DistributedDataParallel``, Li et al. 2020) or ``fsdp`` (FSDP2 ``fully_shard`` per block, then the root;
   on CUDA with ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``). ``auto`` = ``single`` at
   world size 1, else ``ddp`` below 1e9 parameters, else ``fsdp``.

Objectives call ``model.backbone(...)`` and ``model.lm_head(...)``, never ``model.forward``, and DDP only
synchronises gradients (and FSDP2 only gathers the root's parameters) when the forward runs through the
wrapper. So what gets wrapped is :class:`TrainModule`, whose ``forward`` runs the objective's loss on the
inner model: the trainer calls ``root(prepared=p)`` and the whole loss runs inside DDP's / FSDP2's forward.
``root(tokens, positions=..., segments=...)`` is the plain ``LanguageModel`` forward (for evaluation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.train.dist import DistEnv
from kiln.train.domain_routing import prepared_routing

STRATEGIES = ("auto", "single", "ddp", "fsdp")
AC_MODES = ("none", "full", "selective")
FSDP_ABOVE_PARAMS = 1_000_000_000  # auto: FSDP at or above this many parameters


class TrainModule(nn.Module):
    """The module data parallelism wraps: ``forward(prepared=p)`` is ``objective.loss(model, p)``.

    Any other call is the language model's own forward. ``model`` is the (possibly checkpointed/compiled)
    ``LanguageModel``; attribute access (``.backbone``, ``.lm_head``) stays on it.
    """

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective  # a Module objective (own parameters) is registered and wrapped too

    def forward(self, *args: Any, prepared: Prepared | None = None, objective: Objective | None = None,
                touch: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """``objective.loss(model, prepared)`` (the training objective unless another is given, e.g. the
        validation copy), else the language model's forward.

        ``touch``: heads (``lm_head`` or a name in ``model.heads``) added to the loss with weight 0, so they
        get a zero gradient on this rank: FSDP2 reduce-scatters the gradients a rank holds, so every rank must
        hold the same set when a switching objective used a head on another rank only.
        """
        if prepared is None:
            return self.model(*args, **kwargs)
        with prepared_routing(self.model, prepared):  # train.route_by_domain: tokens to their domain's expert
            loss_sum, metrics = (objective or self.objective).loss(self.model, prepared)
        for name in touch:
            head = self.model.lm_head if name == "lm_head" else self.model.heads[name]
            loss_sum = loss_sum + 0.0 * sum(p.sum() for p in head.parameters())
        return loss_sum, metrics


class ThroughRoot(Objective):
    """``objective`` whose ``loss`` runs inside ``root``'s forward, whatever model it is handed.

    Under FSDP2 the root's parameters (embeddings, heads, final norm) are gathered only in the root's forward,
    so an objective's own validation loss must go through it, exactly like a training step.
    """

    def __init__(self, objective: Objective, root: nn.Module) -> None:
        self.inner, self.root = objective, root
        self.name, self.lm_eval, self.total_steps = objective.name, objective.lm_eval, objective.total_steps

    def begin_step(self, step: int, micro_offset: int = 0) -> None:
        self.inner.begin_step(step, micro_offset)

    def prepare(self, batch: Batch) -> Prepared:
        return self.inner.prepare(batch)

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.root(prepared=prepared, objective=self.inner)


def resolve_strategy(name: str, world_size: int, n_params: int) -> str:
    """``auto`` -> single / ddp / fsdp (see the module docstring); explicit names are checked."""
    if name not in STRATEGIES:
        raise ValueError(f"parallel.strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        if world_size == 1:
            return "single"
        return "fsdp" if n_params >= FSDP_ABOVE_PARAMS else "ddp"
    if name == "single" and world_size > 1:
        raise ValueError(f"parallel.strategy=single but torchrun started {world_size} ranks; use ddp or fsdp")
    return name


def blocks_of(model: nn.Module) -> nn.ModuleList:
    return model.backbone.blocks


def apply_activation_checkpointing(model: nn.Module, mode: str) -> int:
    """Wrap blocks in non-reentrant checkpointing (``full``: all, ``selective``: even indices); the count."""
    if mode not in AC_MODES:
        raise ValueError(f"parallel.activation_checkpointing must be one of {AC_MODES}, got {mode!r}")
    if mode == "none":
        return 0
    blocks = blocks_of(model)
    wrapped = 0
    for i, block in enumerate(blocks):
        if mode == "full" or i % 2 == 0:
            blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, preserve_rng_state=False)
            wrapped += 1
    return wrapped


def apply_compile(model: nn.Module, objective: Objective) -> None:
    """``torch.compile`` each block in place and the objective's LM loss (after checkpointing, before data
    parallelism)."""
    for block in blocks_of(model):
        block.compile()
    objective.set_compile_loss(True)


def apply_fsdp(root: TrainModule, device: torch.device, env: DistEnv) -> None:
    """FSDP2: ``fully_shard`` every block, then the root; bf16 params / fp32 reductions on CUDA."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (env.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if device.type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = blocks_of(root.model)
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again first in backward: keep them gathered
        fully_shard(block, reshard_after_forward=i < len(blocks) - 1, **kwargs)
    fully_shard(root, **kwargs)


@dataclass
class Parallelized:
    """What the trainer holds: ``root`` (call it), ``model`` (the inner LanguageModel: parameters, state)."""

    root: nn.Module
    model: nn.Module
    strategy: str
    activation_checkpointing: str
    compiled: bool

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation calls: the root under FSDP2 (its hooks gather parameters), else the model."""
        return self.root if self.strategy == "fsdp" else self.model

    def eval_objective(self, objective: Objective) -> Objective:
        """The objective evaluation runs with ``eval_model``: under FSDP2 its loss goes through the root's
        forward (:class:`ThroughRoot`), else it is ``objective`` itself."""
        return ThroughRoot(objective, self.root) if self.strategy == "fsdp" else objective

    @contextlib.contextmanager
    def sync(self, enabled: bool) -> Iterator[None]:
        """Gradient synchronisation on (last micro-batch) or off (the others: accumulate locally)."""
        if enabled or self.strategy == "single":
            yield
        elif self.strategy == "ddp":
            with self.root.no_sync():
                yield
        else:  # fsdp
            self.root.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.root.set_requires_gradient_sync(True)


def parallelize(model: nn.Module, objective: Objective, *, strategy: str, activation_checkpointing: str = "none",
                compile: bool = False, device: torch.device, env: DistEnv) -> Parallelized:
    """Apply checkpointing, compile and data parallelism to ``model`` (on ``device``) in that order.

    ``strategy`` must already be resolved (:func:`resolve_strategy`). Build the optimizer afterwards: FSDP2
    replaces the parameters by sharded DTensors.
    """
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        apply_compile(model, objective)
    root = TrainModule(model, objective)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else env.local_rank] if device.type == "cuda" else None
        # an objective that leaves some heads out of some steps (clm_mlm, mixture), or an encoder objective with
        # an untied LM head it never uses, needs DDP to look for parameters without a gradient; a zero-weighted
        # touch would hand AdamW zero gradients (weight decay, moment updates) where one process has none
        untied_unused = not objective.lm_eval and not getattr(getattr(model, "config", None), "tie_embeddings", True)
        root = DistributedDataParallel(root, device_ids=ids,
                                       find_unused_parameters=not objective.uses_every_head or untied_unused)
    elif strategy == "fsdp":
        apply_fsdp(root, device, env)
    elif strategy != "single":
        raise ValueError(f"unresolved strategy {strategy!r}")
    return Parallelized(root, model, strategy, activation_checkpointing, compile)
