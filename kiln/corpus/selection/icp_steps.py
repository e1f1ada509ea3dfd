"""``icp_order``: In-Context Pretraining ordering of the whole corpus (Shi et al. 2023, arXiv:2310.10638).

The step embeds every document (``embed``: hashing bag-of-words by default, or the packaged MiniLM), finds each
one's ``k`` nearest neighbours with faiss (exact up to ``exact_max`` documents, IVF above), drops semantic
near-duplicates (cosine > ``dedup_cosine`` to an earlier kept neighbour; reason ``semantic near-duplicate of
<id> (cosine c)``), walks the kNN graph from minimum-degree documents to the most similar unvisited neighbour,
cuts the path into contexts of about ``context_chars`` characters and emits the contexts in a seeded random
order (:mod:`kiln.corpus.selection.icp` has the details). It is a whole-corpus step: it returns the kept
documents *in the new order* (not input order), each with three new metadata fields:

- ``icp_context``: the document's context number after the shuffle (the emitted order is by this number);
- ``icp_position``: its place in the traversal path (0 = first visited);
- ``icp_prev_cosine``: cosine to the previous document of the path (null for the first; low where the walk
  jumped). The funnel row's ``scores`` summarise this column (its mean is the mean neighbour cosine along
  the path). The funnel row's ``summary`` holds documents, dropped, paths, contexts, mean path cosine,
  ``mean_input_cosine`` (the same mean over the input order: the baseline) and seconds.

How the order reaches the batches (checked in ``kiln/corpus/stream*.py``, ``kiln/data/encode.py``,
``kiln/data/packing.py``, ``kiln/data/loader.py``):

- Put ``icp_order`` last in ``corpus.steps`` (later per-document steps keep the order but may remove
  documents). The corpus parts keep the order; the train/val split keeps it too (``split: hash`` takes each
  document to train or val on its own, in order; ``tail`` cuts the end) **unless** ``split_order_by`` re-sorts.
- The tokens stage encodes the parts in order, documents in corpus order.
- ``data.packing: concat`` keeps it: one token stream in document order, cut into rows of ``seq_len`` tokens,
  so a row holds consecutive path documents. ``best_fit`` (the default) sorts pieces by length and destroys it:
  use ``concat`` with this step. The loader then shuffles whole rows each epoch, which is the context-level
  shuffle at the granularity of a row; ``context_chars`` only decides where unrelated documents meet inside a
  row, so keep it well above a row's characters (the default 32768 is ~8192 tokens, the paper's context).
- ``data.attention: causal`` lets a document attend to the related documents before it in its row: what ICP is
  for. ``document`` masks attention at every document boundary, so the order then changes only which
  documents share a batch, not what the model reads in context.

Recipe::

    corpus:
      steps: [..., {step: icp_order, k: 10, dedup_cosine: 0.9, context_chars: 32768}]
    data: {packing: concat, attention: causal}
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from kiln.corpus.report import score_summary
from kiln.corpus.selection.embed import EmbedParams
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport

FIELDS = ("icp_context", "icp_position", "icp_prev_cosine")


class IcpOrderParams(StepParams):
    step: Literal["icp_order"] = "icp_order"
    embed: EmbedParams = Field(default_factory=EmbedParams, description="how documents are embedded")
    k: int = Field(10, ge=1, description="neighbours per document (the reference sort uses 9 after self)")
    dedup_cosine: float | None = Field(0.9, gt=0.0, le=1.0, description="drop a document whose cosine to an earlier "
                                       "kept neighbour exceeds this (0.9: the spec's untuned placeholder); "
                                       "null = no semantic dedup")
    context_chars: int = Field(32768, ge=1, description="characters per context cut from the path (~4 per token)")
    seed: int = Field(0, description="seed of the IVF sample, min-degree ties and the context shuffle")
    exact_max: int = Field(20000, ge=1, description="exact kNN up to this many documents, IVF above")
    nlist: int | None = Field(None, ge=1, description="IVF lists (default ~4 sqrt(n))")
    nprobe: int | None = Field(None, ge=1, description="IVF lists probed per query (default 32)")
    threads: int = Field(1, ge=1, description="faiss threads (results are reproducible for a fixed count)")


def run(docs: list[Doc], params: IcpOrderParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    from kiln.corpus.selection.embed import embed_texts
    from kiln.corpus.selection.icp import icp_order

    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    for doc in docs:
        if not isinstance(doc.get("text"), str):
            raise TypeError(f"corpus step '{rep.step}': document '{doc.get('id')}' has no text string "
                            f"(got {type(doc.get('text')).__name__})")
    if not docs:
        return [], rep
    t0 = time.perf_counter()
    emb = embed_texts([d["text"] for d in docs], params.embed)
    t1 = time.perf_counter()
    res = icp_order(emb, np.array([len(d["text"]) for d in docs], dtype=np.int64), k=params.k,
                    dedup_cosine=params.dedup_cosine, context_chars=params.context_chars, seed=params.seed,
                    exact_max=params.exact_max, nlist=params.nlist, nprobe=params.nprobe, threads=params.threads)
    for i in np.flatnonzero(~res.dedup.keep).tolist():
        j = int(res.dedup.dup_of[i])
        ctx.remove(rep, docs[i], f"semantic near-duplicate of {docs[j]['id']} "
                                 f"(cosine {res.dedup.dup_sim[i]:.3f} > {params.dedup_cosine})")
    out = []
    for i, c, p, cos in zip(res.order.tolist(), res.context.tolist(), res.position.tolist(),
                            res.prev_cosine.tolist(), strict=True):
        out.append({**docs[i], "icp_context": int(c), "icp_position": int(p),
                    "icp_prev_cosine": None if cos != cos else float(cos)})
    rep.docs_out = len(out)
    rep.scores = score_summary(res.prev_cosine, "icp_prev_cosine")  # type: ignore[attr-defined]
    rep.summary = {**res.summary(), "embed_seconds": round(t1 - t0, 3),  # type: ignore[attr-defined]
               "order_seconds": round(time.perf_counter() - t1, 3)}
    return out, rep


STEPS = [StepDef(params=IcpOrderParams, run=run)]
