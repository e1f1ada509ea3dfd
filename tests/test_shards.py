"""Token shards: round trip, dtype choice, overflow and corruption detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.data.shards import (
    ShardError,
    ShardWriter,
    TokenShard,
    TokenShards,
    choose_dtype,
    open_split,
    shard_name,
    shard_paths,
    split_index_path,
    write_split_index,
)


def _docs(rng: np.random.Generator, n: int, hi: int) -> list[np.ndarray]:
    return [rng.integers(0, hi, size=int(rng.integers(0, 50))) for _ in range(n)]


@pytest.mark.parametrize("dtype,hi", [("uint16", 2**16), ("uint32", 2**20)])
def test_round_trip(tmp_path: Path, dtype: str, hi: int) -> None:
    rng = np.random.default_rng(0)
    docs = _docs(rng, 40, hi)
    prefix = tmp_path / "tokens" / "train"
    with ShardWriter(prefix, dtype, meta={"tokenizer": "abc", "bos_id": 1}) as w:
        for i, d in enumerate(docs):
            w.add(d if i % 2 else d.tolist())  # arrays and plain lists
    shard = TokenShard(prefix)
    assert shard.n_docs == len(docs) and len(shard) == len(docs)
    assert shard.n_tokens == sum(len(d) for d in docs)
    assert shard.dtype == dtype
    assert shard.meta["tokenizer"] == "abc" and shard.meta["bos_id"] == 1
    np.testing.assert_array_equal(shard.doc_lengths(), [len(d) for d in docs])
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(shard.doc(i), d)
    np.testing.assert_array_equal(shard.doc(-1), docs[-1])
    with pytest.raises(IndexError):
        shard.doc(len(docs))
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["train.bin", "train.idx.npy", "train.json"]


def test_empty_shard(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "s", "uint16"):
        pass
    shard = TokenShard(tmp_path / "s")
    assert shard.n_docs == 0 and shard.n_tokens == 0 and len(shard.doc_lengths()) == 0


def test_choose_dtype() -> None:
    assert choose_dtype(4096) == "uint16"
    assert choose_dtype(65536) == "uint16"
    assert choose_dtype(65537) == "uint32"
    assert choose_dtype(65537, "uint32") == "uint32"
    assert choose_dtype(4096, "uint32") == "uint32"
    with pytest.raises(ShardError, match="uint16.*65537|65537"):
        choose_dtype(65537, "uint16")
    with pytest.raises(ShardError):
        choose_dtype(100, "int8")


def test_overflow_and_bad_ids_raise_and_leave_no_files(tmp_path: Path) -> None:
    prefix = tmp_path / "s"
    with pytest.raises(ShardError, match="65536"), ShardWriter(prefix, "uint16") as w:
        w.add([1, 2, 3])
        w.add([65536])
    with pytest.raises(ShardError, match="-1"), ShardWriter(prefix, "uint32") as w:
        w.add([-1])
    with pytest.raises(ShardError, match="integers"), ShardWriter(prefix, "uint32") as w:
        w.add([0.5])
    with pytest.raises(ShardError, match="4096"), ShardWriter(prefix, "uint16", meta={"vocab_size": 4096}) as w:
        w.add([4096])
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_reserved_meta_and_unknown_dtype(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="reserved"):
        ShardWriter(tmp_path / "s", "uint16", meta={"n_docs": 3})
    with pytest.raises(ShardError, match="dtype"):
        ShardWriter(tmp_path / "s", "int32")
    with pytest.raises(ShardError, match="reserved"), ShardWriter(tmp_path / "s", "uint16") as w:
        w.add([1, 2])
        w.meta["dtype"] = "uint32"
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(tmp_path / "s", "uint16") as w:
        w.add([1, 2])
        w.meta["n_bytes"] = 7  # metadata known only at the end
    assert TokenShard(tmp_path / "s").meta["n_bytes"] == 7


def _write(prefix: Path) -> None:
    with ShardWriter(prefix, "uint16") as w:
        for d in _docs(np.random.default_rng(1), 10, 1000):
            w.add(d)


def test_truncated_bin_is_detected(tmp_path: Path) -> None:
    prefix = tmp_path / "train"
    _write(prefix)
    bin_path = shard_paths(prefix)[0]
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-2])
    with pytest.raises(ShardError, match=r"train\.bin.*truncated"):
        TokenShard(prefix)


def test_mismatched_index_and_meta_are_detected(tmp_path: Path) -> None:
    prefix = tmp_path / "train"
    _write(prefix)
    _, idx_path, json_path = shard_paths(prefix)
    offsets = np.load(idx_path)
    np.save(idx_path, offsets[:-1])
    with pytest.raises(ShardError, match=r"train\.idx\.npy"):
        TokenShard(prefix)
    np.save(idx_path, offsets)
    meta = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**meta, "n_tokens": meta["n_tokens"] + 1}))
    with pytest.raises(ShardError, match=r"train\.idx\.npy"):
        TokenShard(prefix)
    json_path.unlink()
    with pytest.raises(ShardError, match=r"missing.*train\.json"):
        TokenShard(prefix)


# ----------------------------------------------------------------------------- a split of many shards


def _write_split(tokens_dir: Path, split: str, parts: list[list[np.ndarray]], dtype: str = "uint16") -> None:
    """Shards ``{split}-NNNNN`` (one per part) and the split index, as the tokens stage writes them."""
    entries = []
    for i, docs in enumerate(parts):
        with ShardWriter(tokens_dir / shard_name(split, i), dtype, meta={"vocab_size": 1000}) as w:
            for d in docs:
                w.add(d)
            w.meta["n_bytes"] = 3 * len(docs)
        entries.append({"name": shard_name(split, i), "n_docs": w.n_docs, "n_tokens": w.n_tokens})
    write_split_index(tokens_dir, split, entries)


@pytest.fixture
def split_docs() -> list[list[np.ndarray]]:
    rng = np.random.default_rng(3)
    return [_docs(rng, n, 1000) for n in (7, 0, 12, 1, 5)]  # an empty part in the middle


def test_many_shards_read_as_the_single_shard(tmp_path: Path, split_docs: list[list[np.ndarray]]) -> None:
    flat = [d for part in split_docs for d in part]
    _write_split(tmp_path / "many", "train", split_docs)
    (tmp_path / "one").mkdir()
    with ShardWriter(tmp_path / "one" / "train", "uint16", meta={"vocab_size": 1000}) as w:
        for d in flat:
            w.add(d)
    many, one = open_split(tmp_path / "many", "train"), open_split(tmp_path / "one", "train")  # new and old layout
    assert isinstance(many, TokenShards) and len(many.shards) == 5 and len(one.shards) == 1
    assert many.n_docs == one.n_docs == len(flat) and len(many) == len(flat)
    assert many.n_tokens == one.n_tokens == sum(len(d) for d in flat)
    assert many.dtype == "uint16" and many.meta["vocab_size"] == 1000 and many.meta["n_bytes"] == 3 * len(flat)
    np.testing.assert_array_equal(many.offsets, one.offsets)
    np.testing.assert_array_equal(many.doc_lengths(), [len(d) for d in flat])
    for i, d in enumerate(flat):
        np.testing.assert_array_equal(many.doc(i), d)
        np.testing.assert_array_equal(many[i], one.doc(i))
    np.testing.assert_array_equal(many.doc(-1), flat[-1])
    assert [list(d) for d in many] == [list(d) for d in flat]
    with pytest.raises(IndexError):
        many.doc(len(flat))
    pos = np.random.default_rng(0).integers(0, many.n_tokens, size=500)
    np.testing.assert_array_equal(many.take(pos), one.take(pos))
    np.testing.assert_array_equal(many.take(pos), np.concatenate(flat)[pos])


def test_split_errors_name_the_file(tmp_path: Path, split_docs: list[list[np.ndarray]]) -> None:
    with pytest.raises(ShardError, match=r"no token shards for split 'val'.*run the tokens stage"):
        open_split(tmp_path, "val")
    _write_split(tmp_path, "train", split_docs)
    shard_paths(tmp_path / "train-00002")[0].write_bytes(b"\0" * 4)
    with pytest.raises(ShardError, match=r"train-00002\.bin.*truncated"):
        open_split(tmp_path, "train")
    for p in shard_paths(tmp_path / "train-00002"):
        p.unlink()
    with pytest.raises(ShardError, match=r"missing shard file .*train-00002\.json"):
        open_split(tmp_path, "train")
    split_index_path(tmp_path, "train").write_text("{not json")
    with pytest.raises(ShardError, match=r"unreadable split index .*train\.shards\.json"):
        open_split(tmp_path, "train")
    split_index_path(tmp_path, "train").unlink()  # no index: the numbered shards, which must not have a gap
    with pytest.raises(ShardError, match=r"shard train-00002 of split 'train' is missing"):
        open_split(tmp_path, "train")


def test_split_index_must_match_the_shards(tmp_path: Path, split_docs: list[list[np.ndarray]]) -> None:
    _write_split(tmp_path, "train", split_docs)
    index = json.loads(split_index_path(tmp_path, "train").read_text())
    index["shards"][0]["n_docs"] += 1
    split_index_path(tmp_path, "train").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=r"train-00000 has 7 documents.*lists 8"):
        open_split(tmp_path, "train")


def test_shards_of_different_dtypes_are_refused(tmp_path: Path) -> None:
    for i, dtype in enumerate(("uint16", "uint32")):
        with ShardWriter(tmp_path / shard_name("train", i), dtype) as w:
            w.add([1, 2, 3])
    with pytest.raises(ShardError, match="disagree on the token dtype"):
        open_split(tmp_path, "train")


def test_add_many_equals_add(tmp_path: Path) -> None:
    docs = _docs(np.random.default_rng(5), 30, 1000)
    with ShardWriter(tmp_path / "a", "uint16") as w:
        for d in docs:
            w.add(d)
    with ShardWriter(tmp_path / "b", "uint16") as w:
        w.add_many([d.tolist() for d in docs[:10]])
        w.add_many([])
        w.add_many([d.tolist() for d in docs[10:]])
    for a, b in zip(shard_paths(tmp_path / "a"), shard_paths(tmp_path / "b"), strict=True):
        assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ShardError, match="65536"), ShardWriter(tmp_path / "c", "uint16") as w:
        w.add_many([[1, 2], [65536]])
