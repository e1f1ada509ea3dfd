"""``shuffle``: a seeded random order of the corpus documents, the random-order baseline of ordering methods.

Each document is sorted by ``sha256(f"{seed}:{id}")`` (ties, i.e. repeated ids, by their input position), so
the order is a permutation that depends only on the seed and the document ids: the same documents give the
same order whatever order they arrive in, and a rerun gives the same order. Nothing is removed or changed.

Sources arrive in collection order (Shakespeare scene after scene of the same play, docstrings module by
module), which is already a topical order; to compare an ordering such as ``icp_order`` (In-Context
Pretraining, Shi et al. 2023, arXiv:2310.10638) with *random* order, put ``shuffle`` last instead. Like
``icp_order`` it only reaches the batches with ``data.packing: concat`` (``best_fit`` re-sorts pieces by length)
and a split that keeps corpus order (``split: hash``, no ``split_order_by``).

Recipe::

    corpus:
      steps: [..., {step: shuffle, seed: 0}]
    data: {packing: concat, attention: causal}
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams


class ShuffleParams(StepParams):
    step: Literal["shuffle"] = "shuffle"
    seed: int = Field(0, description="seed of the permutation (the order is sha256(seed:id))")


def shuffle_key(seed: int, doc_id: object) -> bytes:
    """The sort key of a document: ``sha256(f"{seed}:{id}")``."""
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()


def run_shuffle(docs: list[Doc], params: ShuffleParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """The documents in the seeded order of their ids (a whole-corpus step: the output is not input order)."""
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    for doc in docs:
        if "id" not in doc or doc["id"] is None:
            raise ValueError(f"corpus step '{rep.step}': a document has no id (keys {sorted(doc)}); the shuffle "
                             "order is a hash of the id")
    order = sorted(range(len(docs)), key=lambda i: (shuffle_key(params.seed, docs[i]["id"]), i))
    out = [docs[i] for i in order]
    rep.docs_out = len(out)
    moved = sum(1 for k, i in enumerate(order) if k != i)
    rep.summary = {"documents": len(out), "moved": moved, "seed": params.seed}  # type: ignore[attr-defined]
    return out, rep


STEPS = [StepDef(ShuffleParams, run_shuffle)]
