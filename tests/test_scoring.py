"""The scorer interface (kiln.corpus.scoring.base) and the ``select`` step (kiln.corpus.scoring.select)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from kiln.corpus.scoring.base import ScorerParams, no_setup, run_scorer
from kiln.corpus.scoring.builtin import FastTextScoreParams, ToxicityScoreParams
from kiln.corpus.scoring.select import SelectParams, keep_mass, run_select
from kiln.corpus.steps.base import StepContext, StepError
from kiln.corpus.steps.registry import REGISTRY
from kiln.recipe import CorpusConfig


def _docs(n: int = 40, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"d{i:03d}", "text": "x" * int(rng.integers(20, 400)), "source": "ab"[i % 2],
             "s": float(rng.normal())} for i in range(n)]


def _select(docs: list[dict], **kw) -> tuple[list[dict], dict]:
    ctx = StepContext(step="select")
    out, rep = run_select(docs, SelectParams(field="s", **kw), ctx)
    return out, {"rep": rep, "removed": ctx.removed}


@pytest.mark.parametrize("fraction", [0.1, 0.37, 0.5, 0.9])
def test_keep_fraction_keeps_that_share_of_characters_within_one_document(fraction: float) -> None:
    docs = _docs()
    out, _ = _select(docs, keep_fraction=fraction)
    total = sum(len(d["text"]) for d in docs)
    kept = sum(len(d["text"]) for d in out)
    longest = max(len(d["text"]) for d in docs)
    assert fraction * total <= kept < fraction * total + longest  # the smallest prefix reaching the share
    cut = min(d["s"] for d in out)
    assert all(d["s"] < cut for d in docs if d not in out)  # the highest scores, nothing skipped
    assert [d["id"] for d in out] == [d["id"] for d in docs if d in out]  # corpus order kept


def test_keep_low_keep_docs_threshold_band_and_inverse() -> None:
    docs = _docs()
    s = np.array([d["s"] for d in docs])
    low, _ = _select(docs, keep_docs=5, keep="low")
    assert sorted(d["s"] for d in low) == sorted(s)[:5]
    above, _ = _select(docs, threshold=0.0)
    assert {d["id"] for d in above} == {d["id"] for d in docs if d["s"] >= 0}
    band, _ = _select(docs, band=(25, 75))
    lo, hi = np.percentile(s, [25, 75])
    assert {d["id"] for d in band} == {d["id"] for d in docs if lo <= d["s"] <= hi}
    inv, info = _select(docs, threshold=0.0, inverse=True)
    assert {d["id"] for d in inv} == {d["id"] for d in docs} - {d["id"] for d in above}
    assert info["rep"].selection["rule"] == "not s >= 0"
    assert all(r.reason.startswith("s ") for r in info["removed"])


def test_per_source_cuts_each_source_and_apply_to_leaves_others_alone() -> None:
    docs = _docs()
    out, info = _select(docs, keep_docs=3, per_source=True)
    assert sorted(d["source"] for d in out) == ["a"] * 3 + ["b"] * 3
    assert set(info["rep"].selection["cuts"]) == {"a", "b"}
    only_a, _ = _select(docs, keep_docs=3, apply_to=["a"])
    assert sum(d["source"] == "a" for d in only_a) == 3 and sum(d["source"] == "b" for d in only_a) == 20


def test_missing_scores_follow_missing_and_ties_do_not_favour_position() -> None:
    docs = _docs()
    docs[0] = {**docs[0], "s": None}
    kept, _ = _select(docs, threshold=-99.0)
    dropped, info = _select(docs, threshold=-99.0, missing="remove")
    assert docs[0] in kept and docs[0] not in dropped and info["removed"][0].reason == "no s score"
    tied = [{"id": f"t{i}", "text": "y" * 10, "source": "a", "s": 1.0} for i in range(200)]
    first_half = sum(int(d["id"][1:]) < 100 for d in _select(tied, keep_docs=100)[0])
    assert 30 < first_half < 70  # ties are drawn by a hash of the id, not taken from the front


def test_keep_mass_cut_score_and_rule_validation() -> None:
    mask, cut = keep_mass(np.array([3.0, 1.0, 2.0]), np.array([10, 10, 10]), np.zeros(3), 0.5)
    assert mask.tolist() == [True, False, True] and cut == 2.0
    with pytest.raises(ValidationError, match="exactly one of"):
        SelectParams(field="s", keep_fraction=0.5, threshold=1.0)
    with pytest.raises(ValidationError, match="band"):
        SelectParams(field="s", band=(80, 20))
    with pytest.raises(ValidationError, match="field"):
        CorpusConfig.model_validate({"steps": [{"step": "select", "keep_docs": 3}]})


class _Params(ScorerParams):
    step: str = "length_score"


def _length_score(_, docs, params, ctx) -> np.ndarray:
    if any("BAD" in d["text"] for d in docs):
        raise RuntimeError("cannot score this")
    return np.array([len(d["text"]) for d in docs], dtype=float)


def test_scorer_writes_the_column_in_batches_and_isolates_a_failing_document() -> None:
    docs = _docs(10)
    docs[3] = {**docs[3], "text": "BAD " + docs[3]["text"]}
    params = _Params(batch_docs=4, field="len", apply_to=["a", "b"])
    ctx = StepContext(step="length_score", on_error="skip")
    out, rep = run_scorer(docs, params, ctx, no_setup, _length_score)
    assert [d["id"] for d in out] == [d["id"] for i, d in enumerate(docs) if i != 3]
    assert all(d["len"] == len(d["text"]) for d in out)
    assert ctx.removed[0].id == docs[3]["id"] and "cannot score this" in ctx.removed[0].reason
    assert rep.scores["n"] == 9 and rep.scores["min"] == min(len(d["text"]) for d in out)
    with pytest.raises(StepError, match=docs[3]["id"]):
        run_scorer(docs, params, StepContext(step="length_score"), no_setup, _length_score)
    only_a, _ = run_scorer(docs[:3], _Params(apply_to=["a"]), StepContext(), no_setup, _length_score)
    assert [d.get("length_score") is None for d in only_a] == [False, True, False]


def test_random_score_is_a_seeded_uniform_draw_by_id() -> None:
    from kiln.corpus.scoring.builtin import RandomScoreParams, random_score

    docs = _docs(400)
    a = random_score(None, docs, RandomScoreParams(), StepContext())
    assert np.array_equal(a[::-1], random_score(None, docs[::-1], RandomScoreParams(), StepContext()))
    assert 0.4 < a.mean() < 0.6 and a.min() >= 0 and a.max() < 1
    b = random_score(None, docs, RandomScoreParams(seed=1), StepContext())
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.2


def test_builtin_scorers_are_registered_with_their_streaming_kind() -> None:
    assert REGISTRY["toxicity_score"].per_doc and REGISTRY["perplexity_score"].per_doc
    assert not REGISTRY["fasttext_score"].per_doc and REGISTRY["select"].two_pass is not None
    assert ToxicityScoreParams().column == "toxicity_score"
    assert ToxicityScoreParams(name="tox2").column == "tox2"
    with pytest.raises(ValidationError):
        FastTextScoreParams(positive=[], negative=[])
