"""Packing: every target exactly once, rows within capacity, best-fit behaviour and fill, concat round trip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.data.packing import Packing, pack, split_pieces

lengths_st = st.lists(st.integers(0, 300), min_size=0, max_size=60)
seq_len_st = st.integers(2, 64)


def _row_sums(p: Packing) -> np.ndarray:
    return np.array([sum(n for _, _, n in p.row(r)) for r in range(p.n_rows)], dtype=np.int64)


def _check_structure(p: Packing, lengths: list[int]) -> None:
    assert p.row_offsets[0] == 0 and p.row_offsets[-1] == p.n_segments
    assert np.all(np.diff(p.row_offsets) >= 1)  # no empty rows
    assert np.all(_row_sums(p) <= p.seq_len)
    assert p.n_docs == len(lengths)
    assert p.n_dropped == sum(1 for n in lengths if n < 2)
    lens = np.asarray(lengths, dtype=np.int64)
    if p.n_segments:
        assert np.all(p.seg_start >= 0) and np.all(p.seg_len >= 1)
        assert np.all(p.seg_start + p.seg_len <= lens[p.seg_doc])


def _expected_targets(lengths: list[int]) -> Counter:
    return Counter((d, t) for d, n in enumerate(lengths) if n >= 2 for t in range(1, n))


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, seq_len=seq_len_st)
def test_best_fit_every_target_exactly_once(lengths: list[int], seq_len: int) -> None:
    p = pack(np.array(lengths, dtype=np.int64), seq_len, "best_fit")
    _check_structure(p, lengths)
    assert np.all(p.seg_len >= 2)
    # Under document attention a segment's targets are its tokens after the first.
    got = Counter((d, s + t) for d, s, n in zip(p.seg_doc, p.seg_start, p.seg_len, strict=True) for t in range(1, n))
    assert got == _expected_targets(lengths)


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, seq_len=seq_len_st)
def test_concat_every_stream_target_exactly_once(lengths: list[int], seq_len: int) -> None:
    p = pack(np.array(lengths, dtype=np.int64), seq_len, "concat")
    _check_structure(p, lengths)
    kept = [(d, n) for d, n in enumerate(lengths) if n >= 2]
    stream = [(d, t) for d, n in kept for t in range(n)]
    rows = [[(d, s + t) for d, s, n in p.row(r) for t in range(n)] for r in range(p.n_rows)]
    assert all(len(r) == seq_len for r in rows[:-1])  # only the last row may be short
    # Causal next-token targets: every row position after the first; each stream token after the first once.
    targets = Counter(tok for r in rows for tok in r[1:])
    assert targets == Counter(stream[1:])
    if rows:
        rebuilt = rows[0] + [tok for r in rows[1:] for tok in r[1:]]
        assert rebuilt == stream


def _reference_best_fit(lengths: list[int], seq_len: int) -> list[list[tuple[int, int, int]]]:
    """Plain O(pieces * rows) best-fit-decreasing; ties between equally full rows go to the most recently used."""
    doc, start, length = split_pieces(np.array(lengths, dtype=np.int64), seq_len)
    pieces = sorted(zip(doc.tolist(), start.tolist(), length.tolist(), strict=True), key=lambda x: -x[2])
    rows: list[list[tuple[int, int, int]]] = []
    free: list[int] = []
    touched: list[int] = []
    for clock, piece in enumerate(pieces):
        fits = [r for r in range(len(rows)) if free[r] >= piece[2]]
        if fits:
            r = min(fits, key=lambda r: (free[r], -touched[r]))
        else:
            r = len(rows)
            rows.append([])
            free.append(seq_len)
            touched.append(clock)
        rows[r].append(piece)
        free[r] -= piece[2]
        touched[r] = clock
    return rows


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(0, 120), max_size=40), seq_len=st.integers(2, 40))
def test_best_fit_matches_reference(lengths: list[int], seq_len: int) -> None:
    p = pack(np.array(lengths, dtype=np.int64), seq_len, "best_fit")
    assert [p.row(r) for r in range(p.n_rows)] == _reference_best_fit(lengths, seq_len)


def test_split_pieces_overlap_by_one() -> None:
    doc, start, length = split_pieces(np.array([10, 11, 4, 1, 0, 2]), 4)
    assert list(zip(doc.tolist(), start.tolist(), length.tolist(), strict=True)) == [
        (0, 0, 4), (0, 3, 4), (0, 6, 4),
        (1, 0, 4), (1, 3, 4), (1, 6, 4), (1, 9, 2),
        (2, 0, 4),
        (5, 0, 2),
    ]  # fmt: skip


def _lognormal_lengths(n: int, median: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(np.log(median), 1.0, size=n)).astype(np.int64)


@pytest.mark.parametrize("seq_len,median", [(256, 120), (1024, 300), (512, 2000)])
def test_best_fit_fill_ratio(seq_len: int, median: float) -> None:
    lengths = _lognormal_lengths(20_000, median)
    p = pack(lengths, seq_len, "best_fit")
    _, _, piece_len = split_pieces(lengths, seq_len)
    one_piece_per_row = piece_len.sum() / (len(piece_len) * seq_len)
    assert p.fill_ratio() >= one_piece_per_row
    assert p.fill_ratio() >= 0.9
    assert p.n_real_tokens() == piece_len.sum()


def test_concat_fill_is_full_except_last_row() -> None:
    p = pack(_lognormal_lengths(2000, 100), 128, "concat")
    assert p.n_real_tokens() > (p.n_rows - 1) * 128


def test_edge_cases_and_errors() -> None:
    for mode in ("best_fit", "concat"):
        empty = pack(np.array([], dtype=np.int64), 16, mode)
        assert empty.n_rows == 0 and empty.fill_ratio() == 0.0
        only_short = pack(np.array([0, 1, 1]), 16, mode)
        assert only_short.n_rows == 0 and only_short.n_dropped == 3
    with pytest.raises(ValueError, match="mode"):
        pack(np.array([5]), 16, "random")
    with pytest.raises(ValueError, match="seq_len"):
        pack(np.array([5]), 1)
    with pytest.raises(ValueError, match="non-negative"):
        pack(np.array([5, -1]), 16)


def test_save_load_and_fingerprint(tmp_path: Path) -> None:
    lengths = _lognormal_lengths(500, 50)
    p = pack(lengths, 64)
    p.save(tmp_path / "packing.npz")
    q = Packing.load(tmp_path / "packing.npz")
    assert (q.seq_len, q.mode, q.n_docs, q.n_dropped) == (p.seq_len, p.mode, p.n_docs, p.n_dropped)
    for name in ("row_offsets", "seg_doc", "seg_start", "seg_len"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    assert q.fingerprint() == p.fingerprint()
    assert pack(lengths, 64, "concat").fingerprint() != p.fingerprint()
    assert pack(lengths, 65).fingerprint() != p.fingerprint()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 70), min_size=1, max_size=60), st.lists(st.integers(0, 60), max_size=4),
       st.sampled_from(["best_fit", "concat"]))
def test_a_split_of_many_shards_packs_as_one(lengths: list[int], cuts: list[int], mode: str) -> None:
    """Packing sees one document index whatever the number of shards: the same rows, and every segment's
    tokens (read through the split) are the document's own."""
    import tempfile

    from kiln.data.shards import ShardWriter, TokenShard, open_split, shard_name, write_split_index

    bounds = sorted({0, len(lengths), *[min(c, len(lengths)) for c in cuts]})
    docs = [np.arange(n, dtype=np.int64) + 1000 * d for d, n in enumerate(lengths)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with ShardWriter(folder / "one", "uint32") as w:
            for d in docs:
                w.add(d)
        entries = []
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            with ShardWriter(folder / shard_name("train", i), "uint32") as w:
                for d in docs[a:b]:
                    w.add(d)
            entries.append({"name": shard_name("train", i), "n_docs": w.n_docs, "n_tokens": w.n_tokens})
        write_split_index(folder, "train", entries)
        one, many = TokenShard(folder / "one"), open_split(folder, "train")
        a, b = pack(one.doc_lengths(), 16, mode), pack(many.doc_lengths(), 16, mode)
        assert a.fingerprint() == b.fingerprint()
        for doc, start, n in zip(b.seg_doc.tolist(), b.seg_start.tolist(), b.seg_len.tolist(), strict=True):
            src = many.offsets[doc] + start + np.arange(n)
            np.testing.assert_array_equal(many.take(src), docs[doc][start : start + n])
