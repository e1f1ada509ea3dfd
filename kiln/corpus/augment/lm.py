"""LM-based augmentation: new copies of a document sampled from a kiln checkpoint (:func:`kiln.infer.generate`).

The "prompt-based" family of the surveys (Feng et al. 2021, "A Survey of Data Augmentation Approaches for NLP",
arXiv 2105.03075; Chai et al. 2025, "Text Data Augmentation for Large Language Models: A Comprehensive Survey of
Methods, Challenges, and Opportunities", arXiv 2501.18845), with a plain (not instruction-tuned) LM:

- ``continue``: the whole document, then up to ``max_new_tokens`` sampled tokens;
- ``rewrite``: the first ``keep_fraction`` of the document's words are kept as the prompt and the rest is replaced
  by a sample of (at most) as many tokens as the replaced part had, capped by ``max_new_tokens``.

Protected (label-bearing) words survive ``rewrite``: the cut moves after the last protected word, so every one
of them stays in the kept prefix (then nothing may be left to rewrite: the copy is the prompt plus a sample of
``min_new_tokens``). A sample can still *add* words of another label; the consistency/confidence filters
(:mod:`kiln.corpus.augment.filters`) are the guard against that.

Seeded: copy ``k`` of the document keyed ``key`` samples with a torch generator seeded from ``(seed, key, k)``,
so a copy does not depend on which other documents are augmented, or in what order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kiln.corpus.augment.eda import is_break, join_words, layout_words, norm

Mode = Literal["continue", "rewrite"]


@dataclass(frozen=True)
class LmAugmentConfig:
    mode: Mode = "rewrite"
    n_aug: int = 1
    keep_fraction: float = 0.5
    max_new_tokens: int = 64
    min_new_tokens: int = 8
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("continue", "rewrite"):
            raise ValueError(f"LmAugmentConfig.mode must be continue or rewrite, got {self.mode!r}")
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError(f"LmAugmentConfig.keep_fraction must be in [0, 1], got {self.keep_fraction}")
        if self.n_aug < 0 or self.max_new_tokens < 1 or self.min_new_tokens < 0:
            raise ValueError("LmAugmentConfig: n_aug >= 0, max_new_tokens >= 1, min_new_tokens >= 0")


def copy_seed(seed: int, key: str, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:{k}".encode()).digest()[:8], "big") >> 1


def split_for_rewrite(text: str, keep_fraction: float, protected: frozenset[str]) -> tuple[str, str]:
    """(kept prefix, replaced rest) at a word boundary, the cut after the last protected word."""
    tokens = layout_words(text)  # line breaks kept in the prefix
    at = [i for i, w in enumerate(tokens) if not is_break(w)]  # token index of each word
    cut = int(round(keep_fraction * len(at)))
    last = max((j for j, i in enumerate(at) if norm(tokens[i]) in protected), default=-1)
    cut = max(cut, last + 1, 1 if at else 0)
    split = at[cut] if cut < len(at) else len(tokens)
    return join_words(tokens[:split]), join_words(tokens[split:])


def lm_augment(texts: list[str], keys: list[str], model, tokenizer, cfg: LmAugmentConfig,
               protected: Iterable[str] = ()) -> list[list[str]]:
    """``cfg.n_aug`` sampled copies of every text (one list per text). ``model``: a kiln LanguageModel;
    ``tokenizer``: its ``tokenizers.Tokenizer`` (e.g. :class:`kiln.corpus.learned.refmodel.ReferenceModel`)."""
    import torch

    from kiln.infer.generate import generate
    from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS

    if len(texts) != len(keys):
        raise ValueError(f"lm_augment: {len(texts)} texts but {len(keys)} keys")
    prot = frozenset(norm(w) for w in protected)
    device = next(model.parameters()).device
    out = []
    for text, key in zip(texts, keys, strict=True):
        if cfg.mode == "continue":
            prompt, budget = text, cfg.max_new_tokens
        else:
            prompt, rest = split_for_rewrite(text, cfg.keep_fraction, prot)
            n_rest = len(tokenizer.encode(rest, add_special_tokens=False).ids) if rest else 0
            budget = max(cfg.min_new_tokens, min(cfg.max_new_tokens, n_rest))
        ids = [SPECIAL_IDS[BOS]] + tokenizer.encode(prompt, add_special_tokens=False).ids
        copies = []
        for k in range(cfg.n_aug):
            gen = torch.Generator(device=device).manual_seed(copy_seed(cfg.seed, key, k))
            new = generate(model, ids, budget, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                           eos_id=SPECIAL_IDS[EOS], generator=gen) if budget > 0 else []
            sep = " " if prompt and cfg.mode == "rewrite" else ""
            sample = tokenizer.decode(new)
            copies.append(prompt + (sep + sample.lstrip() if sep else sample))
        out.append(copies)
    return out
