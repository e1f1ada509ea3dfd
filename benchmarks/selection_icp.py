"""ICP ordering at scale for ``benchmarks/selection_throughput.py``: topic corpora, the naive greedy baseline,
per-component timings of the ``icp_order`` step, and growth exponents between sizes.

Text mode: documents drawn from planted topics (300-word vocabularies each), ordered by the step itself with its
hashing embedder. Synthetic mode: Gaussian topic vectors given straight to :func:`kiln.corpus.selection.icp.icp_order`
(skips embedding, so 100k documents take under a minute). The baseline is a greedy nearest-neighbour walk that
scans every unvisited document at each step, O(n^2 d), run at the smallest size only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from corpus_synth import FUNCTION, Vocab


def _timed(fn: Callable[..., Any], into: dict[str, Any], key: str) -> Callable[..., Any]:
    """``fn`` that adds its seconds to ``into[key]`` and leaves its last result in ``into[key + ':out']``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            into[key + ":out"] = out = fn(*args, **kwargs)
            return out
        finally:
            into[key] = into.get(key, 0.0) + time.perf_counter() - t0

    return wrapper


@contextmanager
def clocked(module: Any, names: tuple[str, ...], into: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Time every call of ``module.<name>`` (summed into ``into[name]``) while the block runs; restored after."""
    saved = {n: getattr(module, n) for n in names}
    for n in names:
        setattr(module, n, _timed(saved[n], into, n))
    try:
        yield into
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)

def topic_docs(n: int, n_topics: int, seed: int = 0, words: tuple[int, int] = (180, 320),
               topic_share: float = 0.5) -> tuple[list[dict], np.ndarray]:
    """``n`` documents (~1-2 KB) of ``n_topics`` planted topics: each topic has its own 300 content words, a
    document mixes them (``topic_share`` of its words) with shared Zipf vocabulary and English function words."""
    rng = np.random.default_rng([seed, 11])
    vocab = Vocab.build(seed=seed)
    content = np.array(vocab.content, dtype=object)
    zipf = np.diff(np.asarray(vocab.cum), prepend=0.0)
    zipf /= zipf.sum()
    func = np.array(FUNCTION, dtype=object)
    fz = np.diff(np.asarray(vocab.fcum), prepend=0.0)
    fz /= fz.sum()
    topic_words = [rng.choice(len(content), 300, replace=False) for _ in range(n_topics)]
    topic = rng.integers(0, n_topics, n)
    docs = []
    for i in range(n):
        m = int(rng.integers(words[0], words[1]))
        kind = rng.random(m)
        idx = np.where(kind < topic_share, topic_words[topic[i]][rng.integers(0, 300, m)],
                       rng.choice(len(content), m, p=zipf))
        ws = np.where(kind > 0.55 + 0.45 * topic_share, func[rng.choice(len(func), m, p=fz)], content[idx])
        text = ". ".join(" ".join(ws[j : j + 12].tolist()) for j in range(0, m, 12)) + "."
        docs.append({"id": f"t{i}", "text": text, "topic": int(topic[i]), "source": "synthetic"})
    return docs, topic


def gaussian_topics(n: int, dim: int, n_topics: int, seed: int = 0, noise: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit rows: a topic centre plus isotropic noise (same-topic cosine ~ 1 / (1 + noise^2)); lengths ~1-2 KB."""
    rng = np.random.default_rng([seed, 12])
    centres = rng.standard_normal((n_topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.integers(0, n_topics, n)
    x = centres[topic] + (noise / math.sqrt(dim)) * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), rng.integers(1000, 2000, n), topic


def same_topic_rate(order: np.ndarray, topic: np.ndarray, context: np.ndarray | None = None) -> float:
    """Share of consecutive documents of ``order`` (within one context, if given) with the same planted topic."""
    if len(order) < 2:
        return float("nan")
    same = topic[order[1:]] == topic[order[:-1]]
    if context is not None:
        inside = context[1:] == context[:-1]
        return float(same[inside].mean()) if inside.any() else float("nan")
    return float(same.mean())


def naive_greedy_order(emb: np.ndarray, start: int = 0) -> np.ndarray:
    """The quadratic baseline: from ``start``, repeatedly move to the most similar unvisited document, found by a
    full similarity scan of the unvisited documents at every step (n^2 / 2 dot products: O(n^2 d), no index).

    The unvisited rows are kept contiguous (a visited row is swapped with the last one), so each scan is one
    matrix-vector product over a view, the fastest form of the naive walk."""
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n = len(x)
    buf, ids = x.copy(), np.arange(n, dtype=np.int64)
    where = np.arange(n, dtype=np.int64)  # row of each document in buf
    order = np.empty(n, dtype=np.int64)
    cur, m = start, n
    for t in range(n):
        order[t] = cur
        p, last = where[cur], m - 1
        other = ids[last]
        buf[p], ids[p], where[other] = buf[last], other, p
        m -= 1
        if m == 0:
            break
        cur = int(ids[int(np.argmax(buf[:m] @ x[cur]))])
    return order


def bench_icp(n: int, mode: str, dim: int, exact_max: int, seed: int = 0, naive: bool = False) -> dict[str, Any]:
    """ICP ordering of ``n`` planted-topic documents: embed / kNN / traversal / whole-step seconds and quality."""
    from kiln.corpus.selection import embed as embed_mod
    from kiln.corpus.selection import icp as icp_mod
    from kiln.corpus.selection.icp_steps import IcpOrderParams
    from kiln.corpus.selection.icp_steps import run as icp_step
    from kiln.corpus.steps.base import StepContext

    n_topics = max(2, n // 200)
    params = IcpOrderParams(exact_max=exact_max, seed=seed, threads=1,
                            embed={"dim": dim} if mode == "text" else {})
    clock: dict[str, Any] = {}
    t0 = time.perf_counter()
    if mode == "text":
        docs, topic = topic_docs(n, n_topics, seed)
    else:
        emb, lengths, topic = gaussian_topics(n, dim, n_topics, seed)
    gen_s = time.perf_counter() - t0
    with clocked(embed_mod, ("embed_texts",), clock), clocked(icp_mod, ("knn", "traverse"), clock):
        t0 = time.perf_counter()
        if mode == "text":
            out, rep = icp_step(docs, params, StepContext(step="icp_order"))
            index = {d["id"]: i for i, d in enumerate(docs)}
            order = np.array([index[d["id"]] for d in out], dtype=np.int64)
            context = np.array([d["icp_context"] for d in out], dtype=np.int64)
            summary = rep.summary  # type: ignore[attr-defined]
        else:
            res = icp_mod.icp_order(emb, lengths, k=params.k, dedup_cosine=params.dedup_cosine,
                                    context_chars=params.context_chars, seed=seed, exact_max=exact_max, threads=1)
            order, context, summary = res.order, res.context, res.summary()
        whole = time.perf_counter() - t0
    embed_s, knn_s, trav_s = clock.get("embed_texts", 0.0), clock.get("knn", 0.0), clock.get("traverse", 0.0)
    rng = np.random.default_rng([seed, 13])
    row: dict[str, Any] = {
        "n": n, "mode": mode, "dim": dim, "topics": n_topics, "knn_kind": "exact" if n <= exact_max else "ivf",
        "generate_s": round(gen_s, 3), "embed_s": round(embed_s, 3), "knn_s": round(knn_s, 3),
        "traverse_s": round(trav_s, 3), "other_s": round(whole - embed_s - knn_s - trav_s, 3),
        "step_s": round(whole, 3), "order_s": round(whole - embed_s, 3),
        "traverse_us_per_doc": round(1e6 * trav_s / n, 2), "kept": int(len(order)),
        "dropped": summary.get("dropped"), "paths": summary.get("paths"), "inspections": summary.get("inspections"),
        "heap_pops": clock["traverse:out"].heap_pops,  # the walk's min-degree queue pops (stale ones included)
        "mean_path_cosine": summary.get("mean_path_cosine"), "mean_input_cosine": summary.get("mean_input_cosine"),
        "same_topic_icp": round(same_topic_rate(order, topic, context), 4),
        "same_topic_input": round(same_topic_rate(np.arange(n), topic), 4),
        "same_topic_random": round(same_topic_rate(rng.permutation(n), topic), 4),
    }
    if naive:
        x = clock["embed_texts:out"] if mode == "text" else emb  # the step's own embeddings
        t0 = time.perf_counter()
        nv = naive_greedy_order(x)
        row["naive_s"] = round(time.perf_counter() - t0, 3)
        row["same_topic_naive"] = round(same_topic_rate(nv, topic), 4)
        row["naive_mean_path_cosine"] = round(float(np.einsum("ij,ij->i", x[nv[1:]], x[nv[:-1]]).mean()), 4)
        row["naive_over_order"] = round(row["naive_s"] / max(row["order_s"], 1e-9), 2)
        row["naive_over_traverse"] = round(row["naive_s"] / max(trav_s, 1e-9), 1)
    return row


def growth(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Between consecutive sizes: n ratio, time ratio and exponent log(t2/t1)/log(n2/n1) per key."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        g: dict[str, Any] = {"from": a["n"], "to": b["n"], "n_ratio": round(b["n"] / a["n"], 2)}
        for k in keys:
            if a.get(k) and b.get(k):
                ratio = b[k] / a[k]
                g[k] = {"ratio": round(ratio, 2), "exponent": round(math.log(ratio) / math.log(b["n"] / a["n"]), 2)}
        out.append(g)
    return out
