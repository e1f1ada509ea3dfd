"""The Objective interface: the trainer's only view of what is being learned.

An objective turns a packed token batch into model inputs and targets (``prepare``,
cheap, done for all micro-batches of a step first so the loss can be normalised by
the step's true target count), and turns model outputs into a summed loss and named
metrics (``loss``). The trainer knows nothing of any particular objective: it asks for the extra model
``heads`` an objective needs, calls ``configure`` once (vocabulary, context, length of training, seed), then
``fit`` once with the training documents (a no-op unless the objective learns something from the corpus
before training, e.g. ERNIE-Gram's n-gram lexicon; deterministic, so a resumed run rebuilds the same state),
and ``begin_step`` before each step's micro-batches. Randomness in ``prepare`` comes from generators seeded
by (seed, step, micro-batch), so a resumed run draws exactly what an uninterrupted one would.

An objective may own **frozen modules** (a distillation teacher): :meth:`Objective.add_frozen` keeps them in a
plain dict, never as submodules, so they are in no optimizer, no DDP/FSDP2 wrapper and no checkpoint; they are
in eval mode with ``requires_grad`` off. The trainer calls :meth:`Objective.attach` with the training device
once, before wrapping the model: load teachers there (:meth:`Objective.load_frozen`, through
``kiln.model.load.load_model``) so their weights go straight to where they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.data.loader import Batch


@dataclass
class Prepared:
    """Model-ready tensors for one micro-batch and the number of loss targets in it."""

    tensors: dict[str, torch.Tensor]
    n_targets: int
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device) -> Prepared:
        """The tensors on ``device``; from CPU to CUDA through pinned memory without blocking the host, so
        the copy queues behind the GPU's work instead of waiting for it."""
        if device.type == "cuda":
            tensors = {k: v.pin_memory().to(device, non_blocking=True) if v.device.type == "cpu" else v.to(device)
                       for k, v in self.tensors.items()}
        else:
            tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return Prepared(tensors, self.n_targets, self.extra)


class Objective(ABC):
    name: str = "objective"
    # The model ends training as a left-to-right LM, so its LM head's bits per byte mean something. False for
    # encoder objectives (MLM, ELECTRA, ERNIE-Gram, MP3, CLM -> MLM): validation then reports their own loss.
    lm_eval: bool = True
    # Tokens per chunk for objectives whose loss is a softmax over the vocabulary: the head matmul and
    # the loss then run chunk by chunk (kiln/objectives/losses.py); None = full logits. Set by the trainer
    # from ``train.loss_chunk_tokens``.
    loss_chunk_tokens: int | None = None
    # The LM head matmul and the cross-entropy as one torch.compile graph (``losses.compiled_cross_entropy``);
    # set by ``kiln.train.parallel.parallelize(compile=True)`` through :meth:`set_compile_loss`.
    compile_loss: bool = False
    vocab_size: int = 0
    seq_len: int = 0
    total_steps: int = 1
    seed: int = 0
    step: int = 0
    micro: int = 0  # micro-batches prepared so far in this step
    # Every step's loss reaches every trainable parameter (the heads it names, the backbone). False for
    # objectives that switch between objectives using different heads: DDP must then look for unused ones.
    uses_every_head: bool = True
    # Every rank's micro-batches report the same metric names. False for objectives that pick a sub-objective per
    # micro-batch (a mixture of clm + kd: same heads, different metrics): the trainer then agrees on names first.
    same_metrics_on_every_rank: bool = True

    @property
    def heads(self) -> dict[str, dict[str, Any]]:
        """Extra model heads this objective needs (``kiln.model.heads.HEADS`` name -> arguments)."""
        return {}

    def configure(self, *, vocab_size: int, seq_len: int, total_steps: int, seed: int) -> None:
        """What ``prepare`` may need to know about the run; called once by the trainer."""
        self.vocab_size, self.seq_len, self.total_steps, self.seed = vocab_size, seq_len, total_steps, seed

    def heads_used(self, prepared: Prepared) -> set[str]:
        """The heads ``loss`` reaches for ``prepared``: its ``heads``, plus ``lm_head`` for an LM objective."""
        return set(self.heads) | ({"lm_head"} if self.lm_eval else set())

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Modules this objective uses but does not train (teachers): name -> module."""
        return dict(self.__dict__.get("_frozen", {}))

    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        """Own ``module`` frozen: eval mode, no gradients, kept out of the trained model (see the module doc)."""
        module.eval()
        module.requires_grad_(False)
        self.__dict__.setdefault("_frozen", {})[name] = module
        return module

    def load_frozen(self, name: str, path: str, device: torch.device | str = "cpu") -> nn.Module:
        """A frozen module loaded from a kiln checkpoint, run directory or export (``kiln.model.load``); the
        random state is left as it was, so loading a teacher never changes the student's initialisation."""
        from kiln.model.load import load_model

        device = torch.device(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return self.add_frozen(name, load_model(path, device))

    def attach(self, device: torch.device) -> None:
        """Called once by the trainer before the model is wrapped: put frozen modules on ``device`` (an
        objective that loads a teacher from a path overrides this and calls :meth:`load_frozen`)."""
        for module in self.frozen_modules().values():
            module.to(device).eval()

    def set_compile_loss(self, on: bool) -> None:
        """Compile the LM loss (head matmul + cross-entropy) as one graph; objectives made of others pass it on."""
        self.compile_loss = on

    def fit(self, docs: Sequence[np.ndarray]) -> None:
        """Learn what ``prepare`` needs from the training documents (token-id arrays); default: nothing.

        Called once by the trainer after ``configure``, before any step, on every run and rank (also on resume),
        so it must be a deterministic function of ``docs`` and the objective's arguments.
        """
        return None

    def begin_step(self, step: int, micro_offset: int = 0) -> None:
        """Called before the micro-batches of optimizer step ``step`` (0-based) are prepared.

        ``micro_offset``: the step-wide index of this rank's first micro-batch (rank r of a torchrun job
        starts after the micro-batches of ranks < r), so every micro-batch draws what it would in one process.
        """
        self.step, self.micro = step, micro_offset

    def next_generators(self) -> tuple[torch.Generator, np.random.Generator]:
        """Fresh (torch, numpy) generators for the next micro-batch, seeded by (seed, step, micro)."""
        key = [self.seed, self.step, self.micro]
        self.micro += 1
        torch_gen = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        return torch_gen, np.random.default_rng(key)

    @abstractmethod
    def prepare(self, batch: Batch) -> Prepared:
        """Build inputs and targets from a packed batch, on the batch's device (the trainer prepares on the CPU
        and moves the result, so counting targets never waits for the GPU)."""

    @abstractmethod
    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (sum of per-target losses, metrics). The trainer divides by the step's target count."""
