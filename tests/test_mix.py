"""Mixing (per-source weights with repeat counts) and slicing by a metadata field (kiln.corpus.mix)."""

from __future__ import annotations

import json

import pytest

from kiln.corpus.mix import (
    MixParams,
    SliceParams,
    base_id,
    copy_counts,
    run_mix,
    run_slice,
    slice_steps,
    slice_values,
)
from kiln.corpus.steps.base import StepContext


def corpus() -> list[dict]:
    docs = [{"id": f"a{i}", "source": "a", "text": "x" * 10, "edition": "modern", "year": 1600 + i}
            for i in range(10)]
    docs += [{"id": f"b{i}", "source": "b", "text": "y" * 10, "edition": "folio", "year": 1623} for i in range(20)]
    docs += [{"id": "c0", "source": "c", "text": "z", "date": "2021-05-01"}]
    return docs


def test_weights_repeat_and_subsample_deterministically(tmp_path):
    docs = corpus()
    ctx = StepContext(step="mix")
    ctx.out_dir = tmp_path
    out, rep = run_mix(docs, MixParams(weights={"a": 2.0, "b": 0.5, "c": 0.0}), ctx)
    ids = [d["id"] for d in out]
    assert [i for i in ids if i.startswith("a")] == [x for i in range(10) for x in (f"a{i}", f"a{i}#r1")]
    assert sum(i.startswith("b") for i in ids) == 10 and "c0" not in ids
    assert len(set(ids)) == len(ids) and rep.docs_in == 31 and rep.docs_out == 30 and rep.docs_removed == 11
    assert {d["repeat"] for d in out if d["source"] == "a"} == {0, 1}
    assert all(d["repeat"] == 0 for d in out if d["source"] == "b")
    again, _ = run_mix(docs, MixParams(weights={"a": 2.0, "b": 0.5, "c": 0.0}), StepContext())
    assert again == out  # deterministic: the same half of b every time
    other, _ = run_mix(docs, MixParams(weights={"b": 0.5}, seed=1), StepContext())
    assert {d["id"] for d in other if d["source"] == "b"} != {d["id"] for d in out if d["source"] == "b"}
    summary = json.loads((tmp_path / "mix.json").read_text())["groups"]
    assert summary["a"] == {"weight": 2.0, "docs_in": 10, "docs_out": 20, "bytes_out": 200,
                            "repeat_counts": {"2": 10}}
    assert summary["b"]["repeat_counts"] == {"0": 10, "1": 10} and summary["c"]["docs_out"] == 0
    assert base_id("a3#r1") == "a3" and base_id("a3") == "a3"


def test_fractional_weights_and_grouping_by_metadata():
    counts = copy_counts([f"d{i}" for i in range(10)], 1.3, seed=0)
    assert sorted(counts) == [1] * 7 + [2] * 3
    assert copy_counts([f"d{i}" for i in range(4)], 3.0, seed=0) == [3, 3, 3, 3]
    out, _ = run_mix(corpus(), MixParams(by="edition", weights={"folio": 0.25}, default_weight=1.0,
                                         repeat_field=None), StepContext())
    assert sum(d.get("edition") == "folio" for d in out) == 5 and "repeat" not in out[0]
    with pytest.raises(ValueError, match="finite and >= 0"):
        MixParams(weights={"a": -1.0})


def test_slice_by_values_and_by_range():
    docs = corpus()
    folio, rep = run_slice(docs, SliceParams(field="edition", values=["folio"]), StepContext(step="slice"))
    assert len(folio) == 20 and rep.docs_removed == 11
    early, _ = run_slice(docs, SliceParams(field="year", start=1600, end=1605), StepContext())
    assert [d["id"] for d in early] == [f"a{i}" for i in range(5)]
    dated, _ = run_slice(docs, SliceParams(field="date", start="2021-01-01", end="2022-01-01"), StepContext())
    assert [d["id"] for d in dated] == ["c0"]
    with_missing, _ = run_slice(docs, SliceParams(field="date", values=["1999"], keep_missing=True), StepContext())
    assert len(with_missing) == 30
    with pytest.raises(ValueError, match="either `values`"):
        SliceParams(field="year", values=[1], start=1)


def test_slice_values_lists_each_value_and_slice_steps_validate():
    vals = slice_values(corpus(), "edition")
    assert [(v.value, v.docs, v.bytes) for v in vals] == [(None, 1, 1), ("folio", 20, 200), ("modern", 10, 100)]
    assert [v.value for v in slice_values(corpus(), "year")][:3] == [None, 1600, 1601]
    steps = slice_steps("edition", ["folio", "modern"])
    assert [SliceParams(**s).values for s in steps] == [["folio"], ["modern"]]


def test_steps_are_in_the_recipe():
    from kiln.recipe import load_recipe

    recipe = load_recipe("demo", ["corpus.steps=[{step: mix, weights: {shakespeare: 2.0}}, "
                                  "{step: slice, field: edition, values: [folio]}, {step: prox}]"])
    assert [s.step for s in recipe.corpus.steps] == ["mix", "slice", "prox"]


def test_mixed_copies_land_on_the_same_side_of_the_split():
    from kiln.corpus.clean import split_docs

    docs = [{"id": f"d{i}{suffix}", "text": "x"} for i in range(200) for suffix in ("", "#r1", "#r2")]
    train, val, _ = split_docs(docs, 0.2, seed=3)
    val_ids = {d["id"] for d in val}
    for i in range(200):
        sides = {f"d{i}{s}" in val_ids for s in ("", "#r1", "#r2")}
        assert len(sides) == 1


def test_a_half_weight_is_not_the_validation_split():
    """The mix draw is salted: with ``mix.seed == corpus.split_seed`` a weight of 0.2 must not keep exactly the
    documents the train/val split puts in validation (val_fraction 0.2), as an unsalted draw would."""
    from kiln.corpus.clean import split_score

    ids = [f"doc-{i}" for i in range(500)]
    kept = {i for i, n in zip(ids, copy_counts(ids, 0.2, seed=0), strict=True) if n}
    val = {i for i in ids if split_score(i, 0) < 0.2}
    assert len(kept) == 100 and 60 <= len(val) <= 140
    overlap = len(kept & val) / len(kept)
    assert 0.05 < overlap < 0.4, overlap  # independent draws share about 20%; the same draw would share ~100%
