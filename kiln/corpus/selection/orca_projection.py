"""The seeded, block-wise random projection of ORCA's gradients (:mod:`kiln.corpus.selection.orca`, whose docstring
describes the kinds, the memory and the cost), and the cosine of projected rows with the task's vector.

Han et al. 2023, "Understanding In-Context Learning via Supportive Pretraining Data" (arXiv 2306.15091) use full
gradients; projecting is kiln's choice. Dense kinds: Johnson-Lindenstrauss with +-1 or N(0, 1) entries; ``sparse``:
CountSketch (Charikar, Chen, Farach-Colton 2002, "Finding Frequent Items in Data Streams").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

KINDS = ("rademacher", "gaussian", "sparse")


def _block_seed(seed: int, name: str, block: int) -> int:
    return int.from_bytes(hashlib.sha256(f"orca:{seed}:{name}:{block}".encode()).digest()[:8], "big") >> 1


class GradientProjector:
    """A seeded random projection of gradients (lists of per-parameter tensors) to ``dim`` floats; see the module
    docstring for the blocks, the memory and the cache. ``kind``: ``rademacher`` | ``gaussian`` (dense), ``sparse``
    (a CountSketch: each coordinate goes to one seeded output with a seeded sign), or ``auto`` (``rademacher`` when
    its matrix fits ``cache_bytes``, else ``sparse``; :attr:`kind` holds the choice)."""

    def __init__(self, sizes: Sequence[tuple[str, int]], dim: int, seed: int = 0, kind: str = "rademacher",
                 block_bytes: int = 16 << 20, cache_bytes: int = 512 << 20,
                 device: torch.device | str = "cpu") -> None:
        if dim < 1:
            raise ValueError(f"projection dim must be >= 1, got {dim}")
        if kind not in (*KINDS, "auto"):
            raise ValueError(f"projection kind {kind!r}: expected one of {', '.join(KINDS)} or auto")
        self.sizes = [(str(n), int(k)) for n, k in sizes]
        total = sum(k for _, k in self.sizes)
        if kind == "auto":  # dense while its matrix fits the cache, else sparse (regenerating it is too slow)
            kind = "rademacher" if total * 4 * dim <= cache_bytes else "sparse"
        self.dim, self.seed, self.kind = dim, seed, kind
        self.device = torch.device(device)
        self.block_rows = max(1, block_bytes // (4 * dim))
        per_row = 12 if kind == "sparse" else 4 * dim  # sparse: an int64 bucket and a float32 sign per coordinate
        self._cache: dict[tuple[int, int], Any] | None = {} if total * per_row <= cache_bytes else None

    def block(self, param: int, block: int) -> Any:
        """Rows ``[block * block_rows, ...)`` of parameter ``param``'s part of the projection: a (rows, dim) matrix,
        or for ``sparse`` the (rows,) output buckets and signs."""
        if self._cache is not None and (param, block) in self._cache:
            return self._cache[(param, block)]
        name, n = self.sizes[param]
        rows = min(self.block_rows, n - block * self.block_rows)
        gen = torch.Generator(device=self.device).manual_seed(_block_seed(self.seed, name, block))
        out: Any
        if self.kind == "sparse":
            bucket = torch.randint(0, self.dim, (rows,), generator=gen, device=self.device)
            sign = torch.randint(0, 2, (rows,), generator=gen, device=self.device).float().mul_(2).sub_(1)
            out = (bucket, sign)
        elif self.kind == "gaussian":
            out = torch.randn(rows, self.dim, generator=gen, device=self.device).mul_(1.0 / math.sqrt(self.dim))
        else:
            out = torch.randint(0, 2, (rows, self.dim), generator=gen, device=self.device, dtype=torch.int8)
            out = out.float().mul_(2).sub_(1).mul_(1.0 / math.sqrt(self.dim))
        if self._cache is not None:
            self._cache[(param, block)] = out
        return out

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``grads[i]``: (m, n_i) gradients of parameter i for m items -> (m, dim) float32 projections."""
        if len(grads) != len(self.sizes):
            raise ValueError(f"expected gradients for {len(self.sizes)} parameters, got {len(grads)}")
        m = grads[0].shape[0]
        out = torch.zeros(m, self.dim, device=self.device)
        for i, ((name, n), g) in enumerate(zip(self.sizes, grads, strict=True)):
            g = g.reshape(m, -1).to(self.device, torch.float32)
            if g.shape[1] != n:
                raise ValueError(f"gradient of {name} has {g.shape[1]} entries, the projection expects {n}")
            for b, start in enumerate(range(0, n, self.block_rows)):
                part = self.block(i, b)
                piece = g[:, start : start + self.block_rows]
                if self.kind == "sparse":
                    out.index_add_(1, part[0], piece * part[1])
                else:
                    out.addmm_(piece, part)
        return out


def cosine_to(rows: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Cosine of every row with ``vec`` (float64; NaN rows stay NaN, zero vectors give 0)."""
    rows = np.asarray(rows, dtype=np.float64)
    vec = np.asarray(vec, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(vec)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, rows @ vec / np.where(norms > 0, norms, 1.0), np.where(np.isnan(norms), np.nan, 0.0))
