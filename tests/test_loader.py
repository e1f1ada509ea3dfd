"""Packed loader: batch contents, determinism, resume, ranks, epochs, eval iteration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kiln.data.loader import Batch, PackedLoader, iter_eval_batches, materialise
from kiln.data.packing import Packing, pack
from kiln.data.shards import Shards, ShardWriter, TokenShard, open_split, shard_name, write_split_index

PAD = 0


def _lengths() -> np.ndarray:
    rng = np.random.default_rng(0)
    lengths = np.maximum(1, rng.lognormal(np.log(30), 1.0, size=300)).astype(np.int64)
    lengths[:3] = [0, 1, 200]  # empty, one-token, multi-piece documents
    return lengths


def _write(prefix, docs: range, lengths: np.ndarray) -> dict:
    with ShardWriter(prefix, "uint32") as w:
        for d in docs:
            w.add(1 + d * 10_000 + np.arange(lengths[d]))  # never the pad id
    return {"name": prefix.name, "n_docs": w.n_docs, "n_tokens": w.n_tokens}


@pytest.fixture(scope="module", params=["single", "many"])
def shard(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Shards:
    """Documents whose token ids encode (doc, position), so every token's origin is checkable; one shard, or
    the same documents cut into a split of several shards (one of them empty)."""
    lengths = _lengths()
    folder = tmp_path_factory.mktemp("shard")
    if request.param == "single":
        _write(folder / "train", range(len(lengths)), lengths)
        return TokenShard(folder / "train")
    cuts = [0, 50, 50, 170, 171, len(lengths)]
    entries = [_write(folder / shard_name("train", i), range(a, b), lengths)
               for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))]
    write_split_index(folder, "train", entries)
    return open_split(folder, "train")


def _loader(shard: Shards, seq_len: int = 32, mode: str = "best_fit", **kw) -> PackedLoader:
    return PackedLoader(shard, pack(shard.doc_lengths(), seq_len, mode), pad_id=PAD, **kw)


def _steps(loader: PackedLoader, n: int, rows_per_step: int = 8, mb: int = 3) -> list[list[Batch]]:
    return [loader.next_step(rows_per_step, mb) for _ in range(n)]


def _tokens(steps: list[list[Batch]]) -> list[torch.Tensor]:
    return [torch.cat([b.tokens for b in step]) for step in steps]


def _assert_same(a: list[list[Batch]], b: list[list[Batch]]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        assert len(sa) == len(sb)
        for x, y in zip(sa, sb, strict=True):
            for name in ("tokens", "segments", "positions"):
                assert torch.equal(getattr(x, name), getattr(y, name))
            assert x.n_tokens == y.n_tokens


@pytest.mark.parametrize("mode", ["best_fit", "concat"])
@pytest.mark.parametrize("attention", ["document", "causal"])
def test_batch_contents_match_packing(shard: Shards, mode: str, attention: str) -> None:
    packing = pack(shard.doc_lengths(), 32, mode)
    rows = np.arange(packing.n_rows)[::-1][:40]
    b = materialise(shard, packing, rows, PAD, attention)
    assert b.tokens.shape == b.segments.shape == b.positions.shape == (len(rows), 32)
    assert b.tokens.dtype == b.segments.dtype == b.positions.dtype == torch.int64
    assert b.n_tokens == int((b.segments != -1).sum())
    for i, r in enumerate(rows):
        col = 0
        for k, (d, s, n) in enumerate(packing.row(int(r))):
            np.testing.assert_array_equal(b.tokens[i, col : col + n].numpy(), shard.doc(d)[s : s + n])
            assert torch.all(b.segments[i, col : col + n] == k)
            if attention == "document":
                assert torch.equal(b.positions[i, col : col + n], torch.arange(n))  # restart per segment
            col += n
        assert torch.all(b.segments[i, col:] == -1) and torch.all(b.tokens[i, col:] == PAD)
        if attention == "document":
            assert torch.all(b.positions[i, col:] == 0)
        else:
            assert torch.equal(b.positions[i], torch.arange(32))
    assert b.to("cpu").tokens.equal(b.tokens)


def test_determinism_and_seed(shard: Shards) -> None:
    _assert_same(_steps(_loader(shard, seed=3), 5), _steps(_loader(shard, seed=3), 5))
    a, b = _tokens(_steps(_loader(shard, seed=3), 3)), _tokens(_steps(_loader(shard, seed=4), 3))
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_no_shuffle_is_packing_order(shard: Shards) -> None:
    loader = _loader(shard, shuffle=False)
    ids = loader.step_row_ids(8)
    np.testing.assert_array_equal(loader.packing_rows(ids), np.arange(8))
    first = torch.cat([b.tokens for b in loader.next_step(8, 8)])
    assert torch.equal(first, next(iter_eval_batches(shard, loader.packing, PAD, "document", 8)).tokens)


def test_resume_mid_epoch_matches_uninterrupted(shard: Shards) -> None:
    full = _loader(shard, seed=7)
    reference = _steps(full, 40, rows_per_step=16)
    assert full.epoch() > 1.0  # the run crosses an epoch boundary
    first = _loader(shard, seed=7)
    _steps(first, 20, rows_per_step=16)
    assert 0.0 < first.epoch() < 1.0  # interrupted mid-epoch
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
    assert state["rows_consumed"] == 20 * 16
    resumed = _loader(shard, seed=7)
    resumed.load_state_dict(state)
    _assert_same(_steps(resumed, 20, rows_per_step=16), reference[20:])


def test_load_state_dict_rejects_incompatible(shard: Shards) -> None:
    state = _loader(shard, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        _loader(shard, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="rows_per_epoch"):
        _loader(shard, seq_len=64, seed=1).load_state_dict(state)
    concat = _loader(shard, mode="concat", seed=1)
    with pytest.raises(ValueError, match="packing"):
        concat.load_state_dict({**state, "rows_per_epoch": concat.rows_per_epoch})
    with pytest.raises(ValueError, match="rows_consumed"):
        _loader(shard, seed=1).load_state_dict({"seed": 1})


def test_ranks_partition_the_single_rank_stream(shard: Shards) -> None:
    single = _loader(shard, seed=5)
    ranks = [_loader(shard, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):
        ids = [r.step_row_ids(12) for r in ranks]
        assert not set(ids[0].tolist()) & set(ids[1].tolist())
        np.testing.assert_array_equal(np.concatenate(ids), single.step_row_ids(12))
        one = torch.cat([b.tokens for b in single.next_step(12, 4)])
        per_rank = [torch.cat([b.tokens for b in r.next_step(12, 4)]) for r in ranks]
        assert torch.equal(torch.cat(per_rank), one)
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()
    with pytest.raises(ValueError, match="multiple of world_size"):
        ranks[0].next_step(7, 4)
    with pytest.raises(ValueError, match="rank"):
        _loader(shard, rank=2, world_size=2)


def test_every_row_once_per_epoch(shard: Shards) -> None:
    loader = _loader(shard, seed=11)
    R = loader.rows_per_epoch
    seen: list[int] = []
    while loader.rows_consumed < 3 * R:
        ids = loader.step_row_ids(10)
        seen.extend(loader.packing_rows(ids).tolist())
        loader.next_step(10, 10)
    for e in range(3):
        assert sorted(seen[e * R : (e + 1) * R]) == list(range(R))
    assert seen[:R] != seen[R : 2 * R]  # a fresh permutation each epoch
    assert loader.epoch() == pytest.approx(loader.rows_consumed / R)


def test_micro_batches_and_token_counts(shard: Shards) -> None:
    loader = _loader(shard)
    step = loader.next_step(10, 4)
    assert [b.batch_size for b in step] == [4, 4, 2]  # the last micro-batch may be smaller
    assert all(b.n_tokens == int((b.segments != -1).sum()) for b in step)


def test_eval_batches_cover_every_row_in_order(shard: Shards) -> None:
    packing = pack(shard.doc_lengths(), 32)
    batches = list(iter_eval_batches(shard, packing, PAD, "document", 7))
    assert sum(b.batch_size for b in batches) == packing.n_rows
    whole = materialise(shard, packing, np.arange(packing.n_rows), PAD, "document")
    assert torch.equal(torch.cat([b.tokens for b in batches]), whole.tokens)
    limited = list(iter_eval_batches(shard, packing, PAD, "causal", 7, max_rows=10))
    assert [b.batch_size for b in limited] == [7, 3]


def test_packing_must_match_shard(shard: Shards) -> None:
    other = pack(np.append(shard.doc_lengths(), 5), 32)
    with pytest.raises(ValueError, match="documents"):
        PackedLoader(shard, other, pad_id=PAD)
    bad = pack(shard.doc_lengths(), 32)
    bad = Packing(**{**bad.__dict__, "seg_len": bad.seg_len + 1000})
    with pytest.raises(ValueError, match="past the ends"):
        PackedLoader(shard, bad, pad_id=PAD)
    with pytest.raises(ValueError, match="attention"):
        PackedLoader(shard, pack(shard.doc_lengths(), 32), pad_id=PAD, attention="bidirectional")


def test_many_shards_give_the_single_shard_batches(tmp_path) -> None:
    """The same documents as one shard or as a split of five: the same batches, seed for seed, and a loader
    state from one resumes the other exactly (the state is the global row counter over the same packing)."""
    lengths = _lengths()
    _write(tmp_path / "train", range(len(lengths)), lengths)
    single = TokenShard(tmp_path / "train")
    cuts = [0, 1, 99, 99, 250, len(lengths)]
    many_dir = tmp_path / "many"
    many_dir.mkdir()
    entries = [_write(many_dir / shard_name("train", i), range(a, b), lengths)
               for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))]
    write_split_index(many_dir, "train", entries)
    many = open_split(many_dir, "train")
    assert len(many.shards) == 5
    for mode in ("best_fit", "concat"):
        a, b = _loader(single, mode=mode, seed=9), _loader(many, mode=mode, seed=9)
        _assert_same(_steps(a, 30, rows_per_step=16), _steps(b, 30, rows_per_step=16))  # crosses an epoch
        resumed = _loader(many, mode=mode, seed=9)
        resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
        _assert_same(_steps(a, 5, rows_per_step=16), _steps(resumed, 5, rows_per_step=16))
