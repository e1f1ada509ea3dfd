"""Language-model evaluation: loss per token and bits per byte.

Bits per byte (bpb) is the tokenizer-independent metric (as in nanochat and the
Pile paper, Gao et al. 2020): the summed next-token loss in nats over the validation
targets, divided by ln 2 and by the UTF-8 bytes those targets stand for. Every kiln
token id maps to a fixed byte string (byte-level BPE), so the byte count is exact.
The loss of predicting ``<|eos|>`` (0 bytes) is kept in the numerator: the model is
charged for knowing where a document ends.

The unigram byte baseline gives scale: the cross-entropy of the validation bytes
under the training split's byte frequencies (add-one smoothed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kiln.corpus.files import iter_text_batches
from kiln.data.loader import Batch
from kiln.objectives.clm import IGNORE, next_token_targets
from kiln.progress import track
from kiln.train.domain_routing import batch_routing


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, batches: Iterable[Batch], token_bytes: np.ndarray, device: torch.device,
                precision: str = "fp32", total: int | None = None, desc: str | None = None) -> dict:
    """Loss (nats/token) and bits per byte of a causal LM over the given batches."""
    was_training = model.training
    model.eval()
    tb = torch.as_tensor(token_bytes, dtype=torch.float64, device=device)
    nats = 0.0
    n_targets = 0
    n_bytes = 0.0
    it = track(batches, desc, total=total) if desc else batches
    for batch in it:
        batch = batch.to(device)
        targets = next_token_targets(batch)
        segments = batch.segments if batch.attention == "document" else None
        with autocast_for(device, precision), batch_routing(model, batch):  # domains: train.route_by_domain
            logits = model(batch.tokens, positions=batch.positions, segments=segments)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                 reduction="none")
        valid = targets.flatten() != IGNORE
        nats += float(losses[valid].double().sum())
        n_targets += int(valid.sum())
        n_bytes += float(tb[targets.flatten()[valid]].sum())
    model.train(was_training)
    if n_targets == 0:
        raise ValueError("evaluation saw no targets: the validation split is empty")
    return {
        "loss": nats / n_targets,
        "bpb": nats / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "n_targets": n_targets,
        "n_bytes": int(n_bytes),
    }


def _byte_counts(corpus_dir: Path, split: str) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    for texts in iter_text_batches(corpus_dir, split, batch_rows=1024):
        counts += np.bincount(np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8), minlength=256)
    return counts


def unigram_bpb(corpus_dir: Path) -> float:
    """Cross-entropy (bits/byte) of the val split's bytes under add-one-smoothed train byte frequencies
    (streamed over the corpus folder's Parquet parts)."""
    train, val = _byte_counts(corpus_dir, "train"), _byte_counts(corpus_dir, "val")
    probs = (train + 1) / (train.sum() + 256)
    return float(-(val * np.log2(probs)).sum() / max(val.sum(), 1))
