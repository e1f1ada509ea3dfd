"""Packing documents into fixed-length rows.

Two modes over the same document index:

- ``best_fit``: documents are cut into *pieces* of at most ``seq_len`` tokens (piece ``k`` of a document
  starts at ``k * (seq_len - 1)``, so consecutive pieces overlap by one token and every token after a
  document's first is a next-token target exactly once), and the pieces are packed into rows with
  best-fit-decreasing bin packing. Documents are truncated only where longer than a row, never at a row
  boundary chosen by the stream (Ding et al. 2024, "Fewer Truncations Improve Language Modeling").
- ``concat``: the classic concatenate-and-chunk. All documents form one stream; rows of ``seq_len`` start
  every ``seq_len - 1`` tokens (one token of overlap) so every token after the very first is a target once;
  documents cross row boundaries.

A packing is stored as segments: for each row, a run of ``(doc, start, length)`` triples laid out left to
right, the rest of the row being padding. Documents shorter than two tokens carry no target and are dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln import atomic

MODES = ("best_fit", "concat")


@dataclass
class Packing:
    """Rows as segments: row ``r`` holds segments ``row_offsets[r]:row_offsets[r+1]`` in order.

    ``seg_doc``/``seg_start``/``seg_len`` give the document index, the first token within that document
    and the number of tokens. ``n_docs`` is the length of the document index packed, ``n_dropped`` the
    number of documents left out for having fewer than two tokens.
    """

    seq_len: int
    mode: str
    row_offsets: np.ndarray
    seg_doc: np.ndarray
    seg_start: np.ndarray
    seg_len: np.ndarray
    n_docs: int = 0
    n_dropped: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def n_segments(self) -> int:
        return len(self.seg_doc)

    def n_real_tokens(self) -> int:
        """Non-pad token slots over all rows (overlap tokens count once per row they appear in)."""
        return int(self.seg_len.sum())

    def fill_ratio(self) -> float:
        """Non-pad tokens / (n_rows * seq_len); 0.0 for an empty packing."""
        return self.n_real_tokens() / (self.n_rows * self.seq_len) if self.n_rows else 0.0

    def fingerprint(self) -> str:
        """A short hash of the whole packing (rows and segments), to tell packings apart on resume."""
        h = hashlib.sha256(f"{self.mode}:{self.seq_len}:{self.n_docs}:".encode())
        for a in (self.row_offsets, self.seg_doc, self.seg_start, self.seg_len):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def row(self, r: int) -> list[tuple[int, int, int]]:
        """Row ``r``'s segments as ``(doc, start, length)`` tuples (for inspection and tests)."""
        a, b = int(self.row_offsets[r]), int(self.row_offsets[r + 1])
        segs = zip(self.seg_doc[a:b].tolist(), self.seg_start[a:b].tolist(), self.seg_len[a:b].tolist(), strict=True)
        return list(segs)

    def save(self, path: str | Path) -> None:
        """Write the packing to one ``.npz`` file (atomically)."""
        with atomic.staged_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                seq_len=self.seq_len,
                mode=self.mode,
                row_offsets=self.row_offsets,
                seg_doc=self.seg_doc,
                seg_start=self.seg_start,
                seg_len=self.seg_len,
                n_docs=self.n_docs,
                n_dropped=self.n_dropped,
            )

    @classmethod
    def load(cls, path: str | Path) -> Packing:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                seq_len=int(z["seq_len"]),
                mode=str(z["mode"]),
                row_offsets=z["row_offsets"],
                seg_doc=z["seg_doc"],
                seg_start=z["seg_start"],
                seg_len=z["seg_len"],
                n_docs=int(z["n_docs"]),
                n_dropped=int(z["n_dropped"]),
            )


def grouped_arange(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``, vectorised."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def split_pieces(doc_lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut documents into pieces of at most ``seq_len`` tokens overlapping by one token.

    Returns ``(doc, start, length)`` arrays in (doc, piece) order. A document of length ``L >= 2`` gives
    ``ceil((L - 1) / (seq_len - 1))`` pieces, each of at least two tokens; shorter documents give none.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    stride = seq_len - 1
    n_pieces = np.where(lengths >= 2, (lengths - 1 + stride - 1) // stride, 0)
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
    start = grouped_arange(n_pieces) * stride
    length = np.minimum(seq_len, lengths[doc] - start)
    return doc, start, length


def _best_fit_rows(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Best-fit assignment of items (already in placement order) to rows; returns each item's row.

    Open rows are bucketed by remaining capacity; a Python int used as a bitset marks the non-empty
    buckets, so "smallest remaining capacity >= size" is a shift plus a lowest-set-bit. Each placement
    costs O(capacity / 64) word operations, O(n * capacity / 64) overall after the O(n log n) sort, and
    items filling a whole row skip the loop. Within a bucket the most recently touched row is used (LIFO).
    """
    n = len(sizes)
    rows = np.empty(n, dtype=np.int64)
    n_full = int(np.searchsorted(-sizes, -capacity, side="right"))  # sizes are sorted descending
    rows[:n_full] = np.arange(n_full)
    n_rows = n_full
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]
    avail = 0  # bit c set <=> buckets[c] non-empty
    out: list[int] = []
    append = out.append
    for size in sizes[n_full:].tolist():
        m = avail >> size
        if m:
            c = size + (m & -m).bit_length() - 1
            bucket = buckets[c]
            row = bucket.pop()
            if not bucket:
                avail ^= 1 << c
        else:
            row = n_rows
            n_rows += 1
            c = capacity
        rem = c - size
        if rem >= 2:  # every piece has >= 2 tokens, so rows with < 2 free slots are closed
            bucket = buckets[rem]
            if not bucket:
                avail |= 1 << rem
            bucket.append(row)
        append(row)
    rows[n_full:] = out
    return rows


def _from_assignment(
    row: np.ndarray, doc: np.ndarray, start: np.ndarray, length: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group items by row (stably, so each row keeps its pieces in placement order)."""
    order = np.argsort(row, kind="stable")
    counts = np.bincount(row, minlength=n_rows)
    row_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=row_offsets[1:])
    return row_offsets, doc[order], start[order], length[order]


def _pack_best_fit(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    doc, start, length = split_pieces(lengths, seq_len)
    order = np.argsort(-length, kind="stable")  # descending; ties keep (doc, piece) order
    rows_sorted = _best_fit_rows(length[order], seq_len)
    n_rows = int(rows_sorted.max()) + 1 if len(rows_sorted) else 0
    return _from_assignment(rows_sorted, doc[order], start[order], length[order], n_rows)


def _pack_concat(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    kept = np.flatnonzero(lengths >= 2)
    klen = lengths[kept]
    doc_off = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(klen, out=doc_off[1:])
    total = int(doc_off[-1])
    stride = seq_len - 1
    n_rows = (total - 1 + stride - 1) // stride if total >= 2 else 0
    row_start = np.arange(n_rows, dtype=np.int64) * stride
    row_end = np.minimum(row_start + seq_len, total)
    first = np.searchsorted(doc_off, row_start, side="right") - 1  # document holding the row's first token
    last = np.searchsorted(doc_off, row_end, side="left") - 1  # document holding the row's last token
    counts = last - first + 1
    seg_row = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    k = first[seg_row] + grouped_arange(counts)  # index into kept documents
    lo = np.maximum(row_start[seg_row], doc_off[k])
    hi = np.minimum(row_end[seg_row], doc_off[k + 1])
    row_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=row_offsets[1:])
    return row_offsets, kept[k], lo - doc_off[k], hi - lo


def pack(doc_lengths: np.ndarray, seq_len: int, mode: str = "best_fit") -> Packing:
    """Pack documents of the given lengths into rows of ``seq_len`` tokens (``best_fit`` or ``concat``)."""
    if mode not in MODES:
        raise ValueError(f"packing mode must be one of {MODES}, got {mode!r}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 for next-token targets, got {seq_len}")
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths.size and lengths.min() < 0):
        raise ValueError("doc_lengths must be a 1-D array of non-negative lengths")
    fn = _pack_best_fit if mode == "best_fit" else _pack_concat
    row_offsets, seg_doc, seg_start, seg_len = fn(lengths, seq_len)
    return Packing(
        seq_len=seq_len,
        mode=mode,
        row_offsets=row_offsets,
        seg_doc=seg_doc.astype(np.int64, copy=False),
        seg_start=seg_start.astype(np.int64, copy=False),
        seg_len=seg_len.astype(np.int64, copy=False),
        n_docs=len(lengths),
        n_dropped=int(np.count_nonzero(lengths < 2)),
    )
