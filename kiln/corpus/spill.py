"""On-disk intermediate data of the streaming corpus stage (kiln/corpus/stream.py).

- Document shards: a list of document dicts pickled to one file (Python values kept exactly, so a
  metadata ``int`` stays an ``int`` until the final Parquet cast). Every list of documents the stage
  holds is loaded through :func:`load_docs` or built by the reader up to one shard, so :data:`WATCH`
  (a test hook) sees the size of every batch of documents in memory.
- Keyed records: numpy structured arrays written *by partition* (records sorted by partition index,
  plus an offsets array), so partition ``p`` of every shard's file can be read alone (a memory-mapped
  slice): the bucket -> cluster scheme of datatrove's MinHash pipeline, used for every cross-shard dedup.
- Global document positions: ``shard << 32 | index in shard`` (int64), ordered like corpus order.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from kiln.atomic import WriteError, write_error
from kiln.corpus.report import Doc

WATCH: Callable[[int], None] | None = None  # called with len(docs) of every document batch held in memory
SHIFT = np.int64(32)


def watch(docs: list[Doc]) -> list[Doc]:
    """Report ``len(docs)`` to :data:`WATCH` (if set); return ``docs``."""
    if WATCH is not None:
        WATCH(len(docs))
    return docs


def pos(shard: int, index: int | np.ndarray) -> np.ndarray | int:
    """Global position(s) of document ``index`` of ``shard``."""
    return (np.int64(shard) << SHIFT) | np.asarray(index, dtype=np.int64) if isinstance(index, np.ndarray) \
        else (shard << 32) | index


def shard_of(p: np.ndarray | int) -> np.ndarray | int:
    return p >> SHIFT if isinstance(p, np.ndarray) else p >> 32


def index_of(p: np.ndarray | int) -> np.ndarray | int:
    return p & np.int64(0xFFFFFFFF) if isinstance(p, np.ndarray) else p & 0xFFFFFFFF


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write (disk full, file size limit, I/O error) is a WriteError naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc


def save_docs(path: Path, docs: list[Doc]) -> None:
    """Pickle ``docs`` to ``path`` (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path), open(tmp, "wb") as f:
        pickle.dump(docs, f, protocol=pickle.HIGHEST_PROTOCOL)
    _replace(tmp, path)


def load_docs(path: Path) -> list[Doc]:
    with open(path, "rb") as f:
        return watch(pickle.load(f))


def save_obj(path: Path, obj: object) -> None:
    save_docs(path, obj)  # type: ignore[arg-type] - any picklable object


def load_obj(path: Path) -> object:
    with open(path, "rb") as f:
        return pickle.load(f)


def save_runs(path: Path, items: Iterable[tuple], chunk: int = 256, chunk_bytes: int | None = None) -> None:
    """Write ``(key, position, doc)`` items as a sequence of pickled chunks of at most ``chunk`` items and
    about ``chunk_bytes`` bytes of text (read back lazily by :func:`iter_runs`)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path), open(tmp, "wb") as f:
        buf: list[tuple] = []
        size = 0
        for item in items:
            buf.append(item)
            size += len(item[2]["text"])
            if len(buf) >= chunk or (chunk_bytes is not None and size >= chunk_bytes):
                pickle.dump(buf, f, protocol=pickle.HIGHEST_PROTOCOL)
                buf, size = [], 0
        if buf:
            pickle.dump(buf, f, protocol=pickle.HIGHEST_PROTOCOL)
    _replace(tmp, path)


def iter_runs(path: Path) -> Iterator[Doc]:
    with open(path, "rb") as f:
        while True:
            try:
                chunk = pickle.load(f)
            except EOFError:
                return
            yield from watch(chunk)


def write_parts(path: Path, records: np.ndarray, part: np.ndarray, n_parts: int) -> None:
    """Save ``records`` grouped by ``part`` (stable) to ``path`` and their offsets to ``path.off.npy``."""
    order = np.argsort(part, kind="stable")
    offsets = np.searchsorted(part[order], np.arange(n_parts + 1), side="left").astype(np.int64)
    for target, arr in ((path, records[order]), (_off(path), offsets)):
        tmp = target.with_name(f".{target.name}.tmp")
        with _writing(target), open(tmp, "wb") as f:
            np.save(f, arr)
        _replace(tmp, target)


def _off(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".npy") + ".off.npy")


def read_part(paths: Iterable[Path], p: int, dtype: np.dtype) -> np.ndarray:
    """Partition ``p`` of every file in ``paths``, concatenated in the order of ``paths``."""
    chunks = []
    for path in paths:
        off = np.load(_off(path))
        arr = np.load(path, mmap_mode="r")
        chunks.append(np.array(arr[off[p]:off[p + 1]]))
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=dtype)


def first_occurrences(keys: list[np.ndarray], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For records keyed by the columns ``keys``: ``(later, first)``: the indices of the records whose key
    occurred at an earlier position, and for each that earliest position."""
    if not len(positions):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    order = np.lexsort((positions, *reversed(keys)))  # by key, then position
    same_as_previous = np.zeros(len(order), dtype=bool)
    same_as_previous[1:] = True
    for k in keys:
        sk = k[order]
        same_as_previous[1:] &= sk[1:] == sk[:-1]
    starts = np.where(same_as_previous, 0, np.arange(len(order)))  # index of each group's first record
    group_first = positions[order][np.maximum.accumulate(starts)]
    return order[same_as_previous], group_first[same_as_previous]
