"""ERNIE-Gram: explicitly n-gram masked language modelling with comprehensive n-gram prediction (Xiao et al. 2021,
"ERNIE-Gram: Pre-Training with Explicitly N-Gram Masked Language Modeling for Natural Language Understanding",
sec. 3.1-3.3) on an encoder.

- Lexicon (``fit``, once before training): the t-test lexicon of ``transforms.ngram_lexicon`` over a sample
  of the training documents -- all of them, or the documents of a fixed-seed permutation until
  ``lexicon_tokens`` tokens -- so the same shard and arguments always give the same lexicon and a resumed run
  rebuilds it exactly. ``lexicon_size`` n-grams: 2/3 bigrams and 1/3 trigrams for ``max_n`` 3 (the
  reference's 20k + 10k split at 30k), all bigrams for 2, none for 1 (whole-token masking). The coarse head's
  table has ``lexicon_size`` rows from the start, so the model is built before the lexicon; rows a smaller
  lexicon leaves unused are left out of the softmax.
- Batch (``prepare``): every packed document segment (under ``causal`` data attention, a row's non-padding
  tokens as one sequence) goes through ``transforms.ernie_gram.ernie_gram_mask``: n-grams covering ``ratio``
  (15%) of its tokens, each collapsed to one ``<|mask|>``. A row is laid out as each segment's collapsed
  sequence followed by its fine slots, one per masked token, then padding to the micro-batch's longest row.
  A fine slot's input is ``<|mask|>`` too (no extra embedding: a slot differs from its n-gram's coarse mask
  by its position and by what it sees). Every token keeps its original position (RoPE), so a row may be
  longer than ``seq_len`` (by the number of masked units) while its positions stay inside the context.
- Attention: an explicit (B, T, T) mask. Collapsed tokens see the collapsed tokens of their own document;
  a fine slot sees those and itself, never another slot; padding sees only itself and nothing sees it.
- Loss: coarse cross-entropy (``ngram`` head over V_tokens + V_ngrams) at each ``<|mask|>`` plus fine
  cross-entropy (``mlm`` head, tied decoder) at each slot, summed; ``n_targets`` = coarse + fine targets,
  so the trainer's division gives the mean over all predictions. The masked rows are few, so the heads run
  on the selected positions only and ``loss_chunk_tokens`` is not needed.

Left out: the paper's enhanced relation modeling (sec. 3.4: a small generator samples plausible n-grams and
the main model recovers the originals and detects replaced tokens), optional in the spec.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.loader import Batch
from kiln.objectives.base import Objective, Prepared
from kiln.objectives.encoder import need_vocab
from kiln.objectives.transforms.common import IGNORE, MASK_ID, PAD_ID
from kiln.objectives.transforms.ernie_gram import ERNIEGramConfig, ernie_gram_mask
from kiln.objectives.transforms.ngram_lexicon import LexiconConfig, NgramLexicon, build_lexicon
from kiln.progress import log

LEXICON_SAMPLE_SEED = 0  # the permutation that picks lexicon documents from a large shard
ROW_FIELDS = ("tokens", "positions", "docs", "slot", "coarse", "fine")  # per-token arrays of one laid-out row


def lexicon_sizes(lexicon_size: int, max_n: int) -> dict[int, int]:
    """Per-n lexicon sizes: 2/3 bigrams + 1/3 trigrams (max_n 3), all bigrams (2), none (1)."""
    if max_n not in (1, 2, 3):
        raise ValueError(f"max_n must be 1, 2 or 3, got {max_n}")
    if lexicon_size < 0:
        raise ValueError(f"lexicon_size must be >= 0, got {lexicon_size}")
    if max_n == 1:
        return {}
    if max_n == 2:
        return {2: lexicon_size}
    return {2: lexicon_size - lexicon_size // 3, 3: lexicon_size // 3}


def sample_documents(docs: Sequence[np.ndarray], max_tokens: int) -> list[np.ndarray]:
    """All documents if they hold at most ``max_tokens`` tokens, else those of a fixed-seed permutation up to
    the budget (deterministic: the same documents give the same sample)."""
    order = np.random.default_rng(LEXICON_SAMPLE_SEED).permutation(len(docs))
    picked, total = [], 0
    for i in order.tolist():
        d = docs[i]
        if total + len(d) > max_tokens and picked:
            break
        picked.append(d)
        total += len(d)
    return picked


class ERNIEGram(Objective):
    """Explicit n-gram MLM with coarse and fine heads (see the module docstring)."""

    name = "ernie_gram"
    lm_eval = False

    def __init__(self, ratio: float = 0.15, max_n: int = 3, lexicon_size: int = 30000, min_count: int = 5,
                 min_t: float = 2.576, lexicon_tokens: int = 5_000_000) -> None:
        self.config = ERNIEGramConfig(ratio)
        sizes = lexicon_sizes(lexicon_size, max_n)
        self.lexicon_config = LexiconConfig(sizes, min_count, min_t) if sizes else None
        self.n_ngrams = sum(sizes.values())
        if lexicon_tokens < 1:
            raise ValueError(f"lexicon_tokens must be >= 1, got {lexicon_tokens}")
        self.lexicon_tokens = lexicon_tokens
        self.lexicon: NgramLexicon | None = None

    @property
    def heads(self) -> dict[str, dict]:
        return {"mlm": {}, "ngram": {"n_ngrams": self.n_ngrams}}

    def fit(self, docs: Sequence[np.ndarray]) -> None:
        vocab = need_vocab(self)
        if self.lexicon_config is None:
            self.lexicon = NgramLexicon(vocab, [], [])
            return
        sample = sample_documents(docs, self.lexicon_tokens)
        self.lexicon = build_lexicon(sample, vocab, self.lexicon_config)
        counts = {n: sum(len(g) == n for g in self.lexicon.ngrams) for n in self.lexicon_config.sizes}
        log(f"ernie_gram: lexicon of {', '.join(f'{c} {n}-grams' for n, c in counts.items())} from "
            f"{sum(len(d) for d in sample):,} tokens of {len(sample)} documents")

    def need_lexicon(self) -> NgramLexicon:
        if self.lexicon is None:
            raise RuntimeError("objective 'ernie_gram': call fit(train_docs) before prepare (the trainer does)")
        return self.lexicon

    def prepare(self, batch: Batch) -> Prepared:
        _, rng = self.next_generators()
        lexicon = self.need_lexicon()
        tokens, positions = batch.tokens.cpu().numpy(), batch.positions.cpu().numpy()
        docs = batch.segments.cpu().numpy()
        if batch.attention != "document":  # attention crosses documents on purpose: a row is one sequence
            docs = np.where(docs >= 0, 0, -1)
        rows: list[dict[str, np.ndarray]] = []
        n_masked = n_eligible = 0
        for b in range(tokens.shape[0]):
            parts: dict[str, list[np.ndarray]] = {k: [] for k in ROW_FIELDS}
            for s in dict.fromkeys(docs[b][docs[b] >= 0].tolist()):  # segment ids in row order
                idx = np.flatnonzero(docs[b] == s)
                ex = ernie_gram_mask(tokens[b, idx], lexicon, rng, self.config)
                n_masked, n_eligible = n_masked + ex.n_masked_tokens, n_eligible + ex.n_eligible
                pos, C, S = positions[b, idx], len(ex.inputs), len(ex.fine_targets)
                parts["tokens"] += [ex.inputs, np.full(S, MASK_ID)]
                parts["positions"] += [pos[ex.positions], pos[ex.fine_positions]]
                parts["docs"].append(np.full(C + S, s))
                parts["slot"].append(np.arange(C + S) >= C)
                parts["coarse"] += [ex.coarse_targets, np.full(S, IGNORE)]
                parts["fine"] += [np.full(C, IGNORE), ex.fine_targets]
            rows.append({k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()})
        t = self.layout(rows)
        device = batch.tokens.device
        tensors = {k: v.to(device) for k, v in t.items()}
        n_coarse, n_fine = int((t["coarse_targets"] != IGNORE).sum()), int((t["fine_targets"] != IGNORE).sum())
        return Prepared(tensors, n_targets=n_coarse + n_fine,
                        extra={"masked_tokens": n_masked, "eligible_tokens": n_eligible, "n_coarse": n_coarse,
                               "n_fine": n_fine})

    @staticmethod
    def layout(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Pad the rows to a common length and build the (B, T, T) visibility (module docstring)."""
        B, T = len(rows), max(1, max(len(r["tokens"]) for r in rows))
        fill = {"tokens": PAD_ID, "positions": 0, "docs": -1, "slot": 0, "coarse": IGNORE, "fine": IGNORE}
        out = {k: np.full((B, T), v, dtype=np.int64) for k, v in fill.items()}
        for b, r in enumerate(rows):
            for k in fill:
                out[k][b, : len(r[k])] = r[k]
        docs, slot = torch.from_numpy(out["docs"]), torch.from_numpy(out["slot"]).bool()
        same_doc = (docs[:, :, None] == docs[:, None, :]) & (docs[:, :, None] >= 0)
        mask = (same_doc & ~slot[:, None, :]) | torch.eye(T, dtype=torch.bool)[None]
        return {"tokens": torch.from_numpy(out["tokens"]), "positions": torch.from_numpy(out["positions"]),
                "mask": mask, "coarse_targets": torch.from_numpy(out["coarse"]),
                "fine_targets": torch.from_numpy(out["fine"])}

    def loss(self, model: nn.Module, prepared: Prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = prepared.tensors
        hidden = model.backbone(t["tokens"], t["positions"], mask=t["mask"])
        emb = model.backbone.tok_emb.weight
        coarse, fine = t["coarse_targets"] != IGNORE, t["fine_targets"] != IGNORE
        coarse_logits = model.heads["ngram"](hidden[coarse], emb, n_used=len(self.need_lexicon())).float()
        fine_logits = model.heads["mlm"](hidden[fine], emb).float()
        coarse_t, fine_t = t["coarse_targets"][coarse], t["fine_targets"][fine]
        coarse_sum = F.cross_entropy(coarse_logits, coarse_t, reduction="sum")
        fine_sum = F.cross_entropy(fine_logits, fine_t, reduction="sum")
        with torch.no_grad():
            coarse_correct = (coarse_logits.argmax(-1) == coarse_t).sum()
            fine_correct = (fine_logits.argmax(-1) == fine_t).sum()
        return coarse_sum + fine_sum, {"coarse_loss_sum": coarse_sum.detach(), "fine_loss_sum": fine_sum.detach(),
                                       "coarse_correct": coarse_correct, "fine_correct": fine_correct,
                                       "coarse_n": coarse.sum(), "fine_n": fine.sum()}
