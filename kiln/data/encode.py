"""Tokens stage: encode the curated corpus into token shards with a document index.

Each document becomes ``<|bos|> tokens <|eos|>``; shards keep document boundaries so any packing, ordering
or objective can be applied later without re-tokenizing. Corpus part ``k`` of a split (``corpus/{split}-0000k
.parquet``, or the legacy single ``{split}.parquet`` as part 0) becomes token shard ``tokens/{split}-0000k``;
``{split}.shards.json`` lists a split's shards and is written last. Document order is corpus order. With
``tokens.domain_field``, each shard also gets its documents' domain ids (``kiln/data/domains.py``).

Memory is bounded by one batch of ``batch_rows`` documents per worker: a part is read batch by batch,
encoded with the ``tokenizers`` batch encoder and streamed into its shard. With ``tokens.workers`` > 1 the
parts are encoded by a pool of forked processes (each with a single-threaded encoder); with 1 they are
encoded one after the other in this process, the Rust encoder using every core for each batch; 0 (default)
picks (:func:`resolve_workers`). The output is the same bit for bit either way (tests/test_encode.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from kiln.corpus.files import split_files
from kiln.data.domains import column_values, domain_ids, domain_names, write_doc_domains, write_domain_names
from kiln.data.shards import ShardWriter, choose_dtype, shard_name, write_split_index
from kiln.faults import ENV as FAULT_ENV
from kiln.progress import track
from kiln.recipe import TokensConfig

SPLITS = ("train", "val")
BATCH_ROWS = 512


@dataclass(frozen=True)
class PartTask:
    """Encode corpus part ``parquet`` into the shard at ``prefix``."""

    split: str
    parquet: Path
    prefix: Path
    dtype: str
    batch_rows: int = BATCH_ROWS
    domain_field: str | None = None  # tokens.domain_field: also write the documents' domain ids
    domains: tuple[str, ...] = ()  # the numbered domain values (kiln/data/domains.py)


def read_batches(parquet: Path, batch_rows: int) -> Iterator[list[str]]:
    """The ``text`` column of one corpus part, ``batch_rows`` documents at a time."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(parquet).iter_batches(batch_size=batch_rows, columns=["text"]):
        yield batch.column(0).to_pylist()


def encode_batches(tok: Tokenizer, batches: Iterable[list[str]], prefix: Path, dtype: str) -> dict:
    """Stream text batches into one shard: each batch is encoded, written and dropped before the next is read."""
    n_docs = n_bytes = 0
    with ShardWriter(prefix, dtype, meta={"vocab_size": tok.get_vocab_size()}) as writer:
        for texts in batches:
            writer.add_many(enc.ids for enc in tok.encode_batch_fast(texts))
            n_bytes += sum(len(t.encode("utf-8")) for t in texts)
            n_docs += len(texts)
        writer.meta["n_bytes"] = n_bytes
        n_tokens = writer.n_tokens
    return {"name": prefix.name, "n_docs": n_docs, "n_tokens": n_tokens, "n_bytes": n_bytes}


def encode_part(tok: Tokenizer, task: PartTask) -> dict:
    if task.domain_field is not None:  # before the shard: a shard without its ids never looks complete
        ids = domain_ids(column_values(task.parquet, task.domain_field), task.domains)
        write_doc_domains(task.prefix, ids)
    return encode_batches(tok, read_batches(task.parquet, task.batch_rows), task.prefix, task.dtype)


_worker_tok: Tokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tok
    _worker_tok = Tokenizer.from_str(tokenizer_json)


def _work(task: PartTask) -> dict:
    assert _worker_tok is not None, "worker not initialised"
    return encode_part(_worker_tok, task)


def resolve_workers(requested: int, n_tasks: int) -> int:
    """``tokens.workers``, never more than there are parts. 0 (auto) = a process per core when there are at least
    two parts per core to balance, else 1 (this process; the Rust encoder threads each batch over every core: on
    2 cores both ran at 1.25 MB per CPU-second, the in-process path with a 5% serial share). 1 also under fault
    injection: ``KILN_FAULT_POINT`` counts passes per process, so its points must pass in this one."""
    if os.environ.get(FAULT_ENV):
        return 1
    if requested == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        requested = cores if n_tasks >= 2 * cores else 1
    return max(1, min(requested, n_tasks))


def run_tasks(tok: Tokenizer, tasks: list[PartTask], workers: int) -> list[dict]:
    """Encode every part; results in task order whatever the number of workers. A worker that dies (the
    out-of-memory killer) is an error naming the parts it may have held, never a hang."""
    if workers <= 1:
        return [encode_part(tok, t) for t in track(tasks, "tokens", total=len(tasks))]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one encoder thread per worker; read by the forked children
    done: list[dict] = []
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                 initargs=(tok.to_str(),)) as pool:
            try:
                for result in track(pool.map(_work, tasks), "tokens", total=len(tasks)):
                    done.append(result)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # a failed part stops the parts not yet started
                raise
    except BrokenProcessPool as e:
        pending = ", ".join(t.parquet.name for t in tasks[len(done):])
        raise RuntimeError(f"tokens: a worker process died (killed, out of memory?) while encoding one of: {pending}; "
                           "try tokens.workers=1") from e
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    return done


def encode_corpus(cfg: TokensConfig, tok: Tokenizer, corpus_dir: Path, out_dir: Path,
                  batch_rows: int = BATCH_ROWS) -> dict:
    """Write ``out_dir/{split}-NNNNN.bin|.idx.npy|.json`` and ``{split}.shards.json``; per-split counts."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    dtype = choose_dtype(tok.get_vocab_size(), cfg.dtype)
    parts = [(split, i, path) for split in SPLITS for i, path in enumerate(split_files(corpus_dir, split))]
    field = cfg.domain_field
    domains = tuple(domain_names([p for _, _, p in parts], field)) if field else ()
    if field:
        write_domain_names(out_dir, field, domains)
    tasks = [PartTask(split, path, out_dir / shard_name(split, i), dtype, batch_rows, field, domains)
             for split, i, path in parts]
    results = run_tasks(tok, tasks, resolve_workers(cfg.workers, len(tasks)))
    stats: dict = {"dtype": dtype, "vocab_size": tok.get_vocab_size()}
    if field:
        stats["domains"] = {"field": field, "names": list(domains)}
    for split in SPLITS:
        shards = [r for t, r in zip(tasks, results, strict=True) if t.split == split]
        write_split_index(out_dir, split, shards)
        stats[split] = {k: sum(s[k] for s in shards) for k in ("n_docs", "n_tokens", "n_bytes")}
        stats[split]["n_shards"] = len(shards)
    return stats
