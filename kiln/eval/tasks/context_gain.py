"""Context gain: how much a model uses a *related* preceding document, the measurement of In-Context Pretraining.

In-Context Pretraining (Shi, Min, Lomeli, Zhou, Li, Szilvasy, James, Lin, Smith, Zettlemoyer, Yih and Lewis,
"In-Context Pretraining: Language Modeling Beyond Document Boundaries", ICLR 2024, arXiv:2310.10638) orders the
corpus so a document follows related ones; its claim is that the model then learns to read across document
boundaries. This task measures that directly on held-out text: the bits per byte of a target document ``B``
given a related document ``A`` before it, minus given an unrelated document ``C`` before it.

Building (:func:`build_context_gain`, from the same held-out pools and train-split check as every other task,
:mod:`kiln.eval.tasks.pools` / :mod:`kiln.eval.tasks.heldout`):

1. candidates: the pool's held-out documents the task accepts (``context-gain-shakespeare``: modern-spelling
   scenes; ``context-gain-pydocs``: stdlib docstrings) with at least :data:`MIN_CHARS` characters;
2. every candidate is embedded with the hashing bag-of-words of :mod:`kiln.corpus.selection.embed`, IDF-weighted
   over the candidates, 4096 buckets (:data:`EMBED`; on modern-spelling scenes a scene's nearest neighbour is from
   its own play 0.83 of the time, against 0.40 with the default 1024 buckets and no IDF);
3. targets ``B``: up to ``max_items`` candidates in the order of ``sha256(seed:task:id)``;
4. ``A`` = ``B``'s most similar other candidate with cosine <= :data:`DUP_COSINE` (no near-duplicates, no
   identical text); ``C`` = a seeded draw among the candidates whose cosine to ``B`` is at most the median of
   ``B``'s cosines (the least similar half), ``A`` excluded. A target without such an ``A`` and ``C`` (or whose
   ``C`` is not less similar than its ``A``) is skipped and counted. How often ``A`` and ``C`` come from ``B``'s
   play / module (``same_group_related``, ``same_group_unrelated``) is reported: the embedding's relatedness.

Scoring (:func:`score_context_gain`): with ``n`` = min(:data:`TARGET_TOKENS`, (max_seq_len - 2) // 2) and ``m``
= min(max_seq_len - 2 - |b|, |a|, |c|) for the triple, the model reads, causally and in one window,

- related:   ``<|bos|> a[-m:] <|bos|> b`` where ``a`` = ``A``'s tokens + ``<|eos|>``, ``b`` = ``B``'s first ``n``
  tokens (what concat packing puts in a row when ``B`` follows ``A``: ``... A <|eos|> <|bos|> B ...``);
- unrelated: ``<|bos|> c[-m:] <|bos|> b`` (the same number of context tokens);
- none:      ``<|bos|> b`` (``B`` alone, as document-masked attention would see it).

Related and unrelated put ``b`` at the same positions after the same number of tokens, so ``gain`` compares
only what the context says; ``none`` also moves ``b`` to the window's start (``gain_vs_none`` = ``bpb_none -
bpb_related`` mixes in position effects). Only ``b``'s tokens are scored; bits per byte = summed bits / ``b``'s
bytes (the tokenizer's byte table, as in every bpb metric). ``gain = bpb_unrelated - bpb_related`` (positive:
related context helps more than unrelated context), with a 95% percentile bootstrap interval over triples
(1000 resamples, fixed seed; the ratio of sums recomputed per resample). The result lands in
``metrics.json["tasks"]["context-gain-<pool>"]`` with ``kind: context_gain``; per-triple bits go to
``eval/tasks/<key>.jsonl``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.eval.tasks.items import TaskSet
from kiln.eval.tasks.templates import stable_int

KIND = "context_gain"
TARGET_TOKENS = 128  # tokens of B scored (fewer when the model's window is short)
MIN_CHARS = 200  # candidates shorter than this are not used (too few tokens to score or to give context)
EMBED = {"dim": 4096, "idf": True}  # how candidates are embedded (see step 2 above)
DUP_COSINE = 0.9  # A must be at most this similar to B (semantic near-duplicates excluded, as icp_order's dedup)
TARGET_CHARS = 4000  # characters of B's start kept in the task (enough for TARGET_TOKENS tokens)
CONTEXT_CHARS = 8000  # characters of A's / C's end kept (enough for any context window used here)
N_BOOT = 1000
BATCH_ROWS = 16


@dataclass(frozen=True)
class ContextGainSpec:
    description: str
    pool: str
    accepts: Callable[[dict[str, Any]], bool]
    group: str  # the metadata field of a topic (play, module): how often A and C share B's is reported


TASKS: dict[str, ContextGainSpec] = {
    "context-gain-shakespeare": ContextGainSpec(
        "bits per byte of a held-out modern scene after a related minus after an unrelated held-out scene",
        "shakespeare", lambda d: d.get("edition") == "modern", "play"),
    "context-gain-pydocs": ContextGainSpec(
        "bits per byte of a held-out docstring after a related minus after an unrelated held-out docstring",
        "pydocs", lambda d: True, "module"),
}  # fmt: skip


@dataclass(frozen=True)
class Triple:
    """A target document ``B``, its related document ``A`` and an unrelated one ``C`` (texts already cut)."""

    target_id: str
    target: str  # B's first TARGET_CHARS characters
    related_id: str
    related: str  # A's last CONTEXT_CHARS characters
    unrelated_id: str
    unrelated: str  # C's last CONTEXT_CHARS characters
    cos_related: float
    cos_unrelated: float


@dataclass
class ContextGainSet(TaskSet):
    """A built context-gain task: its triples (``kind`` is ``context_gain``)."""

    triples: list[Triple] = field(default_factory=list)

    def doc_ids(self) -> set[str]:
        return super().doc_ids() | {i for t in self.triples for i in (t.target_id, t.related_id, t.unrelated_id)}


def build_context_gain(name: str, docs: list[dict[str, Any]], *, seed: int, max_items: int,
                       info: dict[str, Any]) -> ContextGainSet:
    """Triples from held-out ``docs`` (already filtered to the task's documents, the train split dropped)."""
    from kiln.corpus.selection.embed import EmbedParams, embed_texts

    spec = TASKS[name]
    cands = [d for d in docs if len(d["text"].strip()) >= MIN_CHARS]
    if len(cands) < 3:
        raise ValueError(f"task {name}: {len(cands)} held-out documents of >= {MIN_CHARS} characters; a triple "
                         "needs 3 (raise corpus.val_fraction)")
    emb = embed_texts([d["text"] for d in cands], EmbedParams(**EMBED))
    order = sorted(range(len(cands)), key=lambda i: (stable_int(seed, name, cands[i]["id"]), cands[i]["id"]))
    triples: list[Triple] = []
    skipped = 0
    for i in order:
        if len(triples) == max_items:
            break
        t = _triple(name, seed, cands, emb, i)
        if t is None:
            skipped += 1
        else:
            triples.append(t)
    if not triples:
        raise ValueError(f"task {name}: no triple from {len(cands)} held-out documents (every target lacked a "
                         f"related document of cosine <= {DUP_COSINE} or a less similar unrelated one)")
    group = {d["id"]: d.get(spec.group) for d in cands}
    info = {**info, "n_candidates": len(cands), "n_triples": len(triples), "skipped_targets": skipped,
            "min_chars": MIN_CHARS, "dup_cosine": DUP_COSINE, "embed": "hashing (kiln.corpus.selection.embed)",
            "cos_related": float(np.mean([t.cos_related for t in triples])),
            "cos_unrelated": float(np.mean([t.cos_unrelated for t in triples])), "group_field": spec.group,
            "same_group_related": _share(triples, group, "related_id"),
            "same_group_unrelated": _share(triples, group, "unrelated_id")}  # fmt: skip
    return ContextGainSet(name, KIND, spec.description, info=info, triples=triples)


def _share(triples: list[Triple], group: dict[str, Any], field_name: str) -> float:
    return float(np.mean([group[getattr(t, field_name)] == group[t.target_id] for t in triples]))


def _triple(name: str, seed: int, cands: list[dict[str, Any]], emb: np.ndarray, i: int) -> Triple | None:
    sims = emb @ emb[i]
    text_i = cands[i]["text"]
    others = [j for j in range(len(cands)) if j != i and cands[j]["text"] != text_i]
    related = [j for j in others if sims[j] <= DUP_COSINE]
    if len(others) < 2 or not related:
        return None
    a = max(related, key=lambda j: (float(sims[j]), -j))
    cut = float(np.median(sims[others]))
    low = [j for j in others if j != a and sims[j] <= cut and sims[j] < sims[a]]
    if not low:
        return None
    c = low[stable_int(seed, name, "unrelated", cands[i]["id"]) % len(low)]
    return Triple(cands[i]["id"], text_i[:TARGET_CHARS], cands[a]["id"], cands[a]["text"][-CONTEXT_CHARS:],
                  cands[c]["id"], cands[c]["text"][-CONTEXT_CHARS:], float(sims[a]), float(sims[c]))


# ----------------------------------------------------------------------------------------------- scoring


def triple_tokens(scorer: Any, t: Triple) -> dict[str, list[int]]:
    """The three scored sequences of a triple (``related``, ``unrelated``, ``none``) and ``target`` (b)."""
    from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS

    bos, eos = SPECIAL_IDS[BOS], SPECIAL_IDS[EOS]
    width = scorer.max_length
    if width < 4:
        raise ValueError(f"context gain needs a model window of >= 4 tokens, got max_seq_len {width}")
    n = min(TARGET_TOKENS, (width - 2) // 2)
    b = scorer.encode(t.target, special=False)[:n]
    if not b:
        raise ValueError(f"document {t.target_id}: no tokens to score")
    a = [*scorer.encode(t.related, special=False), eos]
    c = [*scorer.encode(t.unrelated, special=False), eos]
    m = min(width - 2 - len(b), len(a), len(c))
    return {"target": b, "related": [bos, *a[-m:], bos, *b], "unrelated": [bos, *c[-m:], bos, *b],
            "none": [bos, *b], "context_tokens": [m]}


def target_bits(model: Any, device: Any, seqs: Sequence[list[int]], n_scored: Sequence[int]) -> np.ndarray:
    """Summed bits (-log2 p) of the last ``n_scored[i]`` tokens of each sequence, each predicted from the
    tokens before it (right-padded batches of a causal model; padding comes after every scored token)."""
    import torch
    import torch.nn.functional as F

    from kiln.tokenizer.special import PAD, SPECIAL_IDS

    out = np.zeros(len(seqs), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(seqs), BATCH_ROWS):
            part = seqs[s:s + BATCH_ROWS]
            width = max(len(q) for q in part) - 1
            tokens = torch.full((len(part), width), SPECIAL_IDS[PAD], dtype=torch.long)
            for r, q in enumerate(part):
                tokens[r, :len(q) - 1] = torch.tensor(q[:-1])
            logp = F.log_softmax(model(tokens.to(device)).float(), dim=-1)
            for r, q in enumerate(part):
                k = n_scored[s + r]
                tgt = torch.tensor(q[-k:], device=logp.device)
                lp = logp[r, len(q) - 1 - k:len(q) - 1].gather(1, tgt[:, None])
                out[s + r] = -float(lp.sum()) / math.log(2)
    model.train(was_training)
    return out


def ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% interval of ``sum(num) / sum(den)`` (resampling items)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    draws = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def score_context_gain(scorer: Any, ts: ContextGainSet, token_bytes: np.ndarray,
                       seed: int = 0) -> tuple[dict, list[dict]]:
    """``(result, per-triple rows)``: ``bpb_related``, ``bpb_unrelated``, ``bpb_none``, ``gain`` and its
    interval ``gain_ci``, ``n_triples`` (see the module docstring)."""
    if not ts.triples:
        raise ValueError(f"task {ts.name}: no triples to score")
    toks = [triple_tokens(scorer, t) for t in ts.triples]
    n_b = [len(x["target"]) for x in toks]
    tb = np.asarray(token_bytes)
    nbytes = np.array([float(tb[x["target"]].sum()) for x in toks])
    if np.any(nbytes <= 0):
        bad = ts.triples[int(np.flatnonzero(nbytes <= 0)[0])].target_id
        raise ValueError(f"task {ts.name}: document {bad} has no bytes in its scored tokens")
    bits = {k: target_bits(scorer.model, scorer.device, [x[k] for x in toks], n_b)
            for k in ("related", "unrelated", "none")}
    total = float(nbytes.sum())
    bpb = {k: float(v.sum() / total) for k, v in bits.items()}
    res = {"kind": KIND, "bpb_related": bpb["related"], "bpb_unrelated": bpb["unrelated"], "bpb_none": bpb["none"],
           "gain": bpb["unrelated"] - bpb["related"],
           "gain_ci": ratio_ci(bits["unrelated"] - bits["related"], nbytes, seed=seed),
           "gain_vs_none": bpb["none"] - bpb["related"],
           "n_triples": len(toks), "n_bytes": int(total), "target_tokens": float(np.mean(n_b)),
           "context_tokens": float(np.mean([x["context_tokens"][0] for x in toks])),
           "cos_related": float(np.mean([t.cos_related for t in ts.triples])),
           "cos_unrelated": float(np.mean([t.cos_unrelated for t in ts.triples])),
           **{k: ts.info[k] for k in ("same_group_related", "same_group_unrelated") if k in ts.info}}  # fmt: skip
    rows = [{"target": t.target_id, "related": t.related_id, "unrelated": t.unrelated_id,
             "cos_related": t.cos_related, "cos_unrelated": t.cos_unrelated, "bytes": float(nbytes[i]),
             "tokens": n_b[i], "context_tokens": toks[i]["context_tokens"][0],
             **{f"bits_{k}": float(v[i]) for k, v in bits.items()}} for i, t in enumerate(ts.triples)]  # fmt: skip
    return res, rows


def summary_line(key: str, r: dict) -> str:
    """One log / CLI line of a context-gain result."""
    lo, hi = r["gain_ci"]
    return (f"task {key}: gain {r['gain']:+.4f} bpb [{lo:+.4f}, {hi:+.4f}] (related {r['bpb_related']:.4f}, "
            f"unrelated {r['bpb_unrelated']:.4f}, none {r['bpb_none']:.4f}; {r['n_triples']} triples)")
