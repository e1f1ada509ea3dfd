"""Document domains: a corpus metadata column numbered per document, for routing by domain.

With ``tokens.domain_field`` set (e.g. ``source``), the tokens stage numbers the column's values over the whole
corpus (both splits, sorted: ``tokens/domains.json`` lists them, a value's id is its position) and stores each
shard's per-document ids next to it as ``{prefix}.domain.npy`` (``int16``, one per document). The loader then
gives every token of a batch its document's id (``Batch.domains``, -1 on padding), which is what enforced-routing
mixture-of-experts training reads (``train.route_by_domain``, :mod:`kiln.train.domain_routing`).

Hallee et al. 2024, "Contrastive Learning and Mixture of Experts Enables Precise Vector Embeddings"
(arXiv:2401.15713): one expert per domain, every example sent to its domain's expert.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kiln import atomic

DOMAINS_JSON = "domains.json"
MAX_DOMAINS = 2**15 - 1  # ids are stored as int16


class DomainError(ValueError):
    """A domain column that cannot be numbered or read; the message names the file and field."""


def domain_path(prefix: str | Path) -> Path:
    """The per-document domain ids of the shard at ``prefix``."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".domain.npy")


def column_values(parquet: Path, field: str) -> list:
    """Every document's ``field`` value in one corpus part; a missing column or a null value is an error."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(parquet)
    if field not in pf.schema_arrow.names:
        raise DomainError(f"tokens.domain_field: corpus part {parquet} has no column {field!r} (columns: "
                          f"{', '.join(pf.schema_arrow.names)})")
    values = pf.read(columns=[field]).column(0).to_pylist()
    for row, v in enumerate(values):
        if v is None:
            raise DomainError(f"tokens.domain_field: document {row} of {parquet} has no {field!r} value")
    return values


def domain_names(parquets: Iterable[Path], field: str) -> list[str]:
    """The sorted distinct values (as strings) of ``field`` over the given corpus parts."""
    names = sorted({str(v) for p in parquets for v in column_values(p, field)})
    if len(names) > MAX_DOMAINS:
        raise DomainError(f"tokens.domain_field {field!r} has {len(names)} distinct values; at most {MAX_DOMAINS}")
    return names


def domain_ids(values: Sequence, names: Sequence[str]) -> np.ndarray:
    """``values`` numbered by their position in ``names`` (``int16``)."""
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int16)


def write_doc_domains(prefix: Path, ids: np.ndarray) -> None:
    with atomic.staged_path(domain_path(prefix)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(ids, dtype=np.int16))


def write_domain_names(tokens_dir: Path, field: str, names: Sequence[str]) -> None:
    atomic.write_json(Path(tokens_dir) / DOMAINS_JSON, {"field": field, "names": list(names)})


def read_domain_names(tokens_dir: str | Path) -> list[str] | None:
    """``domains.json``'s names, or None when the tokens were written without ``tokens.domain_field``."""
    path = Path(tokens_dir) / DOMAINS_JSON
    if not path.exists():
        return None
    try:
        return [str(n) for n in json.loads(path.read_text())["names"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DomainError(f"unreadable {path}: {e!r}; expected {{\"field\": ..., \"names\": [...]}}") from e


def load_doc_domains(split) -> np.ndarray | None:
    """Every document's domain id over a split's shards (a :class:`~kiln.data.shards.TokenShards` or one
    shard), ``int64``; None when no shard has ids; an error when only some have or a count disagrees."""
    shards = getattr(split, "shards", [split])
    paths = [domain_path(s.prefix) for s in shards]
    present = [p.exists() for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = paths[present.index(False)]
        raise DomainError(f"{missing} is missing while other shards of the split have domain ids; rerun the tokens "
                          "stage")
    parts = []
    for shard, path in zip(shards, paths, strict=True):
        ids = np.load(path, allow_pickle=False)
        if ids.ndim != 1 or len(ids) != shard.n_docs:
            raise DomainError(f"{path} holds {ids.shape} ids for a shard of {shard.n_docs} documents; rerun the "
                              "tokens stage")
        parts.append(ids.astype(np.int64))
    return np.concatenate(parts)
