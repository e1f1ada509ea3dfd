"""Batches from a packing: deterministic, rank-aware, resumable, no repeats or skips within an epoch.

The stream is a global row counter ``g`` that runs forever. Row ``g`` is packing row
``perm(g // R)[g % R]`` where ``R`` is the number of rows and ``perm(e)`` a permutation drawn from
``np.random.default_rng([seed, e])`` (the identity without shuffling). Each optimizer step consumes
``rows_per_step`` consecutive global rows; rank ``r`` of ``W`` takes the ``r``-th contiguous slice of
``rows_per_step / W`` of them, so the union over ranks is exactly what one rank would read alone, and the
whole position is one integer (``rows_consumed``). This replaces random-window sampling, which repeats and
skips data.

Next-token targets under each attention mode (for the objective): the target of position ``t`` is token
``t + 1``; it is a real target when ``segments[t + 1] != -1`` (``causal``) or when
``segments[t + 1] == segments[t] != -1`` (``document``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from kiln.data.packing import Packing, grouped_arange
from kiln.data.shards import Shards

ATTENTIONS = ("document", "causal")


@dataclass
class Batch:
    """A packed batch of rows, each ``seq_len`` long.

    ``segments`` numbers the pieces in each row 0, 1, 2, ... (-1 on padding); in ``concat`` packing a segment is
    the part of one document inside the row. ``positions`` restart at 0 at every segment start when
    ``attention == "document"`` (0 on padding) and run 0..seq_len-1 along each row when ``"causal"``; a document
    continuing from the previous row does not carry its position count over. The trainer passes ``segments``
    to the model only for ``"document"`` attention. ``domains``: each token's document domain id (-1 on padding)
    when the tokens carry them (``tokens.domain_field``), else None.
    """

    tokens: torch.Tensor  # (B, seq_len) int64; pad id fills empty space
    segments: torch.Tensor  # (B, seq_len) int64
    positions: torch.Tensor  # (B, seq_len) int64
    attention: str
    n_tokens: int  # non-pad tokens
    domains: torch.Tensor | None = None  # (B, seq_len) int64

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            tokens=self.tokens.to(device, non_blocking=non_blocking),
            segments=self.segments.to(device, non_blocking=non_blocking),
            positions=self.positions.to(device, non_blocking=non_blocking),
            attention=self.attention,
            n_tokens=self.n_tokens,
            domains=None if self.domains is None else self.domains.to(device, non_blocking=non_blocking),
        )


def check_packing(shard: Shards, packing: Packing) -> None:
    """Raise ``ValueError`` unless ``packing`` was made for ``shard``'s document index."""
    if packing.n_docs != shard.n_docs:
        raise ValueError(
            f"packing was made for {packing.n_docs} documents but shard {shard.prefix} has {shard.n_docs}; "
            "repack the shard"
        )
    ro = packing.row_offsets
    if len(ro) < 1 or ro[0] != 0 or ro[-1] != packing.n_segments or np.any(np.diff(ro) < 0):
        raise ValueError("packing row_offsets are malformed (must start at 0, never decrease, end at n_segments)")
    if packing.n_segments:
        lengths = shard.doc_lengths()
        if packing.seg_doc.min() < 0 or packing.seg_doc.max() >= shard.n_docs:
            raise ValueError(f"packing refers to documents outside shard {shard.prefix}")
        end = packing.seg_start + packing.seg_len
        if packing.seg_start.min() < 0 or np.any(end > lengths[packing.seg_doc]):
            raise ValueError(f"packing segments run past the ends of documents in shard {shard.prefix}; repack")
        seg_row = np.repeat(np.arange(packing.n_rows), np.diff(packing.row_offsets))
        if np.any(np.bincount(seg_row, weights=packing.seg_len, minlength=packing.n_rows) > packing.seq_len):
            raise ValueError(f"packing has rows longer than seq_len={packing.seq_len}")


def materialise(shard: Shards, packing: Packing, rows: np.ndarray, pad_id: int, attention: str,
                doc_domains: np.ndarray | None = None) -> Batch:
    """Build the batch of the given packing rows (in that order); copies only the tokens the rows use.
    ``doc_domains``: every document's domain id (:func:`kiln.data.domains.load_doc_domains`), spread to tokens."""
    rows = np.asarray(rows, dtype=np.int64)
    n, L = len(rows), packing.seq_len
    counts = packing.row_offsets[rows + 1] - packing.row_offsets[rows]
    seg = np.repeat(packing.row_offsets[rows], counts) + grouped_arange(counts)
    seg_no = grouped_arange(counts)  # segment number within its row
    lens = packing.seg_len[seg]
    row_tokens = np.bincount(np.repeat(np.arange(n), counts), weights=lens, minlength=n).astype(np.int64)
    within = grouped_arange(lens)  # position of each token inside its segment
    src = np.repeat(shard.offsets[packing.seg_doc[seg]] + packing.seg_start[seg], lens) + within
    dest = np.repeat(np.arange(n, dtype=np.int64) * L, row_tokens) + grouped_arange(row_tokens)

    tokens = np.full(n * L, pad_id, dtype=np.int64)
    tokens[dest] = shard.take(src)
    segments = np.full(n * L, -1, dtype=np.int64)
    segments[dest] = np.repeat(seg_no, lens)
    if attention == "document":
        positions = np.zeros(n * L, dtype=np.int64)
        positions[dest] = within
    else:
        positions = np.tile(np.arange(L, dtype=np.int64), n)
    domains = None
    if doc_domains is not None:
        domains = np.full(n * L, -1, dtype=np.int64)
        domains[dest] = np.repeat(doc_domains[packing.seg_doc[seg]], lens)
        domains = torch.from_numpy(domains.reshape(n, L))
    return Batch(
        tokens=torch.from_numpy(tokens.reshape(n, L)),
        segments=torch.from_numpy(segments.reshape(n, L)),
        positions=torch.from_numpy(positions.reshape(n, L)),
        attention=attention,
        n_tokens=int(row_tokens.sum()),
        domains=domains,
    )


class PackedLoader:
    """This rank's share of a deterministic, resumable stream of packed rows (see the module docstring)."""

    def __init__(
        self,
        shard: Shards,
        packing: Packing,
        *,
        pad_id: int,
        attention: str = "document",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        doc_domains: np.ndarray | None = None,
    ) -> None:
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        check_packing(shard, packing)
        self.shard = shard
        self.packing = packing
        self.pad_id = int(pad_id)
        self.attention = attention
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.doc_domains = doc_domains
        self.rows_per_epoch: int = packing.n_rows
        self.rows_consumed: int = 0
        self._perms: dict[int, np.ndarray] = {}
        self._fingerprint: str | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) >= 2:  # a step spans at most a few epochs; keep the cache small
                self._perms.pop(min(self._perms))
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.rows_per_epoch)
            self._perms[epoch] = perm
        return perm

    def packing_rows(self, global_row_ids: np.ndarray) -> np.ndarray:
        """The packing row behind each global row counter value."""
        g = np.asarray(global_row_ids, dtype=np.int64)
        if self.rows_per_epoch == 0:
            raise ValueError(f"the packing of shard {self.shard.prefix} has no rows")
        if g.size and g.min() < 0:
            raise ValueError("global row ids must be >= 0")
        local = g % self.rows_per_epoch
        if not self.shuffle:
            return local
        epochs = g // self.rows_per_epoch
        out = np.empty_like(g)
        for e in np.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self._perm(int(e))[local[sel]]
        return out

    def rows(self, global_row_ids: np.ndarray) -> Batch:
        """Materialise the given global rows (positions in the shuffled stream) as one batch."""
        return materialise(self.shard, self.packing, self.packing_rows(global_row_ids), self.pad_id, self.attention,
                           self.doc_domains)

    def step_row_ids(self, rows_per_step: int, step_offset: int = 0) -> np.ndarray:
        """Global row ids this rank reads at the next step (``step_offset`` steps ahead); nothing advances."""
        if rows_per_step < 1 or rows_per_step % self.world_size:
            raise ValueError(
                f"rows_per_step ({rows_per_step}) must be a positive multiple of world_size ({self.world_size})"
            )
        per_rank = rows_per_step // self.world_size
        first = self.rows_consumed + step_offset * rows_per_step + self.rank * per_rank
        return np.arange(first, first + per_rank, dtype=np.int64)

    def next_step(self, rows_per_step: int, micro_batch_size: int) -> list[Batch]:
        """This rank's micro-batches for one optimizer step, then advance by ``rows_per_step`` global rows.

        The rank's ``rows_per_step / world_size`` rows are cut into micro-batches of ``micro_batch_size``; the
        last one is smaller when that does not divide evenly (weight losses by ``n_tokens``, not per batch).
        """
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        ids = self.step_row_ids(rows_per_step)
        batches = [self.rows(ids[i : i + micro_batch_size]) for i in range(0, len(ids), micro_batch_size)]
        self.rows_consumed += rows_per_step
        return batches

    def epoch(self) -> float:
        """Epochs consumed so far (fractional)."""
        return self.rows_consumed / self.rows_per_epoch if self.rows_per_epoch else 0.0

    def _packing_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.packing.fingerprint()
        return self._fingerprint

    def state_dict(self) -> dict:
        """The stream position plus what must match to resume it (JSON-able)."""
        return {
            "rows_consumed": self.rows_consumed,
            "seed": self.seed,
            "rows_per_epoch": self.rows_per_epoch,
            "shuffle": self.shuffle,
            "packing": self._packing_fingerprint(),
        }

    def load_state_dict(self, d: dict) -> None:
        """Resume at ``d["rows_consumed"]``; raise ``ValueError`` if the stream it came from differs from this one.

        ``world_size`` may differ: the position is global, so a resumed run may use more or fewer ranks.
        """
        if "rows_consumed" not in d or int(d["rows_consumed"]) < 0:
            raise ValueError(f"loader state needs a non-negative 'rows_consumed', got {d!r}")
        mine = self.state_dict()
        for key in ("seed", "rows_per_epoch", "shuffle", "packing"):
            if key in d and d[key] != mine[key]:
                raise ValueError(
                    f"cannot resume data loader: saved {key}={d[key]!r} but this loader has {key}={mine[key]!r} "
                    "(the data, packing or seed changed since the checkpoint)"
                )
        self.rows_consumed = int(d["rows_consumed"])


def iter_eval_batches(
    shard: Shards,
    packing: Packing,
    pad_id: int,
    attention: str,
    micro_batch_size: int,
    max_rows: int | None = None,
    doc_domains: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Every packing row once, in packing order (no shuffle), ``micro_batch_size`` rows at a time."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    check_packing(shard, packing)
    n = packing.n_rows if max_rows is None else min(packing.n_rows, max_rows)
    for i in range(0, n, micro_batch_size):
        yield materialise(shard, packing, np.arange(i, min(i + micro_batch_size, n)), pad_id, attention,
                          doc_domains)
