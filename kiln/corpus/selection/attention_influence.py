"""AttentionInfluence: score documents by how much a small LM's loss on them rises when its retrieval heads are
masked.

Hua, Wu, Zhang, Wang, Li, Zhou, Chen, Zhang and Zhou (2025), "AttentionInfluence: Adopting Attention Head
Influence for Weak-to-Strong Pretraining Data Selection", arXiv 2505.07293 (sec. 3-4, App. A and C). The spec
is ``shared/methods/data.md`` sec. 5. No official code was found; this is our reading.

1. **Retrieval-head detection** (:func:`build_kv_prompts`, :func:`retrieval_head_scores`). Synthetic 3-shot
   key-value retrieval prompts: a JSON-like context of pairs (key: a random alphanumeric string, 32 characters in
   the paper; value: a short text, at most 30 tokens), three demonstrations ``Key: "k" / Value: "v"`` of other
   pairs, and a query key whose value is the answer. Every prompt is cut to the model's ``max_seq_len`` by
   dropping pairs. The answer is *teacher-forced* (the paper generates it; with teacher forcing a weak model that
   does not yet answer correctly still shows which heads look up the right token): for each answer token ``a``,
   a head *copies* it when its argmax attention, at the position that predicts ``a``, sits on the context
   occurrence of the answer at a position holding ``a``. A head's retrieval score is the share of answer tokens
   it copies, averaged over prompts; heads are ranked by it (ties: lower layer, then lower head first).
2. **Masking** the top ``top_fraction`` of heads (at least one) makes their attention weights uniform over the
   visible positions (``head_mask_mode="uniform"`` in :mod:`kiln.model.attention`: 1/(t+1) under a causal mask).
3. **Score** = (L_masked - L_base) / L_base, with L the mean next-token cross-entropy over the document's first
   ``max_tokens`` tokens (``<|bos|> ... <|eos|>``; longer than the context: windows overlapping by one token, as
   in :class:`kiln.corpus.learned.refmodel.ReferenceModel`). The paper compares scores only within a domain and
   keeps the top 20% (``select`` with ``per_source: true``).

Everything is deterministic for a given ``seed``: prompts come from a seeded generator, never from the corpus
shard a task happens to see, so every executor task detects the same heads.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KEY_ALPHABET = string.ascii_letters + string.digits
INSTRUCTION = "Extract the value of the given key from the JSON object below.\n"


@dataclass(frozen=True)
class KVPrompt:
    """One retrieval prompt as token ids: the answer is ``tokens[answer_start : answer_start + answer_len]`` and
    its occurrence in the context is ``tokens[source_start : source_start + answer_len]`` (the same ids)."""

    tokens: list[int]
    answer_start: int
    answer_len: int
    source_start: int

    def __post_init__(self) -> None:
        a, s, n = self.answer_start, self.source_start, self.answer_len
        if n < 1 or a < 1 or a + n > len(self.tokens) or s < 0 or s + n > a:
            raise ValueError(f"bad KV prompt spans: answer [{a}, {a + n}), source [{s}, {s + n}) in "
                             f"{len(self.tokens)} tokens (the source must lie before the answer)")
        if self.tokens[s : s + n] != self.tokens[a : a + n]:
            raise ValueError("KV prompt: the context occurrence does not hold the answer's tokens")


# ----------------------------------------------------------------------------- prompts


def vocab_words(tokenizer: object, min_chars: int = 3) -> list[str]:
    """Alphabetic words of at least ``min_chars`` letters that are single tokens of ``tokenizer`` (sorted)."""
    words = set()
    for i in range(tokenizer.get_vocab_size()):  # type: ignore[attr-defined]
        word = tokenizer.decode([i]).strip()  # type: ignore[attr-defined]
        if len(word) >= min_chars and word.isascii() and word.isalpha():
            words.add(word)
    return sorted(words)


def random_values(rng: random.Random, words: Sequence[str], n: int, n_words: tuple[int, int] = (3, 10)) -> list[str]:
    """``n`` values of ``n_words`` random words each (random lowercase strings when ``words`` is too small)."""
    if len(words) < 20:
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8))) for _ in range(200)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(*n_words))) for _ in range(n)]


class _Encoder:
    """Token ids of prompt pieces, each encoded on its own (no special tokens) and memoised."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer
        self.memo: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if text not in self.memo:
            self.memo[text] = list(self.tokenizer.encode(text, add_special_tokens=False).ids)  # type: ignore[attr-defined]
        return self.memo[text]


def _assemble(enc: _Encoder, bos: int | None, pairs: list[tuple[str, list[int]]], demos: list[int], query: int,
              instruction: bool = True) -> KVPrompt:
    """Token ids of one prompt: instruction, the JSON-like context, the demos, the query key and its answer."""
    tokens: list[int] = [] if bos is None else [bos]
    tokens += (enc(INSTRUCTION) if instruction else []) + enc("{")
    starts = []
    for j, (key, value) in enumerate(pairs):
        tokens += enc(("" if j == 0 else ", ") + '"') + enc(key) + enc('": "')
        starts.append(len(tokens))
        tokens += value + enc('"')
    tokens += enc("}\n")
    for j in demos:
        tokens += enc('Key: "') + enc(pairs[j][0]) + enc('"\nValue: "') + pairs[j][1] + enc('"\n')
    tokens += enc('Key: "') + enc(pairs[query][0]) + enc('"\nValue: "')
    answer_start = len(tokens)
    tokens += pairs[query][1] + enc('"')
    return KVPrompt(tokens, answer_start, len(pairs[query][1]), starts[query])


def build_kv_prompts(tokenizer: object, n_prompts: int, max_seq_len: int, *, seed: int = 0,
                     values: Sequence[str] | None = None, n_pairs: int = 32, n_demos: int = 3, key_chars: int = 32,
                     max_value_tokens: int = 30, bos_id: int | None = None, instruction: bool = True
                     ) -> list[KVPrompt]:
    """``n_prompts`` key-value retrieval prompts (see the module docstring) of at most ``max_seq_len`` tokens.

    values: value texts to draw from (e.g. sentences of documents); None = random words of the tokenizer's
    vocabulary. ``instruction`` starts the prompt with a one-line instruction. A prompt that is too long loses
    pairs down to ``n_demos + 1``; if it still does not fit, a ``ValueError`` says which settings to lower.
    """
    if n_demos < 0:
        raise ValueError(f"n_demos must be >= 0, got {n_demos}")
    if n_pairs < n_demos + 1:
        raise ValueError(f"n_pairs={n_pairs} must be at least n_demos + 1 = {n_demos + 1}")
    pool = list(values) if values is not None else None
    if pool is not None and not pool:
        raise ValueError("values: no value texts given (None = random words of the tokenizer's vocabulary)")
    rng = random.Random(seed)
    enc = _Encoder(tokenizer)
    words = vocab_words(tokenizer) if pool is None else []
    prompts = []
    for _ in range(n_prompts):
        if pool is None:
            texts = random_values(rng, words, n_pairs)
        else:
            texts = rng.sample(pool, n_pairs) if len(pool) >= n_pairs else [rng.choice(pool) for _ in range(n_pairs)]
        keys = ["".join(rng.choice(KEY_ALPHABET) for _ in range(key_chars)) for _ in range(n_pairs)]
        pairs = [(k, enc(v.strip())[:max_value_tokens] or enc("none")) for k, v in zip(keys, texts, strict=True)]
        order = rng.sample(range(n_pairs), n_demos + 1)  # demos, then the query
        n = n_pairs
        while True:
            kept = sorted(order) + [j for j in range(n_pairs) if j not in order][: n - len(order)]
            kept.sort()  # context order of the pairs kept (always the demos and the query)
            sub = [pairs[j] for j in kept]
            prompt = _assemble(enc, bos_id, sub, [kept.index(j) for j in order[:-1]], kept.index(order[-1]),
                               instruction)
            if len(prompt.tokens) <= max_seq_len:
                break
            if n == n_demos + 1:
                raise ValueError(f"a key-value prompt with {n} pairs has {len(prompt.tokens)} tokens > max_seq_len="
                                 f"{max_seq_len}; lower key_chars ({key_chars}), max_value_tokens "
                                 f"({max_value_tokens}) or n_demos ({n_demos}), or drop the instruction")
            n -= 1
        prompts.append(prompt)
    return prompts


# ----------------------------------------------------------------------------- detection


@torch.no_grad()
def retrieval_head_scores(model: torch.nn.Module, prompts: Sequence[KVPrompt]) -> np.ndarray:
    """(n_layer, n_head) retrieval scores: per head, the share of answer tokens it copies (see the module
    docstring), averaged over ``prompts``. One prompt per forward (eager attention maps are T x T per head)."""
    cfg = model.config  # type: ignore[attr-defined]
    if not prompts:
        raise ValueError("no key-value prompts to detect retrieval heads with")
    total = np.zeros((cfg.n_layer, cfg.n_head))
    model.eval()
    for p in prompts:
        tokens = torch.as_tensor(p.tokens, dtype=torch.long)
        out = model(tokens[None], output_attentions=True)
        answer = tokens[p.answer_start : p.answer_start + p.answer_len]  # (n,)
        queries = torch.arange(p.answer_start - 1, p.answer_start + p.answer_len - 1)  # predict answer[i]
        for layer, att in enumerate(out.attentions):
            top = att[0][:, queries, :].argmax(dim=-1)  # (H, n): the key each head looks at most
            inside = (top >= p.source_start) & (top < p.source_start + p.answer_len)
            hits = inside & (tokens[top] == answer[None, :])
            total[layer] += hits.float().mean(dim=1).numpy()
    return total / len(prompts)


def repeated_sequences(n: int, period: int, token_ids: Sequence[int], seed: int = 0, bos_id: int | None = None
                       ) -> torch.Tensor:
    """(n, [1 +] 2 * period) token ids: a random span of ``period`` tokens from ``token_ids``, then the span again."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    span = ids[torch.randint(len(ids), (n, period), generator=g)]
    seqs = torch.cat([span, span], dim=1)
    return seqs if bos_id is None else torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), seqs], dim=1)


@torch.no_grad()
def induction_head_scores(model: torch.nn.Module, sequences: torch.Tensor, period: int, batch_size: int = 8
                          ) -> np.ndarray:
    """(n_layer, n_head) induction scores (Olsson et al. 2022, "In-context Learning and Induction Heads"): the
    mean attention that queries in the second copy of a repeated span (:func:`repeated_sequences`) put on the
    token after their earlier occurrence, i.e. on the token to copy. The fallback detector for models whose
    context cannot hold a key-value prompt."""
    model.eval()
    T = sequences.shape[1]
    queries = torch.arange(T - period, T)
    keys = queries - period + 1
    total = 0.0
    for start in range(0, len(sequences), batch_size):
        out = model(sequences[start : start + batch_size], output_attentions=True)
        total = total + np.stack([att[:, :, queries, keys].sum(dim=(0, 2)).numpy() for att in out.attentions])
    return total / (len(sequences) * period)


def rank_heads(scores: np.ndarray) -> list[tuple[int, int]]:
    """Every (layer, head), highest score first; ties by layer, then head."""
    n_layer, n_head = scores.shape
    return sorted(((i, j) for i in range(n_layer) for j in range(n_head)), key=lambda h: (-scores[h], h))


def n_top_heads(n_heads: int, top_fraction: float) -> int:
    """How many heads the top ``top_fraction`` is: round(fraction * n_heads), at least 1."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return max(1, min(n_heads, int(round(top_fraction * n_heads))))


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def mean_losses(model: torch.nn.Module, docs: Sequence[Sequence[Sequence[int]]], heads: Sequence[Sequence[int]],
                batch_size: int = 16, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(base, masked) mean next-token cross-entropy (nats) of each document, given as its token windows;
    ``masked`` makes ``heads`` attend uniformly. NaN for a document with no target token."""
    pieces = [(i, list(w)) for i, ws in enumerate(docs) for w in ws if len(w) >= 2]
    pieces.sort(key=lambda p: len(p[1]))
    base, masked, count = np.zeros(len(docs)), np.zeros(len(docs)), np.zeros(len(docs))
    model.eval()
    for start in range(0, len(pieces), batch_size):
        chunk = pieces[start : start + batch_size]
        width = max(len(w) for _, w in chunk)
        tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        valid = torch.zeros(len(chunk), width - 1, dtype=torch.bool)
        for row, (_, w) in enumerate(chunk):
            tokens[row, : len(w)] = torch.as_tensor(w)
            valid[row, : len(w) - 1] = True
        targets = tokens[:, 1:]
        per = []
        for kwargs in ({}, {"masked_heads": [tuple(h) for h in heads], "head_mask_mode": "uniform"}):
            logits = model(tokens, **kwargs)[:, :-1]  # causal: right padding never reaches a real token
            ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
            per.append((ce.view_as(targets).double() * valid).sum(1))
        n = valid.sum(1)
        for row, (i, _) in enumerate(chunk):
            base[i] += float(per[0][row])
            masked[i] += float(per[1][row])
            count[i] += int(n[row])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, base / count, np.nan), np.where(count > 0, masked / count, np.nan)


def influence_scores(model: torch.nn.Module, docs: Sequence[Sequence[Sequence[int]]],
                     heads: Sequence[Sequence[int]], batch_size: int = 16, pad_id: int = 0) -> np.ndarray:
    """AttentionInfluence of each document: (L_masked - L_base) / L_base with ``heads`` masked uniformly."""
    if not heads:
        raise ValueError("AttentionInfluence needs at least one head to mask")
    base, masked = mean_losses(model, docs, heads, batch_size, pad_id)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (masked - base) / base
