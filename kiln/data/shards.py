"""Token shards: flat token memmaps plus document indexes; a split is one or more shards read as one.

A shard is three files sharing a prefix:

- ``{prefix}.bin``: every document's token ids back to back, raw little-endian ``uint16`` or ``uint32``;
- ``{prefix}.idx.npy``: ``int64`` offsets, ``n_docs + 1`` of them, ``offsets[0] == 0``;
- ``{prefix}.json``: ``dtype``, ``n_tokens``, ``n_docs`` and any extra metadata.

Keeping document boundaries (rather than one anonymous stream) lets any packing, ordering or
objective be applied later without re-tokenizing. The reader checks that the three files agree, so
a truncated or mismatched shard is an error, never silently short data.

A split of the tokens folder is the shards ``{split}-00000``, ``{split}-00001``, ... listed, with their
counts, in ``{split}.shards.json`` (written last, so a split is complete iff it exists), or, in folders
written before the tokens stage was sharded, the single shard ``{split}``. :func:`open_split` reads
either as a :class:`TokenShards`: the same interface as :class:`TokenShard`, documents in shard order,
one global document index over a virtual concatenation of the shards' tokens.
"""

from __future__ import annotations

import array
import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from kiln import atomic
from kiln.faults import maybe_fail

DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
RESERVED_KEYS = ("dtype", "n_tokens", "n_docs")


class ShardError(ValueError):
    """A shard that cannot be written or read as asked; the message names the file."""


def shard_paths(prefix: str | Path) -> tuple[Path, Path, Path]:
    """The ``.bin``, ``.idx.npy`` and ``.json`` paths of a shard prefix."""
    prefix = Path(prefix)
    return (
        prefix.with_name(prefix.name + ".bin"),
        prefix.with_name(prefix.name + ".idx.npy"),
        prefix.with_name(prefix.name + ".json"),
    )


def choose_dtype(vocab_size: int, requested: str = "auto") -> str:
    """The token dtype for a vocabulary: ``uint16`` holds ids up to 65535, else ``uint32``."""
    if vocab_size < 1:
        raise ShardError(f"vocab_size must be >= 1, got {vocab_size}")
    if requested == "auto":
        return "uint16" if vocab_size <= 2**16 else "uint32"
    if requested not in DTYPES:
        raise ShardError(f"token dtype must be 'auto', 'uint16' or 'uint32', got {requested!r}")
    limit = np.iinfo(DTYPES[requested]).max + 1
    if vocab_size > limit:
        raise ShardError(f"token dtype {requested} holds ids < {limit}, but vocab_size is {vocab_size}; use uint32")
    return requested


class ShardWriter:
    """Streams documents into a shard; the files appear (atomically) only when the writer closes cleanly.

    Use as a context manager. ``meta`` (also ``writer.meta``, which may be updated until close) is stored in
    the ``.json``; if it holds an integer ``vocab_size`` at construction, ids are also checked against it.
    """

    def __init__(self, prefix: str | Path, dtype: str, meta: dict[str, Any] | None = None) -> None:
        if dtype not in DTYPES:
            raise ShardError(f"token dtype must be 'uint16' or 'uint32', got {dtype!r}")
        meta = dict(meta or {})
        clash = [k for k in RESERVED_KEYS if k in meta]
        if clash:
            raise ShardError(f"shard metadata may not set reserved keys {clash}")
        self.prefix = Path(prefix)
        self.dtype = dtype
        self.meta = meta
        self._np_dtype = DTYPES[dtype]
        vocab = meta.get("vocab_size")
        self._limit = int(np.iinfo(self._np_dtype).max) + 1
        if isinstance(vocab, int) and not isinstance(vocab, bool):
            self._limit = min(self._limit, vocab)
        self._offsets = array.array("q", [0])  # 8 bytes per document, not a Python int each
        self._n_tokens = 0
        self._bin_path, self._idx_path, self._json_path = shard_paths(self.prefix)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic.staged_path(self._bin_path))
        self._file = self._stack.enter_context(open(tmp, "wb"))  # noqa: SIM115 - closed by the stack
        self._closed = False

    @property
    def n_docs(self) -> int:
        return len(self._offsets) - 1

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    def add(self, token_ids: Sequence[int] | np.ndarray) -> None:
        """Append one document (with BOS/EOS already in place if wanted)."""
        if self._closed:
            raise ShardError(f"shard writer for {self._bin_path} is closed")
        ids = np.asarray(token_ids)
        if ids.ndim != 1:
            raise ShardError(f"a document must be a 1-D sequence of token ids, got shape {ids.shape}")
        if ids.size:
            if ids.dtype.kind not in "iu":
                raise ShardError(f"token ids must be integers, got dtype {ids.dtype}")
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self._limit:
                bad = lo if lo < 0 else hi
                raise ShardError(
                    f"token id {bad} does not fit shard {self._bin_path.name} "
                    f"(dtype {self.dtype}, ids must be in [0, {self._limit}))"
                )
            try:
                self._file.write(ids.astype(self._np_dtype, copy=False).tobytes())
            except OSError as exc:
                raise atomic.write_error(self._bin_path, exc) from exc
        self._n_tokens += int(ids.size)
        self._offsets.append(self._n_tokens)

    def add_many(self, docs: Iterable[Sequence[int]] | np.ndarray) -> None:
        """Append several documents (lists of ids, or the rows of a 2-D array) with one conversion and one write:
        the fast path for a batch of encodings. Same checks as :meth:`add`."""
        if isinstance(docs, np.ndarray) and docs.ndim == 2:
            lengths = np.full(docs.shape[0], docs.shape[1], dtype=np.int64)
            flat = docs.ravel()
        else:
            docs = list(docs)
            lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
            flat = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(lengths.sum()))
        self.add(flat)  # one checked write of every token ...
        self._offsets.pop()  # ... then the real document boundaries instead of one
        ends = self._n_tokens - int(flat.size) + np.cumsum(lengths)
        self._offsets.extend(ends.tolist())

    def close(self) -> None:
        """Finish the shard: rename the token file into place, then the index, then the metadata."""
        if self._closed:
            return
        clash = [k for k in RESERVED_KEYS if k in self.meta]
        if clash:  # `meta` may be updated while writing (e.g. byte counts); the counts are the writer's own
            err = ShardError(f"shard metadata may not set reserved keys {clash}")
            self.abort(err)
            raise err
        self._closed = True
        self._file.flush()
        self._stack.close()
        maybe_fail("shard_close")
        with atomic.staged_path(self._idx_path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.frombuffer(self._offsets, dtype=np.int64))
        info = {"dtype": self.dtype, "n_tokens": self._n_tokens, "n_docs": self.n_docs, **self.meta}
        atomic.write_json(self._json_path, info)

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop everything written so far (no shard files appear)."""
        if self._closed:
            return
        self._closed = True
        err = exc or RuntimeError("shard writer aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


class TokenShard:
    """Read side of a shard: the tokens are memory-mapped, the offsets loaded; all three files are cross-checked."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        bin_path, idx_path, json_path = shard_paths(self.prefix)
        for p in (json_path, idx_path, bin_path):
            if not p.exists():
                raise ShardError(f"missing shard file {p}")
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as e:
            raise ShardError(f"unreadable shard metadata {json_path}: {e}") from e
        if not isinstance(meta, dict) or any(k not in meta for k in RESERVED_KEYS):
            raise ShardError(f"shard metadata {json_path} must hold {list(RESERVED_KEYS)}")
        dtype = meta["dtype"]
        if dtype not in DTYPES:
            raise ShardError(f"shard metadata {json_path}: unknown dtype {dtype!r}")
        self.meta: dict[str, Any] = meta
        self.dtype: str = dtype
        self.n_tokens: int = int(meta["n_tokens"])
        self.n_docs: int = int(meta["n_docs"])

        offsets = np.load(idx_path, allow_pickle=False)
        if offsets.ndim != 1 or offsets.dtype != np.int64 or len(offsets) != self.n_docs + 1:
            raise ShardError(
                f"shard index {idx_path} has shape {offsets.shape} dtype {offsets.dtype}; "
                f"expected int64 with n_docs+1 = {self.n_docs + 1} entries (from {json_path.name})"
            )
        if offsets[0] != 0 or offsets[-1] != self.n_tokens or np.any(np.diff(offsets) < 0):
            raise ShardError(
                f"shard index {idx_path} is inconsistent: offsets must start at 0, never decrease and end at "
                f"n_tokens = {self.n_tokens} (got first {int(offsets[0])}, last {int(offsets[-1])})"
            )
        self.offsets: np.ndarray = offsets

        itemsize = DTYPES[dtype].itemsize
        size = bin_path.stat().st_size
        if size != self.n_tokens * itemsize:
            raise ShardError(
                f"shard token file {bin_path} has {size} bytes, expected n_tokens * itemsize = "
                f"{self.n_tokens} * {itemsize} = {self.n_tokens * itemsize}: the shard is truncated or mismatched"
            )
        if self.n_tokens:
            self.tokens: np.ndarray = np.memmap(bin_path, dtype=DTYPES[dtype], mode="r", shape=(self.n_tokens,))
        else:
            self.tokens = np.zeros(0, dtype=DTYPES[dtype])

    def __len__(self) -> int:
        return self.n_docs

    def doc(self, i: int) -> np.ndarray:
        """Document ``i``'s token ids (a read-only view into the memmap)."""
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"document {i} out of range for shard {self.prefix} with {self.n_docs} documents")
        i %= self.n_docs
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __getitem__(self, i: int) -> np.ndarray:
        """``doc(i)``: a shard is a sequence of documents (e.g. for ``Objective.fit``)."""
        return self.doc(i)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at the given positions of the token stream (a copy)."""
        return np.asarray(self.tokens)[positions]

    def doc_lengths(self) -> np.ndarray:
        """Length of every document, ``int64``."""
        return np.diff(self.offsets)

    def __repr__(self) -> str:
        return f"TokenShard({str(self.prefix)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens}, dtype={self.dtype})"


# ----------------------------------------------------------------------------- a split: many shards read as one

SPLIT_INDEX_SUFFIX = ".shards.json"


def shard_name(split: str, index: int) -> str:
    """The prefix name of shard ``index`` of ``split`` (``train-00003``)."""
    return f"{split}-{index:05d}"


def split_index_path(tokens_dir: str | Path, split: str) -> Path:
    return Path(tokens_dir) / f"{split}{SPLIT_INDEX_SUFFIX}"


def write_split_index(tokens_dir: str | Path, split: str, shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Record a split's shards (``name``, ``n_docs``, ``n_tokens`` each, in order); write this last."""
    index = {
        "split": split,
        "n_docs": sum(int(s["n_docs"]) for s in shards),
        "n_tokens": sum(int(s["n_tokens"]) for s in shards),
        "shards": [{"name": s["name"], "n_docs": int(s["n_docs"]), "n_tokens": int(s["n_tokens"])} for s in shards],
    }
    atomic.write_json(split_index_path(tokens_dir, split), index)
    return index


class TokenShards:
    """Several shards read as one split: the interface of :class:`TokenShard` (``n_docs``, ``n_tokens``,
    ``dtype``, ``meta``, ``offsets``, ``doc``, ``take``, ...) over their documents in shard order.

    ``offsets`` index a virtual concatenation of the shards' tokens; :meth:`take` maps positions in it back to
    the shards' memmaps, so nothing is copied up front.
    """

    def __init__(self, shards: Sequence[TokenShard], name: str | Path) -> None:
        self.prefix = Path(name)
        if not shards:
            raise ShardError(f"{self.prefix}: a split needs at least one shard")
        dtypes = sorted({s.dtype for s in shards})
        if len(dtypes) > 1:
            raise ShardError(f"{self.prefix}: shards disagree on the token dtype ({', '.join(dtypes)})")
        self.shards: list[TokenShard] = list(shards)
        self.dtype: str = dtypes[0]
        docs = np.array([s.n_docs for s in shards], dtype=np.int64)
        toks = np.array([s.n_tokens for s in shards], dtype=np.int64)
        self._doc_starts = np.concatenate([[0], np.cumsum(docs)])
        self._tok_starts = np.concatenate([[0], np.cumsum(toks)])
        self.n_docs: int = int(self._doc_starts[-1])
        self.n_tokens: int = int(self._tok_starts[-1])
        parts = [s.offsets[:-1] + start for s, start in zip(shards, self._tok_starts[:-1].tolist(), strict=True)]
        self.offsets: np.ndarray = np.concatenate([*parts, np.array([self.n_tokens], dtype=np.int64)])
        meta = {k: v for k, v in shards[0].meta.items() if k not in ("n_bytes",)}
        meta.update(dtype=self.dtype, n_docs=self.n_docs, n_tokens=self.n_tokens, n_shards=len(shards))
        if all("n_bytes" in s.meta for s in shards):
            meta["n_bytes"] = sum(int(s.meta["n_bytes"]) for s in shards)
        self.meta: dict[str, Any] = meta

    def __len__(self) -> int:
        return self.n_docs

    def _locate(self, i: int) -> tuple[TokenShard, int]:
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"document {i} out of range for {self.prefix} with {self.n_docs} documents")
        i %= self.n_docs
        k = int(np.searchsorted(self._doc_starts, i, side="right")) - 1
        return self.shards[k], i - int(self._doc_starts[k])

    def doc(self, i: int) -> np.ndarray:
        """Document ``i``'s token ids (a read-only view into its shard's memmap)."""
        shard, j = self._locate(i)
        return shard.doc(j)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.doc(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        for shard in self.shards:
            for i in range(shard.n_docs):
                yield shard.doc(i)

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at the given positions of the concatenated token stream (a copy)."""
        pos = np.asarray(positions, dtype=np.int64)
        if len(self.shards) == 1:
            return self.shards[0].take(pos)
        out = np.empty(pos.shape, dtype=DTYPES[self.dtype])
        which = np.searchsorted(self._tok_starts, pos, side="right") - 1
        for k in np.unique(which).tolist():
            sel = which == k
            out[sel] = self.shards[k].take(pos[sel] - self._tok_starts[k])
        return out

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.prefix)!r}, shards={len(self.shards)}, n_docs={self.n_docs}, "
                f"n_tokens={self.n_tokens}, dtype={self.dtype})")


def _numbered_prefixes(tokens_dir: Path, split: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(split)}-(\d{{5}})\.(bin|idx\.npy|json)")
    found = {int(m.group(1)) for p in tokens_dir.iterdir() if (m := pattern.fullmatch(p.name))}
    missing = sorted(set(range(max(found, default=-1) + 1)) - found)
    if missing:
        raise ShardError(f"{tokens_dir}: shard {shard_name(split, missing[0])} of split '{split}' is missing")
    return [tokens_dir / shard_name(split, i) for i in sorted(found)]


def open_split(tokens_dir: str | Path, split: str) -> TokenShards:
    """Open split ``split`` of a tokens folder: the shards its ``{split}.shards.json`` lists (checked against
    their own counts), else the single legacy shard ``{split}``, else the numbered shards found."""
    tokens_dir = Path(tokens_dir)
    index_path = split_index_path(tokens_dir, split)
    name = tokens_dir / split
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
            entries = [(str(e["name"]), int(e["n_docs"]), int(e["n_tokens"])) for e in index["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ShardError(f"unreadable split index {index_path}: {e!r}; expected "
                             '{"shards": [{"name", "n_docs", "n_tokens"}, ...]}') from e
        shards = []
        for shard_prefix, n_docs, n_tokens in entries:
            shard = TokenShard(tokens_dir / shard_prefix)
            if (shard.n_docs, shard.n_tokens) != (n_docs, n_tokens):
                raise ShardError(
                    f"shard {shard.prefix} has {shard.n_docs} documents / {shard.n_tokens} tokens but "
                    f"{index_path.name} lists {n_docs} / {n_tokens}: the tokens folder is mixed up; rerun the tokens "
                    "stage")
            shards.append(shard)
        return TokenShards(shards, name)
    if any(p.exists() for p in shard_paths(name)):
        return TokenShards([TokenShard(name)], name)
    prefixes = _numbered_prefixes(tokens_dir, split) if tokens_dir.is_dir() else []
    if not prefixes:
        raise ShardError(f"{tokens_dir}: no token shards for split '{split}' ({index_path.name}, "
                         f"{shard_name(split, 0)}.bin or {split}.bin); run the tokens stage first")
    return TokenShards([TokenShard(p) for p in prefixes], name)


Shards = TokenShard | TokenShards
"""Either read side: what the packer, loader, trainer and evaluators accept."""
