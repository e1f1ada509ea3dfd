"""A reference kiln model for scoring documents: locate a checkpoint and its tokenizer, score bits per byte.

Used by the perplexity filter (Wenzek et al. 2020, CCNet; Marion et al. 2023, "When Less is More:
Investigating Data Pruning for Pretraining LLMs at Scale"). A document's score is its bits per byte
under the model, computed exactly as kiln's eval does (:mod:`kiln.eval.lm`): summed next-token loss
in nats over the document's targets (``<|eos|>`` included), divided by ln 2 and by the UTF-8 bytes
those targets stand for (``token_bytes.npy``), so scores are comparable across tokenizers.

A document is encoded as ``<|bos|> ... <|eos|>`` and cut to ``max_tokens``. The model only sees
``max_seq_len`` tokens at once, so a longer document is cut into windows that overlap by one token
(as kiln's packing does): every token after the first is a target exactly once, with at most one
window of context. Windows of all documents are batched (sorted by length) on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kiln.data.loader import Batch
from kiln.model.load import ModelLoadError, load_model, resolve_model_dir
from kiln.model.targets import IGNORE, next_token_targets
from kiln.tokenizer.special import PAD
from kiln.tokenizer.train import TOKENIZER_FILE, load_token_bytes, load_tokenizer


class ReferenceModelError(FileNotFoundError):
    """A reference checkpoint or tokenizer that cannot be found; the message says where it looked."""


def resolve_checkpoint(path: Path) -> Path:
    """The model folder for ``path``: a ``step-N`` folder, the latest one under a ``checkpoints/`` folder, a
    ``train/`` stage folder or a run dir, or a ``kiln export`` folder (:func:`kiln.model.load.resolve_model_dir`)."""
    try:
        return resolve_model_dir(path)
    except ModelLoadError as exc:
        raise ReferenceModelError(str(exc)) from None


def resolve_tokenizer(checkpoint: Path, tokenizer: Path | None) -> Path:
    """``tokenizer`` if given, else the ``tokenizer/`` stage folder of the run that holds ``checkpoint``."""
    if tokenizer is not None:
        if not (Path(tokenizer) / TOKENIZER_FILE).exists():
            raise ReferenceModelError(f"{tokenizer}: no {TOKENIZER_FILE} here")
        return Path(tokenizer)
    for parent in checkpoint.resolve().parents:
        if (parent / "tokenizer" / TOKENIZER_FILE).exists():
            return parent / "tokenizer"
    raise ReferenceModelError(f"no tokenizer/ folder in any parent of {checkpoint}; give the tokenizer path")


@dataclass
class ReferenceModel:
    """A loaded model + tokenizer + byte lengths, ready to score texts."""

    model: torch.nn.Module
    tokenizer: object
    token_bytes: np.ndarray
    checkpoint: Path

    @classmethod
    def load(cls, path: Path, tokenizer: Path | None = None) -> ReferenceModel:
        ckpt = resolve_checkpoint(path)
        try:
            model = load_model(ckpt, "cpu")
        except ModelLoadError as exc:
            raise ReferenceModelError(str(exc)) from exc
        tok_dir = resolve_tokenizer(ckpt, tokenizer)
        model.eval()
        return cls(model, load_tokenizer(tok_dir), load_token_bytes(tok_dir), ckpt)

    @property
    def max_seq_len(self) -> int:
        return int(self.model.config.max_seq_len)

    def windows(self, text: str, max_tokens: int) -> list[list[int]]:
        """Token windows of one document (``<|bos|>…<|eos|>``, cut to ``max_tokens``), one-token overlap."""
        ids = self.tokenizer.encode(text).ids[:max_tokens]  # type: ignore[attr-defined]
        step = self.max_seq_len - 1
        return [ids[s : s + self.max_seq_len] for s in range(0, max(len(ids) - 1, 1), step)]

    @torch.no_grad()
    def bits_per_byte(self, texts: list[str], max_tokens: int = 1024, batch_size: int = 16) -> np.ndarray:
        """Bits per byte of every text (nan for a text with no bytes to predict)."""
        pieces = [(i, w) for i, t in enumerate(texts) for w in self.windows(t, max_tokens) if len(w) >= 2]
        pieces.sort(key=lambda p: len(p[1]))
        nats = np.zeros(len(texts))
        nbytes = np.zeros(len(texts))
        tb = torch.as_tensor(self.token_bytes, dtype=torch.float64)
        pad = int(self.tokenizer.token_to_id(PAD) or 0)  # type: ignore[attr-defined]
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start : start + batch_size]
            width = max(len(w) for _, w in chunk)
            tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
            segments = torch.full((len(chunk), width), -1, dtype=torch.long)
            for row, (_, w) in enumerate(chunk):
                tokens[row, : len(w)] = torch.as_tensor(w)
                segments[row, : len(w)] = 0
            positions = torch.arange(width).expand(len(chunk), width)
            batch = Batch(tokens=tokens, segments=segments, positions=positions, attention="causal",
                          n_tokens=int((segments >= 0).sum()))
            targets = next_token_targets(batch)
            logits = self.model(tokens)  # causal: right padding never reaches a real token
            losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                     reduction="none").view_as(targets).double()
            valid = targets != IGNORE
            per_nats = (losses * valid).sum(1)
            per_bytes = (tb[targets.clamp(min=0)] * valid).sum(1)
            for row, (i, _) in enumerate(chunk):
                nats[i] += float(per_nats[row])
                nbytes[i] += float(per_bytes[row])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(nbytes > 0, nats / (math.log(2) * nbytes), np.nan)
