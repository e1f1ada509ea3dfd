"""Built-in Shakespeare: how many modern/folio scene pairs MinHash flags as near duplicates, per threshold.

The folio edition is the 1623 First Folio's spelling (``vpon``, ``doe``, long stage directions), so a
modern scene and its folio twin share far fewer 5-word shingles than a ~5%-edited web copy: exactly the
case where the MinHash threshold decides what counts as a duplicate. Signatures (kiln's numpy MinHash,
:mod:`kiln.corpus.steps.minhash`, 128 hashes as 64 bands x 2 rows) are computed once; a cross-edition
pair is flagged at Jaccard threshold ``t`` if it is an LSH candidate and its signature agreement (the
unbiased Jaccard estimate, Broder 1997) is ``>= t`` — the ``verify_threshold`` rule of the ``minhash``
step. Lowering ``t`` can only add pairs, so the count rises monotonically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.corpus.steps.minhash import MinHashParams, signatures

THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.1)


def candidate_pairs(sig: np.ndarray, rows: int) -> set[tuple[int, int]]:
    """Index pairs ``(i < j)`` equal on at least one band of ``rows`` signature entries."""
    pairs: set[tuple[int, int]] = set()
    for band in range(sig.shape[1] // rows):
        block = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        groups: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys.tolist()):
            groups.setdefault(k, []).append(i)
        for members in groups.values():
            if 1 < len(members) <= 64:  # a huge bucket is boilerplate (e.g. one-line scenes): skip
                pairs.update((a, b) for x, a in enumerate(members) for b in members[x + 1:])
    return pairs


def scene_pairs_by_threshold(cache_dir: Path | None = None, thresholds: tuple[float, ...] = THRESHOLDS,
                             min_chars: int = 200) -> dict[str, dict[str, int]]:
    """Per threshold: modern/folio pairs flagged, and how many of them are the same play, act and scene."""
    from kiln.corpus.shakespeare import read_shakespeare
    from kiln.corpus.sources import cache_dir_for
    from kiln.recipe import CorpusConfig

    cache = cache_dir or cache_dir_for(CorpusConfig())
    docs = [d for d in read_shakespeare(cache, ["modern", "folio"]) if d["act"] and len(d["text"]) >= min_chars]
    params = MinHashParams(buckets=64, hashes_per_bucket=2)
    sig = signatures(docs, params)
    out = {}
    cross = [(i, j) for i, j in candidate_pairs(sig, params.hashes_per_bucket)
             if docs[i]["edition"] != docs[j]["edition"]]
    agree = {p: float(np.mean(sig[p[0]] == sig[p[1]])) for p in cross}
    for t in sorted(thresholds, reverse=True):
        flagged = [p for p in cross if agree[p] >= t]
        same = sum(all(docs[i][k] == docs[j][k] for k in ("play", "act", "scene")) for i, j in flagged)
        out[f"{t:g}"] = {"pairs": len(flagged), "same_scene": same}
    return out
