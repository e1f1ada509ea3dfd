"""Tokens stage: corpus parts -> token shards, in parallel, in bounded memory, in corpus order."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kiln import faults
from kiln.data import encode
from kiln.data.encode import encode_batches, encode_corpus, read_batches, resolve_workers
from kiln.data.shards import open_split, split_index_path
from kiln.recipe import TokenizerConfig, TokensConfig
from kiln.tokenizer.train import load_tokenizer, train_tokenizer
from tests.synthetic import sentence


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {seed}-{i} " + " ".join(sentence(rng) for _ in range(rng.randint(0, 6))) + " ü€" for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """A corpus folder in the sharded layout: three train parts (one empty) and one val part."""
    d = tmp_path_factory.mktemp("corpus")
    parts = {"train": [_texts(70, 0), [], _texts(45, 1)], "val": [_texts(20, 2)]}
    for split, texts in parts.items():
        for i, t in enumerate(texts):
            pq.write_table(pa.table({"text": pa.array(t, pa.string())}), d / f"{split}-{i:05d}.parquet")
    return d, {split: [t for part in texts for t in part] for split, texts in parts.items()}


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TokenizerConfig(vocab_size=600), corpus[0], out)
    return load_tokenizer(out)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_parts_become_shards_in_corpus_order(corpus, tok, tmp_path):
    corpus_dir, texts = corpus
    stats = encode_corpus(TokensConfig(workers=1), tok, corpus_dir, tmp_path, batch_rows=16)
    assert stats["dtype"] == "uint16" and stats["vocab_size"] == tok.get_vocab_size()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{s}-{i:05d}.{ext}" for s, n in (("train", 3), ("val", 1)) for i in range(n)
                            for ext in ("bin", "idx.npy", "json")] + ["train.shards.json", "val.shards.json"])
    for split, docs in texts.items():
        shards = open_split(tmp_path, split)
        assert len(shards.shards) == (3 if split == "train" else 1)
        assert stats[split] == {"n_docs": len(docs), "n_tokens": shards.n_tokens, "n_shards": len(shards.shards),
                                "n_bytes": sum(len(t.encode()) for t in docs)}
        for i, text in enumerate(docs):
            assert shards.doc(i).tolist() == tok.encode(text).ids  # <|bos|> ... <|eos|>, in corpus order


def test_parallel_encoding_equals_serial_bit_for_bit(corpus, tok, tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)  # fault injection would keep the encoding in this process
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    serial.mkdir()
    parallel.mkdir()
    a = encode_corpus(TokensConfig(workers=1), tok, corpus[0], serial, batch_rows=16)
    b = encode_corpus(TokensConfig(workers=2), tok, corpus[0], parallel, batch_rows=16)
    assert a == b
    assert _files(serial) == _files(parallel)


def test_old_single_file_corpus_layout(corpus, tok, tmp_path):
    corpus_dir, texts = corpus
    old = tmp_path / "old"
    old.mkdir()
    for split, docs in texts.items():
        pq.write_table(pa.table({"text": pa.array(docs, pa.string())}), old / f"{split}.parquet")
    out = tmp_path / "tokens"
    out.mkdir()
    encode_corpus(TokensConfig(), tok, old, out)
    assert (out / "train-00000.bin").exists() and split_index_path(out, "train").exists()
    ref = tmp_path / "ref"
    ref.mkdir()
    encode_corpus(TokensConfig(), tok, corpus_dir, ref)
    for split in texts:
        one, many = open_split(out, split), open_split(ref, split)
        assert len(one.shards) == 1
        np.testing.assert_array_equal(one.offsets, many.offsets)
        np.testing.assert_array_equal(one.take(np.arange(one.n_tokens)), many.take(np.arange(many.n_tokens)))


class _Recorder:
    """Wraps a tokenizer: records how many texts each encode call sees and how far the reader had got."""

    def __init__(self, tok, reader_state: dict) -> None:
        self.tok, self.state, self.calls = tok, reader_state, []

    def get_vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode_batch_fast(self, texts):
        self.calls.append((len(texts), self.state["yielded"]))
        return self.tok.encode_batch_fast(texts)


def test_encoding_holds_one_batch_at_a_time(corpus, tok, tmp_path):
    """Bounded memory, structurally: the part is read in batches of at most ``batch_rows`` and batch k is
    encoded (and written) before batch k+1 is read: the reader is never ahead, nothing is accumulated."""
    corpus_dir, texts = corpus
    state = {"yielded": 0}

    def reader():
        for batch in read_batches(corpus_dir / "train-00000.parquet", 8):
            state["yielded"] += 1
            yield batch

    rec = _Recorder(tok, state)
    stats = encode_batches(rec, reader(), tmp_path / "train-00000", "uint16")
    assert stats["n_docs"] == 70
    assert [n for n, _ in rec.calls] == [8] * 8 + [6]
    assert [seen for _, seen in rec.calls] == list(range(1, 10))  # batch k encoded when exactly k were read


def test_workers(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert resolve_workers(4, 2) == 2  # never more than parts
    assert resolve_workers(1, 9) == 1
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(0, 2 * cores) == cores  # auto: a process per core once there are parts to balance
    assert resolve_workers(0, 2 * cores - 1) == 1  # else the Rust encoder's threads in this process
    monkeypatch.setenv(faults.ENV, "shard_close:1")  # fault points count per process: stay in this one
    assert resolve_workers(4, 9) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_part_is_its_own_error(corpus, tok, tmp_path, monkeypatch, workers):
    def broken(parquet, batch_rows):
        yield ["fine"]
        raise OSError(f"cannot read {parquet}")

    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.setattr(encode, "read_batches", broken)  # inherited by forked workers
    with pytest.raises(OSError, match=r"cannot read .*train-00000\.parquet"):
        encode_corpus(TokensConfig(workers=workers), tok, corpus[0], tmp_path)
    assert not list(tmp_path.glob("train-00000*"))  # the failed shard never appears


def test_a_killed_worker_is_an_error_not_a_hang(corpus, tok, tmp_path, monkeypatch):
    real = encode.encode_part

    def dies_on_part_2(tokenizer, task):
        if task.parquet.name == "train-00002.parquet":
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(tokenizer, task)

    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.setattr(encode, "encode_part", dies_on_part_2)  # inherited by the forked workers
    with pytest.raises(RuntimeError, match=r"worker process died .*train-00002\.parquet"):
        encode_corpus(TokensConfig(workers=2), tok, corpus[0], tmp_path)
