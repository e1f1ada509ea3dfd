"""The ``plant`` step: junk and toxic documents planted deterministically, recorded in a field and plant.json."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from kiln.corpus.assets import read_word_list, resolve
from kiln.corpus.junk import GARBLED_KINDS, garbled
from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.heuristics import bad_word_ratio
from kiln.corpus.steps.plant import PlantParams, insert_words, run_plant
from tests.synthetic import sentence


def pool(n: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{src}/d{i}", "text": "\n".join(sentence(rng) for _ in range(rng.randint(8, 30))),
             "source": src, "edition": "modern" if i % 3 else "folio"}
            for i in range(n) for src in (("a",) if i % 2 else ("b",))]


def test_counts_fields_and_ids(tmp_path):
    docs = pool(200)
    params = PlantParams(junk_fraction=0.15, toxic_fraction=0.1, toxic_rate=0.03, seed=1)
    out, rep = run_plant(docs, params, StepContext(out_dir=tmp_path))
    planted = Counter(d["planted"] for d in out)
    assert len(out) == 200 + 30 and rep.docs_in == 200 and rep.docs_out == 230
    assert planted["toxic"] == 20 and rep.docs_changed == 20 and planted[None] == 180
    assert {k: v for k, v in planted.items() if k and k.startswith("junk:")} == {
        f"junk:{k}": 5 for k in GARBLED_KINDS}
    by_id = {d["id"]: d for d in out}
    for doc in docs:  # every input document is still there under its id, with its metadata
        new = by_id[doc["id"]]
        assert new["source"] == doc["source"] and new["edition"] == doc["edition"]
        assert (new["text"] == doc["text"]) == (new["planted"] is None)
    listed = read_word_list(resolve("badwords_en"))
    for doc in out:
        if doc["planted"] == "toxic":
            assert 0.015 <= bad_word_ratio(doc["text"], listed) <= 0.06
        elif doc["planted"] is None:
            assert bad_word_ratio(doc["text"], listed) == 0
        else:
            kind = doc["planted"].split(":", 1)[1]
            assert doc["source"] == "junk" and doc["id"].startswith(f"plant/junk/{kind}/")
    assert [d["id"] for d in out if d["source"] != "junk"] == [d["id"] for d in docs]  # input order kept
    junk_at = [i for i, d in enumerate(out) if d["source"] == "junk"]
    assert junk_at[0] < 60 and junk_at[-1] > 170  # interleaved, not appended
    record = json.loads((tmp_path / "plant.json").read_text())
    assert record["toxic_docs"] == 20 and sum(record["junk"].values()) == 30
    assert set(record["toxic_ids"]) == {d["id"] for d in out if d["planted"] == "toxic"}


def test_deterministic_by_seed_and_independent_of_step_position():
    docs = pool(120)
    params = PlantParams(seed=3)
    a, _ = run_plant(docs, params, StepContext(seed=0).for_step("plant", 2))
    b, _ = run_plant(docs, params, StepContext(seed=9).for_step("plant", 5))
    c, _ = run_plant(docs, PlantParams(seed=4), StepContext())
    assert a == b
    assert a != c
    assert {d["id"] for d in a if d["planted"] == "toxic"} != {d["id"] for d in c if d["planted"] == "toxic"}


def test_planted_documents_are_not_the_validation_split():
    """The plant draws are salted: the split draw (same seed) must not pick the toxic documents."""
    from kiln.corpus.clean import split_score

    docs = pool(400)
    out, _ = run_plant(docs, PlantParams(junk_fraction=0, toxic_fraction=0.1, seed=0), StepContext())
    val = [d for d in out if split_score(d["id"], 0) < 0.1]
    assert len(val) >= 20 and sum(d["planted"] == "toxic" for d in val) < 0.5 * len(val)


def test_toxic_selection_is_per_document_and_apply_to_limits_it():
    docs = pool(200)
    out, _ = run_plant(docs, PlantParams(junk_fraction=0, toxic_fraction=0.2, apply_to=["a"]), StepContext())
    toxic = [d for d in out if d["planted"] == "toxic"]
    assert len(out) == 200 and len(toxic) == 20 and {d["source"] for d in toxic} == {"a"}
    # a document's draw depends on its id only: dropping other documents keeps it toxic at the same fraction
    sub, _ = run_plant(docs[:100], PlantParams(junk_fraction=0, toxic_fraction=1.0), StepContext())
    assert all(d["planted"] == "toxic" for d in sub)


def test_insert_words_rate_and_word_salad_uses_corpus_words():
    rng = random.Random(0)
    text = " ".join(["word"] * 200)
    new, k = insert_words(text, ["xxx"], 0.05, rng)
    assert k == 10 and new.split().count("xxx") == 10 and new.count("word") == 200
    assert insert_words("?!", ["xxx"], 0.5, rng) == ("?!", 0)
    vocab = ["alpha", "beta", "gamma"]
    salad = garbled("salad", random.Random(1), vocab)
    assert set(salad.split()) <= set(vocab)
    with pytest.raises(ValueError, match="unknown garbled kind"):
        garbled("nope", random.Random(1), vocab)


def test_recipe_validation_and_errors(tmp_path):
    from kiln.recipe import RecipeError, load_recipe

    recipe = load_recipe("demo", ["corpus.steps=[{step: exact_dedup}, {step: plant, junk_fraction: 0.2}]"])
    assert recipe.corpus.steps[1].junk_fraction == 0.2
    with pytest.raises(RecipeError, match="corpus.steps.0.toxic_rate"):
        load_recipe("demo", ["corpus.steps=[{step: plant, toxic_rate: 0}]"])
    with pytest.raises(RecipeError, match="junk_kinds"):
        load_recipe("demo", ["corpus.steps=[{step: plant, junk_kinds: [lava]}]"])
    docs = pool(20)
    out, _ = run_plant(docs, PlantParams(), StepContext())
    with pytest.raises(ValueError, match="listed twice"):
        run_plant(out, PlantParams(), StepContext())


def test_corpus_stage_with_a_planted_source(tmp_path):
    """The streaming corpus stage accepts documents of a source no reader produced (the funnel counts them)."""
    from kiln.corpus.stage import build_corpus, reference_corpus
    from kiln.recipe import load_recipe

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in pool(80)))
    recipe = load_recipe(None, [f"corpus.sources=[{{kind: jsonl, path: '{path}'}}]", "corpus.val_fraction=0.2",
                                "corpus.steps=[{step: exact_dedup}, {step: plant, junk_fraction: 0.25}]"])
    out = tmp_path / "corpus"
    build_corpus(recipe.corpus, out)
    funnel = json.loads((out / "funnel.json").read_text())
    junk = funnel["sources"]["junk"]
    assert junk["docs_read"] == 0 and junk["train_docs"] + junk["val_docs"] == 20
    assert funnel["steps"][-1]["docs_out"] == 100
    assert json.loads((out / "plant.json").read_text())["junk"]["soup"] == 4
    _, _, reference, _ = reference_corpus(recipe.corpus)  # the in-memory path counts the new source the same way
    assert reference["sources"]["junk"] == junk
