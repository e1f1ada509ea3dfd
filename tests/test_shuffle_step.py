"""The ``shuffle`` corpus step (kiln/corpus/steps/shuffle.py): a seeded permutation, independent of input order."""

from __future__ import annotations

import random

import pytest

from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.registry import REGISTRY
from kiln.corpus.steps.shuffle import ShuffleParams, run_shuffle


def _docs(n: int = 200) -> list[dict]:
    return [{"id": f"doc{i:04d}", "text": f"text {i}", "source": "s"} for i in range(n)]


def _ids(docs: list[dict]) -> list[str]:
    return [d["id"] for d in docs]


def test_shuffle_is_a_seeded_permutation():
    docs = _docs()
    out, rep = run_shuffle(docs, ShuffleParams(seed=3), StepContext(step="shuffle"))
    assert sorted(_ids(out)) == _ids(docs)  # nothing lost or repeated
    assert out[0] is docs[int(out[0]["id"][3:])]  # documents pass through unchanged
    assert rep.docs_in == rep.docs_out == 200 and rep.docs_removed == 0
    again, _ = run_shuffle(docs, ShuffleParams(seed=3), StepContext(step="shuffle"))
    assert _ids(again) == _ids(out)  # deterministic
    other, _ = run_shuffle(docs, ShuffleParams(seed=4), StepContext(step="shuffle"))
    assert _ids(other) != _ids(out)  # the seed matters
    # really mixed: far from input order (a random permutation of 200 keeps ~1 fixed point)
    assert sum(a == b for a, b in zip(_ids(out), _ids(docs), strict=True)) < 10
    assert rep.summary["moved"] > 190


def test_shuffle_does_not_depend_on_input_order():
    docs = _docs()
    mixed = docs[:]
    random.Random(0).shuffle(mixed)
    a, _ = run_shuffle(docs, ShuffleParams(seed=1), StepContext())
    b, _ = run_shuffle(mixed, ShuffleParams(seed=1), StepContext())
    c, _ = run_shuffle(list(reversed(docs)), ShuffleParams(seed=1), StepContext())
    assert _ids(a) == _ids(b) == _ids(c)
    # a subset keeps the relative order of its documents (the key is per document)
    sub, _ = run_shuffle(docs[::3], ShuffleParams(seed=1), StepContext())
    keep = set(_ids(docs[::3]))
    assert _ids(sub) == [i for i in _ids(a) if i in keep]


def test_shuffle_registered_and_checks_ids():
    assert REGISTRY["shuffle"].params is ShuffleParams and not REGISTRY["shuffle"].per_doc
    assert run_shuffle([], ShuffleParams(), StepContext())[0] == []
    with pytest.raises(ValueError, match="no id"):
        run_shuffle([{"text": "x"}], ShuffleParams(), StepContext(step="shuffle"))


def test_shuffle_in_a_recipe():
    from kiln.recipe import load_recipe

    r = load_recipe("demo", ["corpus.steps=[{step: normalize}, {step: shuffle, seed: 5}]"])
    assert r.corpus.steps[-1].step == "shuffle" and r.corpus.steps[-1].seed == 5
