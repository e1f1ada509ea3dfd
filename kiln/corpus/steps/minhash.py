"""MinHash near-duplicate removal (Broder 1997) with LSH banding, vectorised in numpy, in one process.

Each document's word ``shingle_size``-grams (kiln's regex splitter, lower-cased, punctuation dropped) are
hashed to 32 bits (blake2b of the joined shingle); ``buckets * hashes_per_bucket`` universal hash functions
``(a*x + b) mod p`` (p = 2^31-1) map them, and each function's minimum is a signature entry. Two documents
whose signatures agree on a whole band of ``hashes_per_bucket`` entries are candidates; candidates are
joined by union-find and each cluster keeps its earliest document (by pipeline order). The defaults
are 5-word shingles and 32 buckets x 4 hashes: a pair at Jaccard s is caught with probability
1-(1-s^4)^32 (0.5 at s~0.42, 0.99 at s=0.6), because a ~5% word edit rate already lowers the 5-shingle
Jaccard to ~0.6 (each edit breaks up to 5 shingles). datatrove's and FineWeb's (Penedo et al. 2024)
14 x 8 (threshold ~0.72) catches such pairs only ~30% of the time. With
``verify_threshold`` set, a candidate pair also needs estimated Jaccard (signature agreement) above it.

``backend: datatrove`` runs datatrove's file-based MinHash stages (signatures, buckets, clusters) instead, in
one process (slower; for comparison): same kept set on planted near-duplicates, differences listed in
``minhash_datatrove.py`` (another hash family; no ``verify_threshold``; a document with no words is kept).
The streaming corpus stage runs it as a whole-corpus step (``stream.py``); the numpy backend streams.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams

PRIME = np.uint64((1 << 31) - 1)  # Mersenne prime 2^31-1: a*x + b < 2^64 for x < 2^32


class MinHashParams(StepParams):
    step: Literal["minhash"] = "minhash"
    shingle_size: int = Field(5, ge=1)
    buckets: int = Field(32, ge=1)
    hashes_per_bucket: int = Field(4, ge=1)
    verify_threshold: float | None = Field(None, ge=0, le=1)
    seed: int = 1
    backend: Literal["numpy", "datatrove"] = "numpy"

    @model_validator(mode="after")
    def _backend_fits(self) -> MinHashParams:
        if self.backend == "datatrove" and self.verify_threshold is not None:
            raise ValueError("verify_threshold: not supported with backend 'datatrove' (datatrove has no "
                             "signature-agreement check); use backend: numpy or drop verify_threshold")
        return self


_WORD_HASH: dict[str, int] = {}


def _word_hash(w: str) -> int:
    h = _WORD_HASH.get(w)
    if h is None:
        h = _WORD_HASH[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
    return h


def shingles(text: str, n: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word ``n``-grams of ``text`` (the whole text if shorter than ``n``; a
    text with no word at all is one shingle of its stripped characters, so two such documents are near
    duplicates only if equal, not because both have no words).

    Words are hashed once (blake2b, cached); a shingle's hash is a polynomial of its word hashes modulo
    2^64 (numpy wrap-around), top 32 bits kept: deterministic across processes, vectorised per document.
    """
    from kiln.corpus.words import WORD_RE

    ws = [w for w in WORD_RE.findall(text.lower()) if w[0].isalnum() or w[0] == "_"]
    if not ws:  # no words (symbols, whitespace): one shingle, the whole stripped text, so only equal texts match
        digest = hashlib.blake2b(text.strip().encode(), digest_size=8).digest()
        return np.array([int.from_bytes(digest, "little") >> 32], dtype=np.uint64)
    h = np.fromiter((_word_hash(w) for w in ws), dtype=np.uint64, count=len(ws))
    m = max(1, len(ws) - n + 1)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(min(n, len(ws))):
            acc = acc * np.uint64(0x100000001B3) + h[j:j + m]
    return np.unique(acc >> np.uint64(32))


def _coefficients(params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """Per hash function ``a`` in [1, p), ``b`` in [0, p), p = 2^31-1: ``a*x + b`` (x < 2^32) fits in 64 bits."""
    k = params.buckets * params.hashes_per_bucket
    rng = np.random.default_rng(params.seed)
    return rng.integers(1, int(PRIME), size=k, dtype=np.uint64), rng.integers(0, int(PRIME), size=k, dtype=np.uint64)


def signatures(docs: list[Doc], params: MinHashParams) -> np.ndarray:
    """``(n_docs, buckets * hashes_per_bucket)`` uint64 MinHash signatures, ``min((a*x + b) mod (2^31-1))``."""
    a, b = _coefficients(params)
    sig = np.empty((len(docs), len(a)), dtype=np.uint64)
    for i, doc in enumerate(docs):
        x = shingles(doc["text"], params.shingle_size)
        sig[i] = ((x[:, None] * a[None, :] + b[None, :]) % PRIME).min(axis=0)
    return sig


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def clusters(sig: np.ndarray, params: MinHashParams) -> np.ndarray:
    """For each document, the index of its cluster's earliest member (itself if unique)."""
    n, r = len(sig), params.hashes_per_bucket
    parent = np.arange(n)
    for band in range(params.buckets):
        block = np.ascontiguousarray(sig[:, band * r:(band + 1) * r])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * r))).ravel()
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        for j in same:
            u, v = int(order[j]), int(order[j + 1])
            if params.verify_threshold is not None and np.mean(sig[u] == sig[v]) < params.verify_threshold:
                continue
            ru, rv = _find(parent, u), _find(parent, v)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    return np.array([_find(parent, i) for i in range(n)])


def near_duplicate_pairs(docs: list[Doc], params: MinHashParams) -> list[tuple[int, int]]:
    """``(kept, removed)`` index pairs: each removed document with its cluster's earliest document."""
    if not docs:
        return []
    root = clusters(signatures(docs, params), params)
    return [(int(root[i]), i) for i in range(len(docs)) if root[i] != i]


def run_minhash(docs: list[Doc], params: MinHashParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    if params.backend == "datatrove":
        from kiln.corpus.steps.minhash_datatrove import datatrove_pairs

        pairs = datatrove_pairs(docs, params, ctx)
    else:
        pairs = near_duplicate_pairs(docs, params)
    rep = StepReport(params.step, docs_in=len(docs))
    gone = {i: k for k, i in pairs}
    out = []
    for i, doc in enumerate(docs):
        if i in gone:
            kept = str(docs[gone[i]]["id"])
            ctx.remove(rep, doc, f"near duplicate of {kept}", duplicate_of=kept)
        else:
            out.append(doc)
    rep.docs_out = len(out)
    return out, rep


STEPS = [StepDef(MinHashParams, run_minhash)]
