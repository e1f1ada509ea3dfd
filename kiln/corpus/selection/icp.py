"""In-Context Pretraining (ICP) ordering: documents placed next to their nearest neighbours.

Shi, Min, Lomeli, Zhou, Li, Szilvasy, James, Lin, Smith, Zettlemoyer, Yih and Lewis, "In-Context Pretraining:
Language Modeling Beyond Document Boundaries" (ICLR 2024, arXiv:2310.10638); spec in ``shared/methods/data.md``
§1. Given unit-norm document embeddings (``kiln.corpus.selection.embed``), the pieces are:

1. :func:`knn`: ``k`` nearest neighbours by inner product (= cosine on unit rows) with ``faiss``: an exact
   ``IndexFlatIP`` up to ``exact_max`` documents, an ``IndexIVFFlat`` above (``nlist`` ~ 4 sqrt(n) lists trained
   on a seeded sample, ``nprobe`` lists searched per query; the paper uses IVFPQ at billions of documents). Each
   row is sorted by similarity, ties by document index, the document itself left out.
2. :func:`semantic_dedup`: in corpus order, a document is dropped when its cosine to an *earlier kept*
   neighbour exceeds ``dedup_cosine``. The paper gives no threshold (§2.1 / App. A.1); 0.9 is the spec's
   placeholder, to be tuned. Dropped documents leave the neighbour lists of the others (no second search).
3. :func:`traverse` (paper Alg. 1, read as its text says: the *most* similar unvisited neighbour; the printed
   algorithm's argmin contradicts the text): start at an unvisited document of minimum degree, repeatedly move
   to the unvisited neighbour with the highest similarity (from the current document's kNN list), and when the
   current document has none left, jump to an unvisited minimum-degree document. *Degree*: Alg. 1 takes
   ``min_deg(D)`` over the documents ``D`` not yet visited, removing each visited one from the graph, so the
   degree here is the number of *unvisited* neighbours in the undirected kNN graph (``i`` and ``j`` adjacent
   when either lists the other; after dedup). It starts as the full degree (outlying documents, few edges, go
   first) and drops as the walk removes documents, so a jump lands on a leftover whose neighbourhood has just
   been used up (typically the same topic) rather than anywhere. (A fixed in-degree instead scattered the jumps:
   on the 50-topic check below, same-topic neighbours 0.81 instead of 0.96.) Equal degrees are broken by a
   seeded random draw (the spec's "random unvisited min-degree doc"), so a seed fixes the walk. Cost: each
   visit scans the current kNN list (at most ``k`` entries: n k inspections in all) and lowers the degree of
   its unvisited neighbours with a push onto a binary heap (stale entries skipped when popped: at most
   n + 2 n k pops), so O(n k log n) time and O(n k) memory -- never quadratic in n.
4. :func:`cut_contexts` / :func:`shuffle_contexts`: the path is cut into contexts of about ``context_chars``
   characters of consecutive documents (a context closes at the first document that brings it to the limit;
   documents are never split). The paper cuts 8192-*token* contexts from the concatenated path; the corpus
   stage has no tokens yet, so characters stand in (about 4 per token for English BPE). The contexts are then
   shuffled with a seeded generator so that adjacent contexts are unrelated.

:func:`icp_order` runs all four on one embedding matrix; the corpus step lives in ``icp_steps.py``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np


def _prepare(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (documents, dim) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` documents: about 4 sqrt(n) (faiss's rule of thumb), at most n / 39 (faiss wants 39
    training points per list), at least 1."""
    return max(1, min(n // 39, int(round(4.0 * math.sqrt(n)))))


def knn(emb: np.ndarray, k: int, exact_max: int = 20000, nlist: int | None = None, nprobe: int | None = None,
        seed: int = 0, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, sims)``, both ``(n, min(k, n - 1))``: each document's nearest neighbours by inner product.

    The document itself is left out; each row is in decreasing similarity, equal similarities by increasing
    index. An IVF search may find fewer than ``k`` neighbours: missing entries are id -1 with similarity -inf.
    ``exact_max``: the largest ``n`` searched exactly (``IndexFlatIP``); above it an ``IndexIVFFlat`` with
    ``nlist`` lists (default :func:`default_nlist`) trained on a seeded sample of at most 64 points per list,
    ``nprobe`` lists probed (default 32, at most ``nlist``). ``threads``: faiss's OpenMP threads for this call
    (restored afterwards); results are reproducible for a fixed thread count.
    """
    import faiss

    x = _prepare(emb)
    n, d = x.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        if n <= exact_max:
            index = faiss.IndexFlatIP(d)
            index.add(x)
        else:
            lists = default_nlist(n) if nlist is None else max(1, min(int(nlist), n))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(seed)
            n_train = min(n, 64 * lists)
            sample = np.sort(np.random.default_rng([seed, 7]).choice(n, n_train, replace=False))
            index.train(x[sample])
            index.add(x)
            index.nprobe = min(lists, 32 if nprobe is None else max(1, int(nprobe)))
        sims, ids = index.search(x, kk + 1)
    finally:
        faiss.omp_set_num_threads(before)
    ids = ids.astype(np.int64, copy=False)
    sims = sims.astype(np.float32, copy=False)
    missing = ids < 0
    sims = np.where(missing, -np.inf, sims).astype(np.float32)
    # leave out the document itself (wherever ties placed it), then order by (-sim, id)
    own = ids == np.arange(n, dtype=np.int64)[:, None]
    key_id = np.where(missing, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, -sims.astype(np.float64), own), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)[:, :kk]
    sims = np.take_along_axis(sims, order, axis=1)[:, :kk]
    return ids, sims


@dataclass
class Dedup:
    """:func:`semantic_dedup`'s verdict: ``keep`` per document; for a dropped one, the kept document it
    duplicates (``dup_of``) and their cosine (``dup_sim``); -1 / NaN for kept documents."""

    keep: np.ndarray
    dup_of: np.ndarray
    dup_sim: np.ndarray


def semantic_dedup(ids: np.ndarray, sims: np.ndarray, threshold: float | None) -> Dedup:
    """Drop, in corpus order, each document whose cosine to an earlier *kept* neighbour is > ``threshold``.

    Only the kNN lists are consulted (O(n k)); ``None`` keeps everything.
    """
    n = len(ids)
    keep = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_sim = np.full(n, np.nan, dtype=np.float64)
    if threshold is None or n == 0 or ids.shape[1] == 0:
        return Dedup(keep, dup_of, dup_sim)
    over = sims > threshold
    rows = np.flatnonzero(over.any(axis=1)).tolist()  # only documents with a close neighbour can be dropped
    for i in rows:
        for j, s in zip(ids[i][over[i]].tolist(), sims[i][over[i]].tolist(), strict=True):
            if 0 <= j < i and keep[j]:  # lists are sorted by similarity: the first hit is the closest
                keep[i], dup_of[i], dup_sim[i] = False, j, s
                break
    return Dedup(keep, dup_of, dup_sim)


def restrict(ids: np.ndarray, sims: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kNN lists of the kept documents, renumbered among them; dropped neighbours become -1 (moved last,
    order of the others unchanged)."""
    new = np.full(len(keep) + 1, -1, dtype=np.int64)  # index -1 (missing) maps to -1 too
    new[np.flatnonzero(keep)] = np.arange(int(keep.sum()), dtype=np.int64)
    sub_ids = new[ids[keep]]
    sub_sims = np.where(sub_ids < 0, -np.inf, sims[keep]).astype(np.float32)
    order = np.argsort(sub_ids < 0, axis=1, kind="stable")
    return np.take_along_axis(sub_ids, order, axis=1), np.take_along_axis(sub_sims, order, axis=1)


@dataclass
class Walk:
    """:func:`traverse`'s result: the visiting order, where each path starts, and what the walk cost."""

    path: np.ndarray  # document indices in visiting order (a permutation of range(n))
    starts: np.ndarray  # bool per path position: a jump to a min-degree document begins a new path here
    degree: np.ndarray  # each document's degree in the undirected kNN graph before the walk
    inspections: int = 0  # kNN-list entries looked at
    heap_pops: int = 0  # min-degree queue pops (stale entries included)

    @property
    def n_paths(self) -> int:
        return int(self.starts.sum())


def undirected(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph as an undirected graph in CSR form ``(indptr, nbrs)``: ``i`` and ``j`` are adjacent when
    either lists the other (-1 entries and self-loops ignored, each edge once per endpoint)."""
    n, k = ids.shape
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    dst = ids.reshape(-1).astype(np.int64)
    ok = (dst >= 0) & (dst != src)
    src, dst = src[ok], dst[ok]
    code = np.sort(np.concatenate([src * n + dst, dst * n + src]))  # sorted by (source, neighbour)
    if len(code):
        code = code[np.concatenate([[True], code[1:] != code[:-1]])]
    a, b = code // n, code % n
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n), out=indptr[1:])
    return indptr, b


def traverse(ids: np.ndarray, seed: int = 0) -> Walk:
    """Paper Alg. 1 over kNN lists sorted by decreasing similarity (see the module docstring)."""
    n = len(ids)
    indptr, adj = undirected(ids) if n else (np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    degree = np.diff(indptr)
    deg = degree.tolist()
    indptr_l, adj_l = indptr.tolist(), adj.tolist()
    tie = np.random.default_rng([seed, 1]).permutation(n)
    doc_of = np.argsort(tie).tolist()  # the draw is a permutation, so it names the document
    tie_l = tie.tolist()
    # the queue holds plain ints deg * n + draw (cheap to compare): smallest degree first, then the draw;
    # an entry whose degree is out of date is skipped when popped
    heap = (degree * n + tie).tolist()
    heapq.heapify(heap)
    lists = ids.tolist()
    visited = bytearray(n)
    path: list[int] = []
    starts: list[bool] = []
    inspections = pops = 0

    def visit(v: int) -> None:  # remove v from the graph: its unvisited neighbours lose one degree
        visited[v] = 1
        path.append(v)
        for u in adj_l[indptr_l[v]:indptr_l[v + 1]]:
            if not visited[u]:
                deg[u] -= 1
                heapq.heappush(heap, deg[u] * n + tie_l[u])

    while len(path) < n:
        while True:
            d, t = divmod(heapq.heappop(heap), n)
            cur = doc_of[t]
            pops += 1
            if not visited[cur] and d == deg[cur]:
                break
        starts.append(True)
        visit(cur)
        while True:
            nxt = -1
            for j in lists[cur]:
                inspections += 1
                if j < 0:
                    break
                if not visited[j]:
                    nxt = j
                    break
            if nxt < 0:
                break
            cur = nxt
            starts.append(False)
            visit(cur)
    return Walk(np.asarray(path, dtype=np.int64), np.asarray(starts, dtype=bool), degree, inspections, pops)


def cut_contexts(lengths: np.ndarray, context_chars: int) -> np.ndarray:
    """Context number of each path position: consecutive documents until a context reaches ``context_chars``."""
    if context_chars < 1:
        raise ValueError(f"context_chars must be >= 1, got {context_chars}")
    out = np.empty(len(lengths), dtype=np.int64)
    ctx = acc = 0
    for i, length in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        out[i] = ctx
        acc += length
        if acc >= context_chars:
            ctx, acc = ctx + 1, 0
    return out


def shuffle_contexts(contexts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(order, new_context)``: path positions in emitted order (contexts in a seeded random order, documents
    within a context in path order) and each emitted document's context number after the shuffle."""
    n_ctx = int(contexts.max()) + 1 if len(contexts) else 0
    rank = np.empty(n_ctx, dtype=np.int64)
    rank[np.random.default_rng([seed, 2]).permutation(n_ctx)] = np.arange(n_ctx, dtype=np.int64)
    new = rank[contexts]
    order = np.argsort(new, kind="stable")
    return order, new[order]


@dataclass
class IcpResult:
    """The ordering of one corpus. ``order``: indices of the kept input documents in emitted order, with their
    ``context`` (after shuffling), ``position`` (place in the traversal path) and ``prev_cosine`` (cosine to the
    previous document of the path; NaN for the first). ``dedup`` says which documents were dropped."""

    order: np.ndarray
    context: np.ndarray
    position: np.ndarray
    prev_cosine: np.ndarray
    dedup: Dedup
    walk: Walk
    input_cosine: float | None = None  # mean cosine of consecutive kept documents in input order (the baseline)

    def summary(self) -> dict:
        pc = self.prev_cosine[np.isfinite(self.prev_cosine)]
        return {"docs": int(len(self.order)), "dropped": int((~self.dedup.keep).sum()), "paths": self.walk.n_paths,
                "contexts": int(self.context.max()) + 1 if len(self.context) else 0,
                "mean_path_cosine": float(pc.mean()) if len(pc) else None,
                "mean_input_cosine": self.input_cosine, "inspections": self.walk.inspections}


def path_cosines(emb: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Cosine of each path document to the one before it (NaN for the first)."""
    out = np.full(len(path), np.nan, dtype=np.float64)
    if len(path) > 1:
        a, b = emb[path[1:]], emb[path[:-1]]
        out[1:] = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return out


def icp_order(emb: np.ndarray, lengths: np.ndarray, k: int = 10, dedup_cosine: float | None = 0.9,
              context_chars: int = 32768, seed: int = 0, exact_max: int = 20000, nlist: int | None = None,
              nprobe: int | None = None, threads: int = 1) -> IcpResult:
    """kNN -> semantic dedup -> traversal -> contexts -> context shuffle, on unit-row embeddings ``emb`` of
    documents with ``lengths`` characters (see the module docstring)."""
    x = _prepare(emb)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) != len(x):
        raise ValueError(f"{len(lengths)} lengths for {len(x)} embeddings")
    ids, sims = knn(x, k, exact_max=exact_max, nlist=nlist, nprobe=nprobe, seed=seed, threads=threads)
    dd = semantic_dedup(ids, sims, dedup_cosine)
    kept = np.flatnonzero(dd.keep)
    sub_ids, _ = restrict(ids, sims, dd.keep)
    walk = traverse(sub_ids, seed)
    path = kept[walk.path]  # input indices in path order
    prev = path_cosines(x, path)
    contexts = cut_contexts(lengths[path], context_chars)
    pos_order, new_ctx = shuffle_contexts(contexts, seed)
    base = path_cosines(x, kept)[1:]
    return IcpResult(order=path[pos_order], context=new_ctx, position=pos_order, prev_cosine=prev[pos_order],
                     dedup=dd, walk=walk, input_cosine=float(base.mean()) if len(base) else None)
