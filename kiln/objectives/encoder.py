"""Encoder objectives: masked language modelling and ELECTRA's replaced-token detection.

- :class:`MaskedLM` (Devlin et al. 2019): ``transforms.mlm`` masking (ratio, 80/10/10) per packed segment,
  bidirectional attention, the ``mlm`` head (tied decoder) on the selected positions; loss summed over them.
- :class:`ELECTRA` (Clark et al. 2020): a small generator (``generator`` head, width x ``generator_ratio``,
  sharing the discriminator's token embeddings) does MLM on 15% of the tokens (85% ``<|mask|>``); its samples
  (Gumbel, T = 1, no gradient) are written in and the discriminator's ``rtd`` head labels every real token
  replaced (1) or original (0), a sample equal to the original counting as original. Loss = L_MLM +
  ``disc_weight`` (50) x L_disc. The trainer divides the summed loss by the step's target count, here the real
  tokens, so the generator's summed CE is scaled by (real / masked) of its micro-batch: both terms are then
  per-token means, as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.transforms.common import IGNORE
from kiln.objectives.transforms.electra import electra_mask, sample_replacements
from kiln.objectives.transforms.mlm import MLMConfig, mlm_mask


def need_vocab(obj: Objective) -> int:
    if obj.vocab_size <= 0:
        raise RuntimeError(f"objective {obj.name!r}: call configure(vocab_size=...) before prepare")
    return obj.vocab_size


def model_inputs(batch: Batch, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """tokens, positions and (under document attention) segments, on the batch's device."""
    out = {"tokens": tokens.to(batch.tokens.device), "positions": batch.positions}
    if batch.attention == "document":
        out["segments"] = batch.segments
    return out


class MaskedLM(Objective):
    """BERT masked language modelling (see the module docstring)."""

    name = "mlm"
    lm_eval = False

    def __init__(self, ratio: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1) -> None:
        self.config = MLMConfig(ratio, mask_prob, random_prob)

    @property
    def heads(self) -> dict[str, dict]:
        return {"mlm": {}}

    def prepare(self, batch: Batch) -> Prepared:
        gen, _ = self.next_generators()
        ex = mlm_mask(batch.tokens.cpu(), need_vocab(self), gen, self.config, segments=batch.segments.cpu(),
                      per_segment=batch.attention == "document")
        tensors = model_inputs(batch, ex.inputs)
        tensors["targets"] = ex.targets.to(batch.tokens.device)
        return Prepared(tensors=tensors, n_targets=ex.n_targets)

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], t["positions"], t.get("segments"), attention="bidirectional")
        selected = t["targets"] != IGNORE
        logits = model.heads["mlm"](hidden[selected], model.backbone.tok_emb.weight)
        loss_sum = F.cross_entropy(logits.float(), t["targets"][selected], reduction="sum")
        return loss_sum, {"mlm_loss_sum": loss_sum.detach()}


class ELECTRA(Objective):
    """Generator MLM + 50 x replaced-token detection (see the module docstring)."""

    name = "electra"
    lm_eval = False

    def __init__(self, generator_ratio: float = 0.25, disc_weight: float = 50.0, mask_ratio: float = 0.15,
                 temperature: float = 1.0) -> None:
        self.generator_ratio, self.disc_weight, self.temperature = generator_ratio, disc_weight, temperature
        self.masking = MLMConfig(ratio=mask_ratio, mask_prob=0.85, random_prob=0.0)

    @property
    def heads(self) -> dict[str, dict]:
        return {"generator": {"ratio": self.generator_ratio}, "rtd": {}}

    def prepare(self, batch: Batch) -> Prepared:
        gen, _ = self.next_generators()
        ex = electra_mask(batch.tokens.cpu(), need_vocab(self), gen, self.masking, segments=batch.segments.cpu())
        device = batch.tokens.device
        tensors = model_inputs(batch, ex.inputs)
        real = batch.segments >= 0
        n_real, n_sel = int(real.sum()), ex.n_targets
        tensors.update(original=batch.tokens, selected=ex.selected.to(device), real=real)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))  # the sampling noise, drawn where the logits are
        return Prepared(tensors, n_targets=n_real, extra={"mlm_scale": n_real / max(n_sel, 1), "seed": seed})

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t, extra = prepared.tensors, prepared.extra
        selected, original, seg = t["selected"], t["original"], t.get("segments")
        emb = model.backbone.tok_emb
        gen_logits = model.heads["generator"](t["tokens"], emb, t["positions"], seg, select=selected)
        mlm_sum = F.cross_entropy(gen_logits.float(), original[selected], reduction="sum")
        noise = torch.Generator(device=gen_logits.device).manual_seed(extra["seed"])
        ex = sample_replacements(original, selected, gen_logits, noise, self.temperature,
                                 segments=torch.where(t["real"], 0, -1))
        hidden = model.backbone(ex.inputs, t["positions"], seg, attention="bidirectional")
        real = t["real"]
        disc_logits = model.heads["rtd"](hidden)[real]
        labels = ex.labels[real]
        bce_sum = F.binary_cross_entropy_with_logits(disc_logits.float(), labels, reduction="sum")
        loss_sum = extra["mlm_scale"] * mlm_sum + self.disc_weight * bce_sum
        with torch.no_grad():
            correct = ((disc_logits > 0).float() == labels).sum()
        return loss_sum, {"gen_loss_sum": mlm_sum.detach(), "disc_bce_sum": bce_sum.detach(),
                          "disc_correct": correct, "replaced": labels.sum()}
