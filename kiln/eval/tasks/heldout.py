"""The held-out guarantee: task items never come from a document of the run's training split.

Pools already hold only documents the hash split puts in validation; a run may still have trained on one
(another split rule, ``split: tail``, a forced split of a tiny corpus, a mixed copy). So when a run is
given, every candidate document whose id is among the run's *train* ids (mixed copies ``id#rN`` count
as their original) is dropped before any item is made, and the count is reported.
"""

from __future__ import annotations

from typing import Any

from kiln.corpus.files import iter_text_batches
from kiln.corpus.mix import base_id
from kiln.run import RunDir


def train_doc_ids(run: RunDir) -> set[str]:
    """Base ids of every document in the run's corpus train split (reads only the ``id`` column)."""
    run.require("corpus")
    ids: set[str] = set()
    for batch in iter_text_batches(run.stage("corpus"), "train", batch_rows=8192, columns=("id",)):
        ids.update(base_id(i) for i in batch)  # type: ignore[union-attr]
    return ids


def drop_train_docs(docs: list[dict[str, Any]], train_ids: set[str] | None) -> tuple[list[dict[str, Any]], int]:
    """``(kept, n_dropped)``: the documents whose id is not in ``train_ids`` (all kept when it is None)."""
    if not train_ids:
        return list(docs), 0
    kept = [d for d in docs if d["id"] not in train_ids]
    return kept, len(docs) - len(kept)
