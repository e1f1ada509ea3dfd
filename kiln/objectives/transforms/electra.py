"""ELECTRA's input side: generator masking and replaced-token-detection labels (Clark et al. 2020, sec. 2).

1. ``electra_mask``: MLM masking for the small generator with ``ELECTRA_MASKING`` -- 15% of tokens selected,
   85% of them replaced by ``<|mask|>`` and 15% left unchanged (no random replacement), as in the reference
   ``pretrain/pretrain_helpers.py`` (``mask_prob`` 0.15, 85% ``[MASK]``).
2. ``sample_replacements``: at the selected positions, sample x^ ~ softmax(generator logits / T) with T = 1 by
   the Gumbel-max trick, without gradient (the generator is trained by its MLM loss only). The discriminator
   input is the original sequence with the samples written in; its label is 1 exactly where the token differs
   from the original ("replaced only if different": a sample equal to the original counts as original).
   Its loss covers every real (non-padding) token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.objectives.transforms.mlm import MLMConfig, MLMExample, mlm_mask

ELECTRA_MASKING = MLMConfig(ratio=0.15, mask_prob=0.85, random_prob=0.0)


@dataclass
class ELECTRAExample:
    """Discriminator ``inputs``; ``labels`` (1.0 replaced, 0.0 original); ``loss_mask`` over real tokens."""

    inputs: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    sampled: torch.Tensor  # the generator's samples at the selected positions (original id elsewhere)


def electra_mask(tokens: torch.Tensor, vocab_size: int, generator: torch.Generator,
                 config: MLMConfig = ELECTRA_MASKING, segments: torch.Tensor | None = None) -> MLMExample:
    """The generator's MLM inputs and targets (``mlm_mask`` with ELECTRA's 85% / 0% / 15% split)."""
    return mlm_mask(tokens, vocab_size, generator, config, segments)


def gumbel_sample(logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    """argmax(logits / T + Gumbel noise): an exact sample from softmax(logits / T) along the last dim."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    u = u.clamp(torch.finfo(torch.float32).tiny, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    return torch.argmax(logits.float() / temperature + gumbel, dim=-1)


@torch.no_grad()
def sample_replacements(tokens: torch.Tensor, selected: torch.Tensor, logits: torch.Tensor,
                        generator: torch.Generator, temperature: float = 1.0,
                        segments: torch.Tensor | None = None) -> ELECTRAExample:
    """Build the discriminator's inputs and labels from the generator's logits.

    ``tokens`` (B, L) are the original ids, ``selected`` (B, L) the generator's masked positions and ``logits``
    either (B, L, V) or (n_selected, V) -- the generator's logits at the selected positions in row-major order.
    """
    if logits.dim() == 3:
        logits = logits[selected]
    if logits.shape[0] != int(selected.sum()):
        raise ValueError(f"need one row of logits per selected position ({int(selected.sum())}), got {logits.shape[0]}")
    samples = gumbel_sample(logits.detach(), generator, temperature).to(tokens.dtype)
    inputs = tokens.clone()
    inputs[selected] = samples
    real = torch.ones_like(selected) if segments is None else segments >= 0
    labels = ((inputs != tokens) & real).float()
    return ELECTRAExample(inputs=inputs, labels=labels, loss_mask=real, sampled=inputs)
