"""Tokens stage: encode the curated corpus into flat token shards with a document index.

Each document becomes ``<|bos|> tokens <|eos|>``; shards keep document boundaries so any
packing, ordering or objective can be applied later without re-tokenizing.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer

from kiln.data.shards import ShardWriter, choose_dtype
from kiln.progress import track
from kiln.recipe import TokensConfig

SPLITS = ("train", "val")


def encode_split(tok: Tokenizer, parquet: Path, prefix: Path, dtype: str, batch_rows: int = 512) -> dict:
    pf = pq.ParquetFile(parquet)
    n_docs = n_bytes = 0
    with ShardWriter(prefix, dtype, meta={"vocab_size": tok.get_vocab_size()}) as writer:
        batches = pf.iter_batches(batch_size=batch_rows, columns=["text"])
        total = -(-pf.metadata.num_rows // batch_rows)
        for batch in track(batches, f"tokens: {prefix.name}", total=total):
            texts = batch.column(0).to_pylist()
            for enc, text in zip(tok.encode_batch(texts), texts, strict=True):
                writer.add(enc.ids)
                n_bytes += len(text.encode("utf-8"))
            n_docs += len(texts)
        writer.meta.update({"n_bytes": n_bytes})
        n_tokens = writer.n_tokens
    return {"n_docs": n_docs, "n_tokens": n_tokens, "n_bytes": n_bytes}


def encode_corpus(cfg: TokensConfig, tok: Tokenizer, corpus_dir: Path, out_dir: Path) -> dict:
    """Write ``out_dir/{train,val}.bin|.idx.npy|.json``; returns per-split counts."""
    dtype = choose_dtype(tok.get_vocab_size(), cfg.dtype)
    stats: dict = {"dtype": dtype, "vocab_size": tok.get_vocab_size()}
    for split in SPLITS:
        stats[split] = encode_split(tok, corpus_dir / f"{split}.parquet", out_dir / split, dtype)
    return stats
