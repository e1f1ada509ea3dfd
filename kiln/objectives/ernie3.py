"""ERNIE 3.0: a shared backbone under an auto-encoding (NLU) and an auto-regressive (NLG) task module.

Sun et al. 2021, "ERNIE 3.0: Large-scale Knowledge Enhanced Pre-training for Language Understanding and
Generation", arXiv:2107.02137, sec. 3.1 (universal and task-specific representation modules) and 3.2
(knowledge-enhanced pretraining, Universal Knowledge-Text Prediction).

Layout in a kiln model of ``n_layer`` blocks (``nlg_layers`` = k):

- **universal representation** (shared): the token embedding and blocks ``0 .. n-k-1``. Each task runs them
  with its own attention mask: bidirectional for NLU, causal for NLG (``attention=`` per call).
- **NLG module**: blocks ``n-k .. n-1``, the final norm and the LM head, i.e. the top of the model itself, so
  the NLG path *is* ``model(tokens)``: generation, bits-per-byte evaluation and ``kiln export`` (a plain decoder,
  the ``task_module`` head left out) use exactly the trained NLG path, nothing silently dropped.
- **NLU module**: the ``task_module`` head (``kiln/model/task_module.py``: ``nlu_layers`` bidirectional blocks,
  ``nlu_ratio`` x the width, as the paper's task modules are narrower than the shared one), reading the residual
  stream after the shared blocks and decoding masked tokens with the tied token embedding. It is not part of
  generation or export (an NLU fine-tune would take it from the checkpoint).

NLU loss: masked-token cross-entropy on UKTP-masked inputs (``ernie3_uktp.py``: entities of the
``knowledge_triples`` block masked in the triple and in their text mentions together, BERT masking elsewhere).
NLG loss: next-token cross-entropy on the unmasked tokens. The step's targets are the NLG targets; each
micro-batch's NLU sum is scaled by (NLG targets / NLU targets), so both terms are per-token means (as ELECTRA's
generator term): loss = ``nlg_weight`` x NLG + ``nlu_weight`` x NLU. Logged as ``nlg_loss_per_target``,
``nlu_loss_per_target`` and ``kg_masked_per_target`` (knowledge-masked tokens per NLG target).

The NLU pass runs every backbone block (the top k unused): the price of reading the residual stream after the
shared blocks through the model's one forward (``output_hidden_states``) rather than a second loop over blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.loader import Batch
from kiln.model.targets import next_token_targets
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.clm import lm_loss_sum
from kiln.objectives.encoder import need_vocab
from kiln.objectives.ernie3_uktp import uktp_mask
from kiln.objectives.transforms.common import IGNORE
from kiln.objectives.transforms.mlm import MLMConfig

NLU_HEAD = "task_module"


class ERNIE3(Objective):
    """Joint NLU (UKTP masked LM through a task module) and NLG (causal LM through the model's top blocks)."""

    name = "ernie3"

    def __init__(self, nlg_layers: int = 1, nlu_layers: int = 1, nlu_ratio: float = 0.5, nlu_weight: float = 1.0,
                 nlg_weight: float = 1.0, mask_ratio: float = 0.15, kg_prob: float = 0.5) -> None:
        for key, value in (("nlg_layers", nlg_layers), ("nlu_layers", nlu_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.objective_args.{key}: expected an integer >= 1, got {value!r}")
        if not 0.0 < nlu_ratio <= 1.0:
            raise ValueError(f"train.objective_args.nlu_ratio: expected a number in (0, 1], got {nlu_ratio!r}")
        for key, value in (("nlu_weight", nlu_weight), ("nlg_weight", nlg_weight)):
            if value < 0:
                raise ValueError(f"train.objective_args.{key}: expected a number >= 0, got {value!r}")
        if not 0.0 <= kg_prob <= 1.0:
            raise ValueError(f"train.objective_args.kg_prob: expected a number in [0, 1], got {kg_prob!r}")
        self.nlg_layers, self.nlu_layers, self.nlu_ratio = nlg_layers, nlu_layers, float(nlu_ratio)
        self.nlu_weight, self.nlg_weight, self.kg_prob = float(nlu_weight), float(nlg_weight), float(kg_prob)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"train.objective_args.mask_ratio: expected a number in (0, 1), got {mask_ratio!r}")
        self.masking = MLMConfig(ratio=mask_ratio)

    @property
    def heads(self) -> dict[str, dict]:
        return {NLU_HEAD: {"layers": self.nlu_layers, "ratio": self.nlu_ratio}}

    def shared_layers(self, model: nn.Module) -> int:
        """How many bottom blocks both tasks share: ``n_layer - nlg_layers`` (at least one)."""
        n_layer = len(model.backbone.blocks)
        if self.nlg_layers >= n_layer:
            raise ValueError(f"train.objective_args.nlg_layers ({self.nlg_layers}) must be below model.n_layer "
                             f"({n_layer}): the shared backbone keeps n_layer - nlg_layers blocks")
        return n_layer - self.nlg_layers

    def prepare(self, batch: Batch) -> Prepared:
        gen, _ = self.next_generators()
        doc = batch.attention == "document"
        ex = uktp_mask(batch.tokens.cpu(), need_vocab(self), gen, self.masking, segments=batch.segments.cpu(),
                       per_segment=doc, kg_prob=self.kg_prob)
        device = batch.tokens.device
        targets = next_token_targets(batch)
        tensors = {"tokens": batch.tokens, "positions": batch.positions, "targets": targets,
                   "nlu_inputs": ex.inputs.to(device), "nlu_targets": ex.targets.to(device),
                   "kg_masked": ex.knowledge.sum().reshape(1).float().to(device)}
        if doc:
            tensors["segments"] = batch.segments
        n_nlg, n_nlu = int((targets != IGNORE).sum()), ex.n_targets
        return Prepared(tensors, n_targets=n_nlg, extra={"nlu_scale": n_nlg / max(n_nlu, 1)})

    def nlu_logits(self, model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                   segments: torch.Tensor | None = None, select: torch.Tensor | None = None) -> torch.Tensor:
        """The NLU path: shared blocks (bidirectional) -> task module -> MLM logits ((B, T, V) or (n, V))."""
        n_shared = self.shared_layers(model)
        out = model.backbone(tokens, positions, segments, attention="bidirectional", output_hidden_states=True)
        return model.heads[NLU_HEAD](out.hidden_states[n_shared], model.backbone.tok_emb.weight, positions,
                                     segments, attention="bidirectional", select=select)

    def nlu_loss(self, model: nn.Module, prepared: Prepared) -> torch.Tensor:
        """Summed masked-token cross-entropy of the NLU path (unscaled)."""
        t = prepared.tensors
        selected = t["nlu_targets"] != IGNORE
        logits = self.nlu_logits(model, t["nlu_inputs"], t["positions"], t.get("segments"), select=selected)
        return F.cross_entropy(logits.float(), t["nlu_targets"][selected], reduction="sum")

    def nlg_loss(self, model: nn.Module, prepared: Prepared) -> torch.Tensor:
        """Summed next-token cross-entropy of the NLG path (the whole model, causal)."""
        t = prepared.tensors
        self.shared_layers(model)
        hidden = model.backbone(t["tokens"], t["positions"], t.get("segments"), attention="causal")
        return lm_loss_sum(model, hidden, t["targets"], self.loss_chunk_tokens, self.compile_loss)

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nlu = prepared.extra["nlu_scale"] * self.nlu_loss(model, prepared)
        nlg = self.nlg_loss(model, prepared)
        total = self.nlg_weight * nlg + self.nlu_weight * nlu
        return total, {"nlg_loss_sum": nlg.detach(), "nlu_loss_sum": nlu.detach(),
                       "kg_masked": prepared.tensors["kg_masked"].sum()}
