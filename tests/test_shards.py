"""Token shards: round trip, dtype choice, overflow and corruption detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.data.shards import ShardError, ShardWriter, TokenShard, choose_dtype, shard_paths


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
