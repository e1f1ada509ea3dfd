"""ORCA-ICL: score pretraining documents by how well their LM-loss gradient aligns with an in-context task's gradient.

Han, Simig, Mihaylov, Tsvetkov, Celikyilmaz, Wang 2023, "Understanding In-Context Learning via Supportive
Pretraining Data" (ACL 2023, arXiv 2306.15091), Algorithm 1. At fixed weights theta0:

- ``g_task`` = the gradient of the summed in-context loss on the answer tokens over k-shot prompts
  (:func:`task_gradient`; prompts are ``(context ids, answer ids)``, only the answer tokens are targets);
- per document, ``g_doc`` = the gradient of its mean next-token loss over its first ``max_tokens`` tokens
  (:func:`doc_loss`, :func:`doc_gradients`), always at theta0;
- score = cos(g_doc, g_task); the top k are the "supportive" documents.

Everything here works on token ids and a kiln :class:`~kiln.model.heads.LanguageModel`; the corpus step
(:mod:`kiln.corpus.selection.orca_steps`) adds tokenizers and task files.

**Random projection (a kiln choice; the paper uses the full gradients).** A full gradient has ``n`` floats
(every selected parameter), too many to keep per document, so :class:`GradientProjector` maps each gradient
to ``dim`` floats with a fixed random matrix ``R`` (entries +-1 (Rademacher) or N(0, 1), scaled by
``1/sqrt(dim)``): ``E[<Rg, Rh>] = <g, h>`` and the relative error of an inner product of unit vectors is
at most about ``sqrt(2/dim)`` (Johnson-Lindenstrauss), so cosines are kept to a few hundredths at ``dim = 1024``
(:mod:`kiln.corpus.selection.orca_projection`). ``R`` is never built whole: its rows for each parameter tensor are
generated in blocks of ``block_rows`` rows (default: 16 MiB of float32 per block), each block from its own
generator seeded by ``(seed, parameter name, block index)``, so the same seed gives the same projection in every
process and for any parameter subset (the block size is part of the projection: keep ``block_bytes`` fixed).
Memory: one block (``block_rows x dim x 4`` bytes) plus, while a batch of ``m`` documents is projected, their
``m x n`` gradients; when ``n x dim x 4`` bytes fit under ``cache_bytes`` (default 512 MiB, i.e. ~131k
parameters at ``dim = 1024``) the blocks are kept instead of regenerated for every batch. Cost per batch:
``m x n x dim`` multiply-adds, plus ``n x dim`` random draws when not cached. ``kind: sparse`` is a CountSketch
(Charikar, Chen, Farach-Colton 2002; a sparse JL transform with one nonzero per coordinate): each coordinate is
added, with a seeded sign, to one seeded output, so projecting costs O(n) per document and the cache 12 bytes per
parameter: the choice for models of millions of parameters, where the dense matrix is not cached and regenerating
it costs ``n x dim`` draws per batch; its error is larger when a gradient's mass sits on few coordinates.
``kind: auto`` (the step's default) takes the dense Rademacher matrix when it fits the cache, else the CountSketch.
Measured on one CPU thread, a 5.3M-parameter model (4 layers, d_model 256) and 256-token documents: exact
gradients 2.5 docs/s, ``sparse`` 1.7 docs/s, uncached ``rademacher`` 0.17 docs/s (and 91 s for the task gradient).
``dim = 0`` skips the projection and computes exact cosines from the full gradients (small models; the reference
the projection is tested against).

``parameter_subset`` restricts the gradients to part of the model (``no_embeddings``: no token/position
embeddings or LM head; ``attention_mlp``: only the attention and MLP matrices of the blocks; or a list of
``fnmatch`` patterns over parameter names), cutting ``n`` and the cost.

**Iteration** (:func:`orca_rounds`, Algorithm 1's outer loop): after each round's top k, ``theta_i`` = one pass
of Adam over the union of all selections so far, starting from ``theta0``; ``g_task`` is recomputed at
``theta_i`` while document gradients stay at ``theta0`` (so they are projected once).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from kiln.corpus.selection.orca_projection import KINDS, GradientProjector, cosine_to

__all__ = ["KINDS", "GradientProjector", "OrcaRounds", "OrcaScorer", "cosine_to", "doc_gradients", "doc_loss",
           "one_pass_adam", "orca_rounds", "prompt_loss", "select_parameters", "task_gradient"]

PromptIds = tuple[Sequence[int], Sequence[int]]  # (context token ids, answer token ids)
SUBSETS = ("all", "no_embeddings", "attention_mlp")
_EMBEDDING_NAMES = ("backbone.tok_emb.*", "backbone.pos_emb.*", "lm_head.*")
_ATTENTION_MLP_NAMES = ("backbone.blocks.*.attn.*.weight", "backbone.blocks.*.mlp.*.weight")


def select_parameters(model: torch.nn.Module, subset: str | Sequence[str] = "all"
                      ) -> list[tuple[str, torch.nn.Parameter]]:
    """The ``(name, parameter)`` pairs whose gradients ORCA uses (a tied weight once, in module order).

    ``subset``: ``all`` | ``no_embeddings`` | ``attention_mlp`` (see the module docstring) or a list of
    ``fnmatch`` patterns over parameter names (a parameter is kept if any pattern matches)."""
    named = list(model.named_parameters())  # shared tensors appear once
    if isinstance(subset, str):
        if subset not in SUBSETS:
            raise ValueError(f"params_subset {subset!r}: expected one of {', '.join(SUBSETS)} or a list of patterns")
        if subset == "all":
            keep = named
        elif subset == "no_embeddings":
            tied = {id(p) for n, p in named if any(fnmatch.fnmatch(n, pat) for pat in _EMBEDDING_NAMES)}
            keep = [(n, p) for n, p in named if id(p) not in tied]
        else:
            keep = [(n, p) for n, p in named if any(fnmatch.fnmatch(n, pat) for pat in _ATTENTION_MLP_NAMES)]
    else:
        keep = [(n, p) for n, p in named if any(fnmatch.fnmatch(n, pat) for pat in subset)]
    if not keep:
        names = ", ".join(n for n, _ in named[:6])
        raise ValueError(f"params_subset {subset!r} matches no parameter of the model (names look like: {names}, ...)")
    return keep


# ----------------------------------------------------------------------------- gradients


def _windows(ids: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Windows of at most ``max_seq_len`` tokens overlapping by one: each token after the first is a target once."""
    ids = list(ids)
    step = max_seq_len - 1
    windows = [ids[s : s + max_seq_len] for s in range(0, max(len(ids) - 1, 1), step)]
    return [w for w in windows if len(w) >= 2]


def doc_loss(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor | None:
    """Mean next-token cross-entropy over a document's token ids (None when it has no target)."""
    device = next(model.parameters()).device
    total, count = None, 0
    for w in _windows(ids, int(model.config.max_seq_len)):
        x = torch.as_tensor(w, dtype=torch.long, device=device)[None]
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum")
        total = loss if total is None else total + loss
        count += len(w) - 1
    return None if total is None else total / count


def prompt_loss(model: torch.nn.Module, prompts: Sequence[PromptIds], batch_size: int = 16) -> Iterator[torch.Tensor]:
    """Summed cross-entropy on the answer tokens of each batch of prompts (context left-truncated to fit)."""
    device = next(model.parameters()).device
    limit = int(model.config.max_seq_len)
    rows = []
    for i, (ctx, ans) in enumerate(prompts):
        if not len(ans):
            raise ValueError(f"prompt {i}: the answer has no tokens")
        if len(ans) >= limit:
            raise ValueError(f"prompt {i}: answer of {len(ans)} tokens does not fit the context ({limit})")
        whole = [*ctx, *ans][-(limit + 1):]
        rows.append((whole, len(ans)))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(w) for w, _ in chunk) - 1
        tokens = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long, device=device)
        for r, (w, n_ans) in enumerate(chunk):
            seq = torch.as_tensor(w, dtype=torch.long, device=device)
            tokens[r, : len(w) - 1] = seq[:-1]
            targets[r, len(w) - 1 - n_ans : len(w) - 1] = seq[-n_ans:]
        logits = model(tokens)  # causal: right padding never reaches a real token
        yield F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


def task_gradient(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], prompts: Sequence[PromptIds],
                  batch_size: int = 16) -> list[torch.Tensor]:
    """Gradient (one flat tensor per parameter) of the summed answer-token loss over all ``prompts``."""
    if not prompts:
        raise ValueError("no task prompts to take the gradient of")
    acc = [torch.zeros(p.numel(), device=p.device) for p in params]
    for loss in prompt_loss(model, prompts, batch_size):
        for a, g in zip(acc, torch.autograd.grad(loss, list(params)), strict=True):
            a.add_(g.reshape(-1).float())
    return acc


def doc_gradients(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], docs: Sequence[Sequence[int]]
                  ) -> Iterator[list[torch.Tensor] | None]:
    """Per document, its mean-loss gradient (one flat tensor per parameter), or None when it has no target."""
    for ids in docs:
        loss = doc_loss(model, ids)
        yield None if loss is None else [g.reshape(-1).float() for g in torch.autograd.grad(loss, list(params))]


# ----------------------------------------------------------------------------- scoring


@dataclass
class OrcaScorer:
    """ORCA scores at fixed weights: ``fit_task`` takes g_task, ``score`` gives cos(g_doc, g_task) per document.

    ``proj_dim = 0``: exact cosines from full gradients; otherwise through a :class:`GradientProjector`.
    ``grad_batch`` documents' full gradients are held at once and projected together (memory:
    ``grad_batch x n`` floats)."""

    model: torch.nn.Module
    subset: str | Sequence[str] = "all"
    proj_dim: int = 1024
    seed: int = 0
    kind: str = "rademacher"
    grad_batch: int = 16
    cache_bytes: int = 512 << 20
    prompt_batch: int = 16
    named: list[tuple[str, torch.nn.Parameter]] = field(init=False)
    projector: GradientProjector | None = field(init=False)
    task: list[torch.Tensor] | torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.model.eval()
        self.named = select_parameters(self.model, self.subset)
        chosen = {id(p) for _, p in self.named}
        for p in self.model.parameters():  # gradients only where they are used
            p.requires_grad_(id(p) in chosen)
        device = next(self.model.parameters()).device
        self.projector = None if self.proj_dim == 0 else GradientProjector(
            [(n, p.numel()) for n, p in self.named], self.proj_dim, self.seed, self.kind,
            cache_bytes=self.cache_bytes, device=device)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named]

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def fit_task(self, prompts: Sequence[PromptIds]) -> OrcaScorer:
        g = task_gradient(self.model, self.params, prompts, self.prompt_batch)
        if self.projector is None:
            self.task = g
        else:
            self.task = self.projector.project([t[None] for t in g])[0]
        return self

    def embed(self, docs: Sequence[Sequence[int]]) -> np.ndarray:
        """Projected document gradients (len(docs), proj_dim), NaN rows for documents without a target."""
        if self.projector is None:
            raise ValueError("embed needs a projection (proj_dim > 0)")
        out = np.full((len(docs), self.proj_dim), np.nan, dtype=np.float32)
        for start in range(0, len(docs), self.grad_batch):
            grads = list(doc_gradients(self.model, self.params, docs[start : start + self.grad_batch]))
            rows = [i for i, g in enumerate(grads) if g is not None]
            if rows:
                stacked = [torch.stack([grads[i][j] for i in rows]) for j in range(len(self.named))]
                out[[start + i for i in rows]] = self.projector.project(stacked).cpu().numpy()
        return out

    def score(self, docs: Sequence[Sequence[int]]) -> np.ndarray:
        """cos(g_doc, g_task) per document (float64; NaN for a document without a target)."""
        if self.task is None:
            raise ValueError("call fit_task before score")
        if self.projector is not None:
            return cosine_to(self.embed(docs), self.task.cpu().numpy())
        out = np.full(len(docs), np.nan)
        t_norm = math.sqrt(sum(float(t.square().sum()) for t in self.task))
        for i, g in enumerate(doc_gradients(self.model, self.params, docs)):
            if g is not None:
                dot = sum(float(a.double() @ b.double()) for a, b in zip(g, self.task, strict=True))
                norm = math.sqrt(sum(float(a.square().sum()) for a in g))
                out[i] = dot / (norm * t_norm) if norm > 0 and t_norm > 0 else 0.0
        return out


# ----------------------------------------------------------------------------- iteration


def one_pass_adam(model: torch.nn.Module, docs: Sequence[Sequence[int]], lr: float = 2e-5, batch_size: int = 16,
                  seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` after one pass of Adam over ``docs`` (shuffled by ``seed``; batch loss = mean of the
    documents' mean token losses), every parameter trained."""
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(True)
    out.train()
    opt = torch.optim.Adam(out.parameters(), lr=lr)
    order = np.random.default_rng(seed).permutation(len(docs))
    for start in range(0, len(order), batch_size):
        losses = [loss for i in order[start : start + batch_size] if (loss := doc_loss(out, docs[i])) is not None]
        if not losses:
            continue
        opt.zero_grad(set_to_none=True)
        torch.stack(losses).mean().backward()
        opt.step()
    out.eval()
    return out


@dataclass
class OrcaRounds:
    """What :func:`orca_rounds` returns: the documents picked in each round and the scores each round ranked by."""

    selected: list[list[int]]
    scores: list[np.ndarray]

    @property
    def union(self) -> list[int]:
        return [i for picked in self.selected for i in picked]


def orca_rounds(model: torch.nn.Module, docs: Sequence[Sequence[int]], prompts: Sequence[PromptIds], k: int,
                rounds: int = 1, lr: float = 2e-5, batch_size: int = 16, subset: str | Sequence[str] = "all",
                proj_dim: int = 1024, seed: int = 0, kind: str = "rademacher") -> OrcaRounds:
    """ORCA's iteration: each round takes the top ``k`` not yet selected by cos(g_doc(theta0), g_task(theta_i)),
    then theta_{i+1} = :func:`one_pass_adam` from theta0 over all selections so far. ``model`` is not changed."""
    if k < 1 or rounds < 1:
        raise ValueError(f"orca_rounds needs k >= 1 and rounds >= 1, got k={k}, rounds={rounds}")
    if proj_dim == 0:
        raise ValueError("orca_rounds projects document gradients once: proj_dim must be > 0")
    theta0 = copy.deepcopy(model)
    base = OrcaScorer(theta0, subset, proj_dim, seed, kind)
    embedded = base.embed(docs)
    current: torch.nn.Module = theta0
    selected: list[list[int]] = []
    all_scores: list[np.ndarray] = []
    taken = np.zeros(len(docs), dtype=bool)
    for r in range(rounds):
        scorer = base if r == 0 else OrcaScorer(current, subset, proj_dim, seed, kind)
        scorer.fit_task(prompts)
        scores = cosine_to(embedded, scorer.task.cpu().numpy())  # type: ignore[union-attr]
        all_scores.append(scores)
        ranked = [int(i) for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable") if not taken[i]]
        picked = ranked[:k]
        taken[picked] = True
        selected.append(picked)
        if r + 1 < rounds:
            current = one_pass_adam(theta0, [docs[i] for i in np.flatnonzero(taken)], lr, batch_size, seed + r)
    return OrcaRounds(selected, all_scores)
