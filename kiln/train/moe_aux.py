"""The ``moe_aux`` trainer callback: mixture-of-experts auxiliary losses and expert utilisation.

The MoE layers (``kiln/model/moe.py``) record each forward's load-balancing loss (Fedus, Zoph & Shazeer 2021,
"Switch Transformers", arXiv:2101.03961) and router z-loss (Zoph et al. 2022, "ST-MoE", arXiv:2202.08906);
this callback adds them to every micro-batch's loss:

    to_backprop = loss_sum + n_targets * (aux_loss_weight * mean_layers(balance) + z_loss_weight * mean_layers(z))

with the weights from ``model.moe``. ``loss_sum`` is summed over the micro-batch's targets and the trainer
divides by the step's global target count, so the auxiliary term of a step is the target-weighted mean over its
micro-batches: the same under DDP / FSDP2 as in one process reading the same micro-batches. The mean over
layers keeps a weight's meaning independent of depth. The logged ``loss`` stays the objective's.

Logged in every train row (summed over ranks): ``moe_balance`` and ``moe_z`` (target-weighted means, before
weighting), ``moe_tokens`` (per MoE layer, the assignments each expert processed in the step),
``moe_load_max`` (the busiest expert's share over the even share 1/E, worst layer; 1 = perfectly balanced),
``moe_dropped`` (share of assignments dropped by ``capacity_factor``; 0 without one).

Under enforced routing (``train.route_by_domain``) the balancing and z losses are 0 and the router is trained
instead to predict the enforced expert: ``+ n_targets * route_weight * mean_layers(route cross-entropy)``, on
detached hidden states (only the router learns from it); logged as ``moe_route``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.train.callbacks import TrainerCallback, TrainState

if TYPE_CHECKING:
    import torch

    from kiln.objectives.base import Prepared


class MoEAux(TrainerCallback):
    name = "moe_aux"

    def __init__(self, route_weight: float = 1.0) -> None:
        if route_weight < 0:
            raise ValueError(f"moe_aux: route_weight must be >= 0, got {route_weight}")
        self.route_weight = route_weight
        self.layers: list = []
        self._reset()

    def _reset(self) -> None:
        self._balance = self._z = self._route = 0.0
        self._forced = False
        self._targets = 0
        self._counts: list[torch.Tensor] = []
        self._dropped = self._assignments = 0.0

    def on_train_begin(self, state: TrainState) -> None:
        from kiln.model.moe import moe_layers

        self.layers = moe_layers(state.model)
        cfg = getattr(state.model, "config", None)
        if not self.layers or getattr(cfg, "moe", None) is None:
            raise ValueError("train.callbacks moe_aux: the model has no mixture-of-experts layers (set model.moe)")
        self.aux_weight, self.z_weight = cfg.moe["aux_loss_weight"], cfg.moe["z_loss_weight"]
        self._reset()

    def micro_loss(self, state: TrainState, prepared: Prepared, loss_sum: torch.Tensor) -> torch.Tensor:
        import torch

        stats = [layer.stats for layer in self.layers]
        if any(s is None for s in stats):
            raise RuntimeError("moe_aux: an MoE layer recorded no routing in this micro-batch's forward")
        for layer in self.layers:
            layer.stats = None  # a later micro-batch must not read this forward's routing
        balance = torch.stack([s.balance for s in stats]).mean()
        z = torch.stack([s.z for s in stats]).mean()
        n = prepared.n_targets
        self._balance += float(balance.detach()) * n
        self._z += float(z.detach()) * n
        self._targets += n
        counts = [s.counts.detach().double().cpu() for s in stats]
        self._counts = counts if not self._counts else [a + b for a, b in zip(self._counts, counts, strict=True)]
        self._dropped += float(sum(float(s.dropped) for s in stats))
        self._assignments += float(sum(s.assignments for s in stats))
        aux = self.aux_weight * balance + self.z_weight * z
        if all(s.route is not None for s in stats):
            route = torch.stack([s.route for s in stats]).mean()
            self._route += float(route.detach()) * n
            self._forced = True
            aux = aux + self.route_weight * route
        return loss_sum + aux.to(loss_sum.dtype) * n

    def after_backward(self, state: TrainState) -> None:
        from kiln.train import dist

        if not self._counts:
            return
        n_layers, n_experts = len(self._counts), len(self._counts[0])
        flat = [c for layer in self._counts for c in layer.tolist()]
        device = self.layers[0].router.weight.device
        reduced = dist.all_reduce_sum([self._balance, self._z, float(self._targets), self._dropped,
                                       self._assignments, self._route, *flat], device)
        balance, z, targets, dropped, assignments, route = reduced[:6]
        tokens = [[int(v) for v in reduced[6 + i * n_experts: 6 + (i + 1) * n_experts]] for i in range(n_layers)]
        loads = [max(layer) * n_experts / max(sum(layer), 1) for layer in tokens]
        state.metrics.update({"moe_balance": balance / max(targets, 1.0), "moe_z": z / max(targets, 1.0),
                              "moe_load_max": max(loads), "moe_dropped": dropped / max(assignments, 1.0),
                              "moe_tokens": tokens})
        if self._forced:
            state.metrics["moe_route"] = route / max(targets, 1.0)
        self._reset()


def implied_callbacks(model_config: object, callbacks: list[TrainerCallback]) -> list[TrainerCallback]:
    """``[MoEAux()]`` when ``model_config`` has mixture-of-experts layers and ``callbacks`` holds no ``MoEAux``,
    else ``[]``: for the trainer to append, so a MoE model never trains without its auxiliary losses."""
    if getattr(model_config, "moe", None) is None or any(isinstance(cb, MoEAux) for cb in callbacks):
        return []
    return [MoEAux()]
