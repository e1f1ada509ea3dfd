"""GOT-D: select pre-training candidates whose mass pulls the pool towards a target, by optimal transport.

Kang, Just, Sun, Jahagirdar, Zhang, Du, Kim, Jia (2024), "Get more for less: Principled Data Selection for
Warming Up Fine-Tuning in LLMs", ICLR 2024, arXiv:2405.02774 (reference code: REDSgnaoh/DV4LLM,
``ot-selection.ipynb``). Calibration from Just et al. (2023), "LAVA: Data Valuation without Pre-Specified
Learning Algorithms", ICLR 2023.

The idea: the model was pre-trained on something like the candidate pool, and fine-tuning should shift it towards
the target. Entropic OT between the target sample (x, weights a) and the pool (y, weights b) gives dual potentials;
the pool-side potential ``g_j`` is the gradient of the OT distance with respect to the pool's mass at ``y_j``. A
candidate with very negative ``g_j`` is one whose extra weight lowers the distance to the target the most: a
region the target needs but the pool under-represents, not merely a candidate close to the target (a kNN rule
picks the dense, already well-represented mode instead).

Steps (``data.md`` §6):

1. Text becomes samples of at most ``chunk_chars`` (1000) characters: a long document is split into consecutive
   chunks (at most ``max_chunks`` of them, evenly spaced, so a huge document cannot flood the pool), a short one
   stays one sample (the paper also concatenates short texts into 1000-character samples; kiln scores
   documents, so a short document is not merged with others). Samples are embedded with
   :func:`kiln.corpus.selection.embed.embed_texts` (hashing or MiniLM; the paper uses a DistilBERT fine-tuned
   on the target task).
2. Entropic OT with squared-Euclidean cost, uniform weights, ``epsilon`` 0.1 (absolute, as the reference code's
   ``PointCloud(epsilon=0.1)``), at most 2000 iterations, solved in the log domain by POT's
   ``ot.bregman.sinkhorn_log`` (numerically stable for small ``epsilon``). POT's scalings are converted to the
   standard dual ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / epsilon)``.
3. LAVA calibration: ``g'_i = g_i - sum_{j != i} g_j / (N - 1)`` (LAVA's Eq.; ``data.md`` writes ``/ N``). Both
   are increasing affine maps of ``g`` (slope ``1 + 1/(N-1)``), so the ranking is that of ``g``; the calibration
   removes the potentials' free additive constant, so scores are comparable between runs.
4. Score = ``-g'`` (higher = selected first; the paper sorts ``g'`` ascending and takes the first k). A document
   scores the mean of its samples' scores. Top-k selection is then ``select`` with ``keep_docs: k``.

Memory: POT builds the dense ``n_target x n_pool`` cost matrix (float64) plus about three temporaries of that
size, ~32 bytes per cell. When ``n_target * n_pool`` exceeds ``max_cells`` the *target* is subsampled (a seeded,
deterministic draw without replacement) to ``max_cells // n_pool`` samples: the target only needs to be an
unbiased sample of its distribution. When even ``min_target`` target samples would exceed ``max_cells`` the pool
is too large for one dense solve and :func:`ot_solve` raises ``ValueError`` (raise ``max_cells``, lower
``max_chunks`` or pre-filter the pool) rather than batching the pool, which would change the potentials.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MIN_TARGET = 16  # fewest target samples a subsampled OT problem may keep


@dataclass(frozen=True)
class OTResult:
    """Dual potentials of one entropic OT solve (standard convention) and how the solve went."""

    f: np.ndarray  # target-side potential, one per target sample used
    g: np.ndarray  # pool-side potential, one per pool sample
    n_iter: int
    marginal_error: float  # L2 norm of the pool-marginal violation at the end
    converged: bool
    target_used: np.ndarray  # indices of the target samples in the solve (all unless subsampled)


def sq_euclidean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``C_ij = |x_i - y_j|^2`` in float64, clipped at 0 (the expansion can round slightly negative)."""
    x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cost = (x64 * x64).sum(1)[:, None] + (y64 * y64).sum(1)[None, :] - 2.0 * (x64 @ y64.T)
    return np.maximum(cost, 0.0)


def _check_points(name: str, emb: np.ndarray) -> np.ndarray:
    arr = np.asarray(emb, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} embeddings must be a non-empty (n, d) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} embeddings contain NaN or infinite values")
    return arr


def ot_solve(target_emb: np.ndarray, pool_emb: np.ndarray, epsilon: float = 0.1, max_iter: int = 2000,
             tol: float = 1e-7, max_cells: int = 20_000_000, seed: int = 0) -> OTResult:
    """Entropic OT (uniform weights, squared-Euclidean cost) from the target to the pool; see the module docstring.

    ``tol`` bounds the L2 norm of the pool-marginal violation (POT's ``stopThr``, checked every 10 iterations);
    a solve that stops at ``max_iter`` before reaching it still returns its potentials, with a warning.
    """
    import ot

    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    x, y = _check_points("target", target_emb), _check_points("pool", pool_emb)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"target and pool embeddings differ in width: {x.shape[1]} vs {y.shape[1]}")
    n_t, n_p = len(x), len(y)
    used = np.arange(n_t)
    if n_t * n_p > max_cells:
        keep = max_cells // n_p
        if keep < min(MIN_TARGET, n_t):
            raise ValueError(f"GOT-D pool of {n_p} samples is too large for max_cells={max_cells} (a dense "
                             f"{min(MIN_TARGET, n_t)} x {n_p} cost matrix at least, ~32 bytes per cell): raise "
                             "max_cells, lower max_chunks, or pre-filter the pool")
        used = np.sort(np.random.default_rng(seed).choice(n_t, size=keep, replace=False))
        x = x[used]
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(n_p, 1.0 / n_p)
    cost = sq_euclidean(x, y)
    _, log = ot.bregman.sinkhorn_log(a, b, cost, epsilon, numItermax=max_iter, stopThr=tol, log=True, warn=False)
    err = float(log["err"][-1]) if log["err"] else float("inf")
    converged = err < tol
    if not converged:
        warnings.warn(f"GOT-D Sinkhorn stopped after {max_iter} iterations with pool-marginal error {err:.3g} "
                      f"(> tol {tol:g}); raise max_iter or epsilon", RuntimeWarning, stacklevel=2)
    # POT's plan is exp(log_u_i - C_ij / eps + log_v_j); the standard dual has a_i b_j exp((f_i + g_j - C_ij) / eps)
    f = epsilon * (np.asarray(log["log_u"]) - np.log(a))
    g = epsilon * (np.asarray(log["log_v"]) - np.log(b))
    return OTResult(f=f, g=g, n_iter=int(log["niter"]) + 1, marginal_error=err, converged=converged,
                    target_used=used)


def ot_potentials(target_emb: np.ndarray, pool_emb: np.ndarray, epsilon: float = 0.1, max_iter: int = 2000,
                  tol: float = 1e-7, max_cells: int = 20_000_000, seed: int = 0) -> np.ndarray:
    """The pool-side dual potential ``g`` (one float per pool row) of :func:`ot_solve`."""
    return ot_solve(target_emb, pool_emb, epsilon, max_iter, tol, max_cells, seed).g


def calibrate(g: np.ndarray) -> np.ndarray:
    """LAVA calibration ``g'_i = g_i - sum_{j != i} g_j / (N - 1)``: invariant to a constant shift of ``g``."""
    g = np.asarray(g, dtype=np.float64)
    n = len(g)
    if n < 2:
        return np.zeros_like(g)
    return g - (g.sum() - g) / (n - 1)


def gotd_point_scores(target_emb: np.ndarray, pool_emb: np.ndarray, epsilon: float = 0.1, max_iter: int = 2000,
                      tol: float = 1e-7, max_cells: int = 20_000_000, seed: int = 0) -> np.ndarray:
    """Per pool row: ``-g'`` (higher = pulls the pool towards the target more; take the top k)."""
    return -calibrate(ot_potentials(target_emb, pool_emb, epsilon, max_iter, tol, max_cells, seed))


def chunk_text(text: str, chunk_chars: int = 1000, max_chunks: int = 16) -> list[str]:
    """Consecutive ``chunk_chars`` pieces of ``text`` (one piece if shorter); at most ``max_chunks``, evenly spaced."""
    if chunk_chars < 1 or max_chunks < 1:
        raise ValueError(f"chunk_chars and max_chunks must be >= 1, got {chunk_chars}, {max_chunks}")
    pieces = [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)] or [text]
    if len(pieces) > max_chunks:
        picks = np.linspace(0, len(pieces) - 1, max_chunks).round().astype(int)
        pieces = [pieces[i] for i in picks]
    return pieces


def chunk_all(texts: list[str], chunk_chars: int, max_chunks: int) -> tuple[list[str], np.ndarray]:
    """Every text's chunks in order and, per chunk, the index of its text."""
    chunks: list[str] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        pieces = chunk_text(text, chunk_chars, max_chunks)
        chunks.extend(pieces)
        owner.extend([i] * len(pieces))
    return chunks, np.asarray(owner, dtype=np.int64)


def gotd_doc_scores(target_texts: list[str], pool_texts: list[str], embed: object | None = None,
                    epsilon: float = 0.1, max_iter: int = 2000, tol: float = 1e-7, chunk_chars: int = 1000,
                    max_chunks: int = 16, max_cells: int = 20_000_000, seed: int = 0) -> np.ndarray:
    """GOT-D score of every pool text: the mean ``-g'`` of its chunks against the chunked, embedded target.

    ``embed`` is an :class:`kiln.corpus.selection.embed.EmbedParams` (default: hashing)."""
    from kiln.corpus.selection.embed import embed_texts

    if not target_texts:
        raise ValueError("GOT-D needs at least one target text")
    if not pool_texts:
        return np.zeros(0)
    target_chunks, _ = chunk_all(target_texts, chunk_chars, max_chunks)
    pool_chunks, owner = chunk_all(pool_texts, chunk_chars, max_chunks)
    both = embed_texts(target_chunks + pool_chunks, embed)  # type: ignore[arg-type]  # one call: one IDF table
    t_emb, p_emb = both[: len(target_chunks)], both[len(target_chunks):]
    point = gotd_point_scores(t_emb, p_emb, epsilon, max_iter, tol, max_cells, seed)
    sums = np.bincount(owner, weights=point, minlength=len(pool_texts))
    counts = np.bincount(owner, minlength=len(pool_texts))
    return sums / counts
