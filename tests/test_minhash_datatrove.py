"""``minhash`` with ``backend: datatrove`` in the streaming corpus stage: a whole-corpus step there, equal to
the in-memory path, and the same kept documents as the streamed numpy backend (issue 12.5)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from kiln.corpus.files import split_files
from kiln.corpus.stage import build_corpus
from tests.test_corpus_stream import _assert_same_as_reference, _cfg, _write_corpus


def _kept_ids(out: Path) -> list[str]:
    files = [p for split in ("train", "val") for p in split_files(out, split)]
    return [i for p in files for i in pq.read_table(p)["id"].to_pylist()]


def test_datatrove_backend_streams_like_numpy(tmp_path: Path) -> None:
    corpus = _write_corpus(tmp_path / "c.jsonl", n=150)
    steps = [{"step": "normalize"}, {"step": "minhash", "backend": "datatrove"}]
    funnel = _assert_same_as_reference(_cfg(corpus, shard_docs=16, steps=steps, val_fraction=0.1), tmp_path / "dt")
    removed = {s["step"]: s["docs_removed"] for s in funnel["steps"]}
    assert removed["minhash"] >= 10  # the planted near duplicates, across shards
    numpy_out = tmp_path / "np" / "corpus"
    build_corpus(_cfg(corpus, shard_docs=16, steps=[steps[0], {"step": "minhash"}], val_fraction=0.1), numpy_out)
    assert _kept_ids(tmp_path / "dt" / "stream" / "corpus") == _kept_ids(numpy_out)
