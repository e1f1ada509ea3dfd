"""``attention_influence``: AttentionInfluence as a document scorer (Hua et al. 2025, "AttentionInfluence: Adopting
Attention Head Influence for Weak-to-Strong Pretraining Data Selection", arXiv 2505.07293).

A per-document scorer (``per_doc=True``: shard by shard through ``corpus.executor``). ``setup`` loads the
reference model (a kiln checkpoint + tokenizer, :class:`kiln.corpus.learned.refmodel.ReferenceModel`) and takes
the heads to mask: ``heads`` if given, else the top ``top_fraction`` (at least one) of heads ranked by
retrieval-head detection on ``n_prompts`` synthetic key-value prompts (``detector: kv``) or by the induction score
on repeated random spans of up to 128 tokens (``detector: induction``, for models whose context is too short for a
key-value prompt).
The prompts come from ``seed`` only, so every task ranks the same heads; the ranking is written to
``<column>_heads.json`` in the corpus folder and reused by later tasks and reruns with the same model and settings.
``score`` writes (L_masked - L_base) / L_base per document (:mod:`kiln.corpus.selection.attention_influence`).

Higher = the document leans more on retrieval heads. The paper ranks within a domain and keeps the top 20%:
``{step: select, field: attention_influence, keep_fraction: 0.2, per_source: true}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kiln.corpus.learned.params import ReferenceModelFields
from kiln.corpus.scoring.base import ScorerParams, scorer_step
from kiln.corpus.steps.base import Doc, StepContext
from kiln.section import INPUT_FILE

INDUCTION_PERIOD = 128  # tokens of the repeated span of the induction detector (less when the context is shorter)


class AttentionInfluenceParams(ScorerParams, ReferenceModelFields):
    step: Literal["attention_influence"] = "attention_influence"
    heads: list[tuple[int, int]] | None = Field(None, description="[[layer, head], ...] to mask; None = detect")
    top_fraction: float = Field(0.05, gt=0.0, le=1.0, description="share of all heads masked (at least one)")
    detector: Literal["kv", "induction"] = Field("kv", description="kv: key-value retrieval prompts (the paper); "
                                                                   "induction: repeated random spans")
    n_prompts: int = Field(800, ge=1, description="detection prompts (sequences for the induction detector)")
    n_pairs: int = Field(32, ge=1, description="key-value pairs per prompt at most (fewer when over max_seq_len)")
    n_demos: int = Field(3, ge=0, description="demonstrations per prompt (the paper: 3)")
    instruction: bool = Field(True, description="start each prompt with a one-line instruction")
    key_chars: int = Field(32, ge=1, description="characters of each random alphanumeric key")
    max_value_tokens: int = Field(30, ge=1, description="tokens of each value at most")
    values_file: str | None = Field(None, description="text file, one value (e.g. a sentence) per line; default: "
                                                      "random words of the tokenizer's vocabulary",
                                        json_schema_extra=INPUT_FILE)
    max_tokens: int = Field(1024, ge=2, description="tokens per document scored (from its start)")
    batch_size: int = Field(16, ge=1, description="model windows per forward pass")
    seed: int = Field(0, description="seed of the detection prompts")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while scoring (None = unchanged)")


def _values(params: AttentionInfluenceParams, ctx: StepContext) -> list[str] | None:
    if params.values_file is None:
        return None
    path = ctx.resolve(params.values_file)
    if not path.is_file():
        raise FileNotFoundError(f"{ctx.step or params.step}: values_file {path} does not exist (expected a text file, "
                                "one value per line)")
    values = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not values:
        raise ValueError(f"{ctx.step or params.step}: values_file {path} has no non-empty line")
    return values


def _cache_key(params: AttentionInfluenceParams, checkpoint: Path, values: list[str] | None) -> str:
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(checkpoint.glob("*.safetensors*"))]
    fields = ("detector", "n_prompts", "n_pairs", "n_demos", "instruction", "key_chars", "max_value_tokens", "seed")
    blob = json.dumps([str(checkpoint.resolve()), stats, {k: getattr(params, k) for k in fields}, values])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def head_scores(ref: Any, params: AttentionInfluenceParams, values: list[str] | None) -> Any:
    """(n_layer, n_head) detection scores of the reference model (see the module docstring)."""
    from kiln.corpus.selection import attention_influence as ai
    from kiln.tokenizer.special import BOS, SPECIAL_TOKENS

    tok = ref.tokenizer
    bos = tok.token_to_id(BOS)
    if params.detector == "kv":
        prompts = ai.build_kv_prompts(tok, params.n_prompts, ref.max_seq_len, seed=params.seed, values=values,
                                      n_pairs=params.n_pairs, n_demos=params.n_demos, key_chars=params.key_chars,
                                      max_value_tokens=params.max_value_tokens, bos_id=bos,
                                      instruction=params.instruction)
        return ai.retrieval_head_scores(ref.model, prompts)
    period = min(INDUCTION_PERIOD, (ref.max_seq_len - 1) // 2)
    ids = range(len(SPECIAL_TOKENS), tok.get_vocab_size())
    return ai.induction_head_scores(ref.model, ai.repeated_sequences(params.n_prompts, period, ids, params.seed, bos),
                                    period)


def attention_influence_setup(params: AttentionInfluenceParams, ctx: StepContext, docs: list[Doc]) -> Any:
    import torch

    from kiln.atomic import write_json
    from kiln.corpus.learned.refmodel import ReferenceModel
    from kiln.corpus.selection.attention_influence import n_top_heads, rank_heads

    ref = ReferenceModel.load(ctx.resolve(params.checkpoint), ctx.resolve(params.tokenizer) if params.tokenizer
                              else None)
    cfg = ref.model.config
    if params.heads is not None:
        bad = [h for h in params.heads if not (0 <= h[0] < cfg.n_layer and 0 <= h[1] < cfg.n_head)]
        if not params.heads or bad:
            raise ValueError(f"{ctx.step or params.step}: heads {bad or '[]'} must be a non-empty list of "
                             f"[layer, head] with layer < n_layer ({cfg.n_layer}) and head < n_head ({cfg.n_head})")
        return ref, [tuple(h) for h in params.heads]
    values = _values(params, ctx)
    key = _cache_key(params, ref.checkpoint, values)
    cache = ctx.out_dir / f"{params.column}_heads.json" if ctx.out_dir is not None else None
    ranked = None
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            ranked = [tuple(h) for h in saved["ranked"]]
    if ranked is None:
        before = torch.get_num_threads()
        if params.threads:
            torch.set_num_threads(params.threads)
        try:
            scores = head_scores(ref, params, values)
        finally:
            torch.set_num_threads(before)
        ranked = rank_heads(scores)
        if cache is not None:
            write_json(cache, {"key": key, "checkpoint": str(ref.checkpoint), "detector": params.detector,
                               "ranked": [list(h) for h in ranked],
                               "scores": [round(float(scores[h]), 6) for h in ranked]})
    return ref, ranked[: n_top_heads(cfg.n_layer * cfg.n_head, params.top_fraction)]


def attention_influence_score(state: Any, docs: list[Doc], params: AttentionInfluenceParams, ctx: StepContext) -> Any:
    import torch

    from kiln.corpus.selection.attention_influence import influence_scores
    from kiln.tokenizer.special import PAD

    ref, heads = state
    before = torch.get_num_threads()
    if params.threads:
        torch.set_num_threads(params.threads)
    try:
        windows = [ref.windows(d["text"], params.max_tokens) for d in docs]
        return influence_scores(ref.model, windows, heads, params.batch_size, int(ref.tokenizer.token_to_id(PAD) or 0))
    finally:
        torch.set_num_threads(before)


STEPS = [scorer_step(AttentionInfluenceParams, attention_influence_setup, attention_influence_score, per_doc=True)]
