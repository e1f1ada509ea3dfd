"""Mixture-of-experts MLP: top-k routed SwiGLU experts in place of a block's MLP (``model.moe``).

    probs = softmax(router(x))                      router: d_model -> n_experts, no bias, softmax in fp32
    w, e  = top_k(probs);  w = w / sum(w)           the k weights of a token renormalised to sum 1
    y     = sum_j w_j * Expert_{e_j}(x)             Expert = SwiGLU down(silu(gate(x)) * up(x))

Papers: Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
Layer" (arXiv:1701.06538); Lepikhin et al. 2020, "GShard" (arXiv:2006.16668; expert capacity); Fedus, Zoph &
Shazeer 2021, "Switch Transformers" (arXiv:2101.03961; load-balancing loss); Zoph et al. 2022, "ST-MoE:
Designing Stable and Transferable Sparse Expert Models" (arXiv:2202.08906; router z-loss); Jiang et al. 2024,
"Mixtral of Experts" (arXiv:2401.04088; softmax -> top-k -> renormalise, the layout exported to Hugging Face);
enforced routing: Hallee et al. 2024, "Contrastive Learning and Mixture of Experts Enables Precise Vector
Embeddings" (arXiv:2401.15713; one expert per domain, every example sent to its domain's expert).

Auxiliary losses, recorded per forward in :attr:`MoEMLP.stats` (the model holds no training code; the
``moe_aux`` trainer callback, ``kiln/train/moe_aux.py``, adds them to the loss):

- balance (Switch, eq. 4, normalised by k): ``E * sum_i f_i * P_i`` with ``f_i`` the fraction of the N * k
  token-to-expert assignments that chose expert i and ``P_i`` the mean router probability of expert i over
  the N tokens. Perfectly balanced routing (f = P = 1/E) gives its minimum-at-balance value 1; all tokens on
  one expert with probability 1 gives E. Gradients flow through P only.
- z-loss (ST-MoE, eq. 5): ``mean_tokens(logsumexp(router logits)^2)``, keeps router logits small.

Both are taken over every position of the forward (padding included: the MLP sees no mask).

Capacity policy (``capacity_factor``): None (the default) drops nothing: every token reaches its k experts,
however unbalanced, which is exact and what the Hugging Face export computes. A number c caps each expert, in
training only, at ``ceil(c * N * k / E)`` assignments per forward (N tokens of that forward, i.e. of one
micro-batch on one rank); assignments beyond it are dropped in priority order: every token's first choice
before any second choice, earlier tokens first within a choice (GShard). A dropped assignment contributes 0
(the token keeps the residual and its other experts' outputs, weights not renormalised). Evaluation and
inference never drop. The dropped fraction is logged (``moe_dropped``), so drops are never silent.

Enforced routing (:func:`enforced_routing`): every token goes to one given expert with weight 1 (e.g. its
document's domain); the router does not route and both auxiliary losses are 0. Instead the router's logits, on a
detached copy of the hidden states (the backbone is not pulled toward separable domains), give the cross-entropy
against the enforced expert (``RouterStats.route``): a router trained with it routes each token to the expert of
the domain it looks like when no ids are given (``train.route_by_domain``).

Every expert runs on every forward, on an empty batch when no token chose it, so an unrouted expert gets a
zero gradient (not None): DDP and FSDP2 see every parameter. Note that AdamW's weight decay still shrinks an
unrouted expert's weights, as it does any weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import TransformerConfig

__all__ = ["Expert", "MoEMLP", "RouterStats", "balance_loss", "capacity_keep", "enforced_routing", "moe_layers",
           "upcycle", "z_loss"]


class Expert(nn.Module):
    """One SwiGLU expert: down(silu(gate(x)) * up(x)), the same shape as the dense block MLP."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


@dataclass
class RouterStats:
    """One forward's routing: the auxiliary losses (scalars, differentiable) and counts (detached)."""

    balance: Tensor  # Switch load-balancing loss (1 at perfect balance)
    z: Tensor  # router z-loss
    counts: Tensor  # (E,) assignments each expert processed (after capacity)
    dropped: Tensor  # assignments dropped by the capacity cap
    assignments: int  # N * k (N tokens, or N under enforced routing)
    route: Tensor | None = None  # enforced routing: router cross-entropy against the enforced expert


def balance_loss(probs: Tensor, top_idx: Tensor, n_experts: int) -> Tensor:
    """``E * sum_i f_i * P_i``: f_i = share of the (N, k) assignments ``top_idx`` on expert i, P_i = mean
    router probability ``probs`` (N, E) of expert i."""
    f = torch.bincount(top_idx.flatten(), minlength=n_experts).to(probs.dtype) / top_idx.numel()
    return n_experts * (f * probs.mean(0)).sum()


def z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2, in fp32."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def capacity_keep(top_idx: Tensor, n_experts: int, capacity: int) -> Tensor:
    """(N, k) bool: which assignments fit under ``capacity`` per expert, first choices before second ones,
    earlier tokens first."""
    n, k = top_idx.shape
    order = top_idx.t().reshape(-1)  # choice-major: all first choices, then all second choices, ...
    onehot = F.one_hot(order, n_experts)
    rank = (onehot.cumsum(0) * onehot).sum(-1)  # 1-based position of each assignment in its expert's queue
    return (rank <= capacity).view(k, n).t()


class MoEMLP(nn.Module):
    """Top-k routed SwiGLU experts (see the module docstring); ``forward`` records :attr:`stats`."""

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int,
                 capacity_factor: float | None = None) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe.top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d_model, hidden) for _ in range(n_experts))
        self.forced: Tensor | None = None  # enforced routing: expert id per token (B, T) or per row (B,)
        self.stats: RouterStats | None = None  # the last forward's routing

    @classmethod
    def from_config(cls, cfg: TransformerConfig) -> MoEMLP:
        m = cfg.moe
        return cls(cfg.d_model, m["expert_hidden"], m["n_experts"], m["top_k"], m["capacity_factor"])

    @torch.no_grad()
    def load_dense(self, mlp: nn.Module) -> None:
        """Copy a dense SwiGLU's ``w_gate``/``w_up``/``w_down`` into every expert (sparse upcycling; with the
        renormalised top-k weights the layer then computes exactly the dense MLP)."""
        for expert in self.experts:
            for name in ("w_gate", "w_up", "w_down"):
                src, dst = getattr(mlp, name).weight, getattr(expert, name).weight
                if src.shape != dst.shape:
                    raise ValueError(f"load_dense: {name} is {tuple(src.shape)} in the dense MLP, "
                                     f"{tuple(dst.shape)} in the experts (moe.expert_hidden must equal ffn_hidden)")
                dst.copy_(src)

    def _forced_ids(self, batch: int, length: int, device: torch.device) -> Tensor:
        ids = self.forced.to(device=device, dtype=torch.long)
        if ids.dim() == 1 and ids.shape[0] == batch:
            ids = ids[:, None].expand(batch, length)
        if tuple(ids.shape) != (batch, length):
            raise ValueError(f"enforced routing: expert ids must have shape (batch,) = ({batch},) or (batch, seq) = "
                             f"{(batch, length)}, got {tuple(self.forced.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_experts):
            raise ValueError(f"enforced routing: expert ids must be in [0, {self.n_experts}), got "
                             f"{int(ids.min())}..{int(ids.max())}")
        return ids.reshape(-1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> (B, T, d)."""
        B, T, d = x.shape
        flat = x.reshape(-1, d)
        route = None
        if self.forced is not None:
            ids = self._forced_ids(B, T, x.device)
            logits = self.router(flat.detach())  # (N, E)
            route = F.cross_entropy(logits.float(), ids)
            top_idx = ids[:, None]
            top_w = torch.ones(top_idx.shape, dtype=flat.dtype, device=x.device)
            zero = logits.new_zeros((), dtype=torch.float32)
            balance, z = zero, zero
        else:
            logits = self.router(flat)  # (N, E)
            probs = torch.softmax(logits.float(), dim=-1)
            top_p, top_idx = probs.topk(self.top_k, dim=-1)
            top_w = (top_p / top_p.sum(-1, keepdim=True)).to(flat.dtype)
            balance, z = balance_loss(probs, top_idx, self.n_experts), z_loss(logits)
        keep = None
        if self.capacity_factor is not None and self.training:
            capacity = math.ceil(self.capacity_factor * top_idx.numel() / self.n_experts)
            keep = capacity_keep(top_idx, self.n_experts, capacity)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):  # every expert runs, on zero rows when none chose it
            hit = top_idx == e if keep is None else (top_idx == e) & keep
            tok, slot = torch.where(hit)
            y = expert(flat[tok]) * top_w[tok, slot, None]
            out.index_add_(0, tok, y.to(out.dtype))
        if route is not None:  # the router stays in this output's graph (contributing 0): DDP sees every parameter
            out = out + (logits.sum() * 0.0).to(out.dtype)
        with torch.no_grad():
            routed = top_idx if keep is None else top_idx[keep]
            counts = torch.bincount(routed.flatten(), minlength=self.n_experts)
            dropped = torch.tensor(top_idx.numel(), device=x.device) - counts.sum()
        self.stats = RouterStats(balance, z, counts, dropped, top_idx.numel(), route)
        return out.view(B, T, d)


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    """Every :class:`MoEMLP` in ``model``, in module order (layer order)."""
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


@torch.no_grad()
def upcycle(moe_model: nn.Module, dense_model: nn.Module) -> None:
    """Sparse upcycling: load a dense model's weights into ``moe_model`` of the same shape except its MoE
    MLPs, each of which gets copies of that layer's dense MLP in every expert (routers keep their init). The
    result computes exactly the dense model (spec: at init the MoE output equals the dense output)."""
    dense_state = dense_model.state_dict()
    moe_blocks, dense_blocks = moe_model.backbone.blocks, dense_model.backbone.blocks
    if len(moe_blocks) != len(dense_blocks):
        raise ValueError(f"upcycle: the MoE model has {len(moe_blocks)} layers, the dense model {len(dense_blocks)}")
    for name, p in moe_model.state_dict().items():
        parts = name.split(".")
        in_block_mlp = parts[:2] == ["backbone", "blocks"] and parts[3] == "mlp"
        if in_block_mlp and isinstance(moe_blocks[int(parts[2])].mlp, MoEMLP):
            continue
        if name not in dense_state or dense_state[name].shape != p.shape:
            got = tuple(dense_state[name].shape) if name in dense_state else "missing"
            raise ValueError(f"upcycle: {name} is {tuple(p.shape)} in the MoE model, {got} in the dense model")
        p.copy_(dense_state[name])
    for moe_block, dense_block in zip(moe_blocks, dense_blocks, strict=True):
        if isinstance(moe_block.mlp, MoEMLP):
            moe_block.mlp.load_dense(dense_block.mlp)


@contextmanager
def enforced_routing(model: nn.Module, expert_ids: Tensor) -> Iterator[None]:
    """Inside the block, every MoE layer of ``model`` sends each token to the expert ``expert_ids`` names
    ((B,) per row, or (B, T) per token), with weight 1, instead of routing it (one expert per domain)."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("enforced routing needs mixture-of-experts layers; this model has none (set model.moe)")
    for layer in layers:
        layer.forced = expert_ids
    try:
        yield
    finally:
        for layer in layers:
            layer.forced = None
