"""``minhash`` with ``backend: datatrove``: datatrove's MinHash stages in one process, for comparison.

datatrove's ``MinhashDedupSignature`` (its own shingle hashing: 64-bit sha1 of the word ``shingle_size``-grams of
its simplified text, lower-cased, punctuation and diacritics dropped but digits kept (datatrove's default turns
every number into 0, which made "item 12" and "item 13" one shingle), split by kiln's regex splitter, so
nothing is downloaded), ``MinhashDedupBuckets`` and
``MinhashDedupCluster`` (with ``save_cluster_id``) run on a temporary folder, one rank. Their cluster ids are
read back and each cluster keeps its earliest document, kiln's rule: datatrove's own ``MinhashDedupFilter``
keeps its union-find root instead (the largest merged set's first member), which can be a later document and
gives no "duplicate of" id; the set of *clusters* is datatrove's.

Differences from the numpy backend, by design of datatrove: another shingle hash and permutation family (so a
borderline pair near the banding threshold can fall on the other side), no ``verify_threshold`` (refused by
``MinHashParams``), and a document with no words has no shingle, hence no signature, and is never a duplicate.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.corpus.report import Doc

if TYPE_CHECKING:
    from kiln.corpus.steps.base import StepContext
    from kiln.corpus.steps.minhash import MinHashParams


def _cluster_ids(path: Path) -> dict[int, int]:
    """Document index -> cluster id from a datatrove ``<rank>.clusters`` file (little-endian uint32 pairs)."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    pairs = struct.iter_unpack("<2I", raw)
    return {doc: cluster for doc, cluster in pairs}


def datatrove_pairs(docs: list[Doc], params: MinHashParams, ctx: StepContext | None = None) -> list[tuple[int, int]]:
    """``(kept, removed)`` index pairs from datatrove's MinHash clusters; each keeps its earliest document."""
    if not docs:
        return []
    from kiln.corpus import assets  # noqa: F401 - HF_HUB_OFFLINE before datatrove loads
    from kiln.corpus.words import splitter

    try:
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.text import TextNormConfig
    except ImportError as exc:  # pragma: no cover - datatrove is a dependency
        raise RuntimeError("minhash backend 'datatrove' needs datatrove: pip install datatrove") from exc

    config = MinhashConfig(n_grams=params.shingle_size, num_buckets=params.buckets,
                           hashes_per_bucket=params.hashes_per_bucket, seed=params.seed,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"),  # xxhash: an optional extra
                           norm_config=TextNormConfig(norm_numbers=False))  # digits kept, as the numpy backend
    from loguru import logger  # datatrove's logger: its per-bucket INFO lines would flood the stage's output

    logger.disable("datatrove")
    try:
        return _run_stages(docs, params, config, splitter("regex", datatrove=True))
    finally:
        logger.enable("datatrove")


def _run_stages(docs: list[Doc], params: MinHashParams, config: Any, words: Any) -> list[tuple[int, int]]:
    """datatrove's signature, bucket and cluster stages on a temporary folder; pairs by earliest member."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature

    with tempfile.TemporaryDirectory(prefix="kiln-minhash-") as tmp:
        root = Path(tmp)
        sigs, bucket_dir, cluster_dir = root / "signatures", root / "buckets", root / "clusters"
        stream = (Document(text=str(d["text"]), id=str(d["id"])) for d in docs)
        MinhashDedupSignature(str(sigs), config=config, language=words).run(stream)
        buckets = MinhashDedupBuckets(str(sigs), str(bucket_dir), config=config)
        for bucket in range(params.buckets):  # one datatrove task per bucket
            buckets.run(rank=bucket, world_size=params.buckets)
        MinhashDedupCluster(str(bucket_dir), str(cluster_dir), config=config, save_cluster_id=True).run()
        ids = _cluster_ids(cluster_dir / f"{0:06d}.clusters")
    first: dict[int, int] = {}
    pairs = []
    for i in sorted(ids):
        kept = first.setdefault(ids[i], i)
        if kept != i:
            pairs.append((kept, i))
    return pairs
