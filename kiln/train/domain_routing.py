"""``train.route_by_domain``: enforced routing of every token to its document's domain expert.

Hallee et al. 2024, "Contrastive Learning and Mixture of Experts Enables Precise Vector Embeddings"
(arXiv:2401.15713): a mixture-of-experts model with one expert per domain, each example sent to its domain's
expert. The domain is a corpus metadata column numbered by the tokens stage (``tokens.domain_field``,
:mod:`kiln.data.domains`); batches carry it per token (``Batch.domains``). In training and validation the ids ride
in ``Prepared.extra["expert_ids"]`` and :class:`kiln.train.parallel.TrainModule` runs the objective's forward
inside :func:`kiln.model.moe.enforced_routing`, so every objective whose rows keep the batch's shape works
unchanged, under DDP and FSDP2 too.

The router is not used for those tokens; the ``moe_aux`` callback instead trains it to predict the domain
(cross-entropy of its logits against the enforced expert, ``moe_route`` in the train rows), so a model used
without metadata (generation, tasks, export) routes each token to the expert of the domain it looks like.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from kiln.model.moe import enforced_routing

if TYPE_CHECKING:
    from torch import nn

    from kiln.data.loader import Batch
    from kiln.objectives.base import Prepared

EXPERT_IDS = "expert_ids"


def check_route_by_domain(moe: dict[str, Any] | None, domains: list[str] | None, tokens_dir: object) -> None:
    """The run can route by domain: the model has MoE layers with one expert per domain of the tokens."""
    if moe is None:
        raise ValueError("train.route_by_domain needs mixture-of-experts layers: set model.moe (n_experts = the "
                         "number of domains)")
    if domains is None:
        raise ValueError(f"train.route_by_domain: the tokens in {tokens_dir} carry no domain ids; set "
                         "tokens.domain_field (e.g. source)")
    if moe["n_experts"] != len(domains):
        raise ValueError(f"train.route_by_domain: model.moe.n_experts is {moe['n_experts']} but the tokens have "
                         f"{len(domains)} domains ({', '.join(domains)}); set model.moe.n_experts={len(domains)}")


def attach_expert_ids(prepared: Prepared, batch: Batch) -> Prepared:
    """``prepared`` with the batch's per-token domains as the expert ids (padding -> expert 0), when it has any."""
    if batch.domains is None:
        return prepared
    tokens = prepared.tensors.get("tokens")
    if tokens is not None and tuple(tokens.shape) != tuple(batch.domains.shape):
        raise ValueError(f"train.route_by_domain: the objective's rows are {tuple(tokens.shape)}, the batch's "
                         f"{tuple(batch.domains.shape)}; routing by domain needs an objective that keeps the "
                         "batch's token layout")
    prepared.extra[EXPERT_IDS] = batch.domains.clamp(min=0)
    return prepared


def prepared_routing(model: nn.Module, prepared: Prepared):
    """The context a forward on ``prepared`` runs in: enforced routing when it carries expert ids."""
    ids = prepared.extra.get(EXPERT_IDS)
    return nullcontext() if ids is None else enforced_routing(model, ids)


def batch_routing(model: nn.Module, batch: Batch):
    """The context a plain language-model forward on ``batch`` runs in (validation bits per byte)."""
    return nullcontext() if batch.domains is None else enforced_routing(model, batch.domains.clamp(min=0))
