"""Synthetic token sources (``tokens.synthetic``): token sequences fed straight to the trainer, for in-context
learning testbeds, in place of corpus -> tokenizer -> tokens.

:func:`write_synthetic` writes what the tokens stage writes (``{split}-00000`` shards and
``{split}.shards.json``), plus ``token_bytes.npy`` and ``vocab.json``, so nothing downstream needs a tokenizer.
Ids below 113 are kiln's special tokens (:mod:`kiln.tokenizer.special`); data symbols are ``113 ..
vocab_size - 1``. Every document is ``<|bos|> symbols <|eos|>``. ``token_bytes.npy`` counts one byte per data
symbol and zero per special token, so "bits per byte" of a synthetic run is bits per data symbol.

Generators (both deterministic functions of the config, train and val drawn from separate seeded streams):

- ``markov``: a first-order chain over the symbols, each transition row drawn from a symmetric Dirichlet
  (``concentration``); the first symbol is uniform. Reports the chain's entropy rate and ``optimal_loss``,
  the exact loss of the true chain on the validation targets, the floor any model's ``val_loss`` sits above.
- ``associative_recall``: ``n_pairs`` distinct keys each followed by a random value, then ``n_queries`` of
  those keys each followed by its value (Ba et al. 2016; the "Zoology" MQAR family): a model reaches the
  optimum only by recalling values from its context.

Stats also hold ``unigram_bpb``: bits per symbol of the validation symbols under the (add-one smoothed)
training symbol frequencies, the baseline a model without context would reach.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kiln import atomic
from kiln.data.shards import ShardWriter, choose_dtype, shard_name, write_split_index
from kiln.recipe import N_RESERVED_IDS, MarkovSource, RecallSource
from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS, SPECIAL_TOKENS

TOKEN_BYTES_FILE = "token_bytes.npy"  # the tokenizer folder's name, read the same way (kiln.tokenizer.train)
VOCAB_FILE = "vocab.json"
CHUNK_TOKENS = 1 << 20  # documents are generated and written this many tokens at a time (bounded memory)
SPLIT_STREAMS = {"train": 1, "val": 2}  # rng stream per split; 0 draws the generator itself (the chain)

Source = MarkovSource | RecallSource

assert len(SPECIAL_TOKENS) == N_RESERVED_IDS, "kiln.recipe.N_RESERVED_IDS must equal the special-token count"


def _rng(cfg: Source, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream])


def _frame(body: np.ndarray) -> np.ndarray:
    """Rows of symbols -> rows of ``<|bos|> symbols <|eos|>``."""
    n = body.shape[0]
    return np.concatenate([np.full((n, 1), SPECIAL_IDS[BOS]), body, np.full((n, 1), SPECIAL_IDS[EOS])], axis=1)


# ----------------------------------------------------------------------------- markov


def markov_chain(cfg: MarkovSource) -> np.ndarray:
    """The transition matrix ``P[a, b] = p(next = b | current = a)`` over the data symbols (float64)."""
    k = cfg.n_symbols()
    return _rng(cfg, 0).dirichlet(np.full(k, cfg.concentration), size=k)


def _markov_docs(cfg: MarkovSource, chain: np.ndarray, n_docs: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    k = chain.shape[0]
    cum = np.cumsum(chain, axis=1)
    cum[:, -1] = 1.0
    # row a's cumulative probabilities shifted into [a, a + 1]: one sorted array, so drawing "the first b with
    # cum[a, b] > u" for every document at once is a single searchsorted at a + u (inverse-CDF sampling)
    flat = (cum + np.arange(k)[:, None]).ravel()
    per_chunk = max(1, CHUNK_TOKENS // cfg.doc_len)
    for start in range(0, n_docs, per_chunk):
        n = min(per_chunk, n_docs - start)
        body = np.empty((n, cfg.doc_len), dtype=np.int64)
        body[:, 0] = rng.integers(0, k, size=n)
        for t in range(1, cfg.doc_len):
            prev = body[:, t - 1]
            nxt = np.searchsorted(flat, prev + rng.random(n), side="right") - prev * k
            body[:, t] = np.clip(nxt, 0, k - 1)
        yield _frame(body + N_RESERVED_IDS)


def markov_entropy_rate(chain: np.ndarray) -> float:
    """Entropy rate (nats per symbol) of the stationary chain: ``sum_a pi(a) H(P[a])``."""
    row_h = -np.sum(np.where(chain > 0, chain * np.log(np.where(chain > 0, chain, 1.0)), 0.0), axis=1)
    pi = np.full(chain.shape[0], 1.0 / chain.shape[0])
    for _ in range(10_000):
        nxt = pi @ chain
        if np.abs(nxt - pi).max() < 1e-12:
            break
        pi = nxt
    return float(pi @ row_h)


def markov_doc_nats(chain: np.ndarray, doc: np.ndarray) -> float:
    """Loss (nats) of the true chain on one framed document's targets: the first symbol (uniform), each
    transition, and ``<|eos|>`` (certain: documents have a fixed length)."""
    sym = doc[1:-1] - N_RESERVED_IDS
    return math.log(chain.shape[0]) - float(np.log(chain[sym[:-1], sym[1:]]).sum())


# ----------------------------------------------------------------------------- associative recall


def _recall_docs(cfg: RecallSource, n_docs: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    n_values = cfg.n_symbols() - cfg.n_keys
    width = 2 * (cfg.n_pairs + cfg.n_queries)
    per_chunk = max(1, CHUNK_TOKENS // width)
    for start in range(0, n_docs, per_chunk):
        n = min(per_chunk, n_docs - start)
        keys = np.argsort(rng.random((n, cfg.n_keys)), axis=1)[:, : cfg.n_pairs]  # distinct keys per document
        values = cfg.n_keys + rng.integers(0, n_values, size=(n, cfg.n_pairs))
        asked = rng.integers(0, cfg.n_pairs, size=(n, cfg.n_queries))  # which pair each query recalls
        rows = np.arange(n)[:, None]
        body = np.empty((n, width), dtype=np.int64)
        body[:, 0 : 2 * cfg.n_pairs : 2] = keys
        body[:, 1 : 2 * cfg.n_pairs : 2] = values
        body[:, 2 * cfg.n_pairs :: 2] = keys[rows, asked]
        body[:, 2 * cfg.n_pairs + 1 :: 2] = values[rows, asked]
        yield _frame(body + N_RESERVED_IDS)


def recall_optimal_loss(cfg: RecallSource) -> float:
    """Expected loss per target (nats) of the Bayes-optimal predictor: each next key is uniform over the keys not
    yet used, each value uniform, each query uniform over the document's keys, each answer and ``<|eos|>`` certain."""
    n_values = cfg.n_symbols() - cfg.n_keys
    nats = sum(math.log(cfg.n_keys - i) for i in range(cfg.n_pairs))
    nats += cfg.n_pairs * math.log(n_values) + cfg.n_queries * math.log(cfg.n_pairs)
    return nats / (2 * (cfg.n_pairs + cfg.n_queries) + 1)


def recall_answer_positions(cfg: RecallSource) -> np.ndarray:
    """Positions (within a framed document) of the recalled values: a model's recall accuracy is measured there."""
    return 1 + 2 * cfg.n_pairs + 2 * np.arange(cfg.n_queries) + 1


# ----------------------------------------------------------------------------- writing


def generate(cfg: Source, split: str, chain: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Chunks (2-D arrays, one framed document per row) of ``split``'s documents, deterministically
    (``chain``: :func:`markov_chain` of ``cfg`` if already drawn)."""
    n_docs = cfg.n_train if split == "train" else cfg.n_val
    rng = _rng(cfg, SPLIT_STREAMS[split])
    if isinstance(cfg, MarkovSource):
        return _markov_docs(cfg, markov_chain(cfg) if chain is None else chain, n_docs, rng)
    return _recall_docs(cfg, n_docs, rng)


def token_bytes(cfg: Source) -> np.ndarray:
    """One byte per data symbol, zero per special token (so bits per byte = bits per data symbol)."""
    out = np.ones(cfg.vocab_size, dtype=np.int32)
    out[:N_RESERVED_IDS] = 0
    return out


def _unigram_bpb(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    probs = (train_counts + 1) / (train_counts.sum() + len(train_counts))
    return float(-(val_counts * np.log2(probs)).sum() / max(val_counts.sum(), 1))


def write_synthetic(cfg: Source, out_dir: str | Path) -> dict:
    """Write the shards of both splits, ``token_bytes.npy`` and ``vocab.json`` into ``out_dir``; returns stats
    (the tokens stage's keys plus the generator's optimum and unigram baseline)."""
    out_dir = Path(out_dir)
    dtype = choose_dtype(cfg.vocab_size)
    stats: dict = {"dtype": dtype, "vocab_size": cfg.vocab_size, "generator": cfg.generator}
    counts: dict[str, np.ndarray] = {}
    chain = markov_chain(cfg) if isinstance(cfg, MarkovSource) else None
    val_nats = 0.0
    for split in ("train", "val"):
        counts[split] = np.zeros(cfg.vocab_size, dtype=np.int64)
        prefix = out_dir / shard_name(split, 0)
        with ShardWriter(prefix, dtype, meta={"vocab_size": cfg.vocab_size, "generator": cfg.generator}) as w:
            for chunk in generate(cfg, split, chain):
                w.add_many(chunk)
                counts[split] += np.bincount(chunk[:, 1:-1].ravel(), minlength=cfg.vocab_size)
                if chain is not None and split == "val":
                    val_nats += sum(markov_doc_nats(chain, doc) for doc in chunk)
            n_bytes = int(counts[split].sum())
            w.meta["n_bytes"] = n_bytes
        write_split_index(out_dir, split, [{"name": prefix.name, "n_docs": w.n_docs, "n_tokens": w.n_tokens}])
        stats[split] = {"n_docs": w.n_docs, "n_tokens": w.n_tokens, "n_bytes": n_bytes, "n_shards": 1}
    data = slice(N_RESERVED_IDS, None)
    stats["unigram_bpb"] = _unigram_bpb(counts["train"][data], counts["val"][data])
    if chain is not None:
        n_targets = cfg.n_val * (cfg.doc_len + 1)
        stats["entropy_rate"] = markov_entropy_rate(chain)
        stats["optimal_loss"] = val_nats / n_targets
        stats["optimal_bpb"] = val_nats / (math.log(2) * stats["val"]["n_bytes"])
    else:
        stats["optimal_loss"] = recall_optimal_loss(cfg)
        n_targets = 2 * (cfg.n_pairs + cfg.n_queries) + 1
        stats["optimal_bpb"] = stats["optimal_loss"] * n_targets / (math.log(2) * (n_targets - 1))
    with atomic.staged_path(out_dir / TOKEN_BYTES_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, token_bytes(cfg))
    atomic.write_json(out_dir / VOCAB_FILE, {
        "vocab_size": cfg.vocab_size, "generator": cfg.generator, "special_tokens": SPECIAL_TOKENS,
        "data_ids": [N_RESERVED_IDS, cfg.vocab_size], "token_bytes": "1 per data symbol, 0 per special token",
        "config": cfg.model_dump(mode="json"),
    })
    return stats
