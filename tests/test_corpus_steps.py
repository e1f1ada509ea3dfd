"""corpus.steps: recipe validation, on_error, removal records, MinHash recall, offline run."""

from __future__ import annotations

import random
import socket

import pyarrow.parquet as pq
import pytest

from kiln.corpus.pipeline import curate, run_steps
from kiln.corpus.steps.base import StepContext, StepError
from kiln.corpus.steps.heuristics import BadWordsParams
from kiln.corpus.steps.minhash import MinHashParams, near_duplicate_pairs
from kiln.recipe import CorpusConfig, RecipeError, load_recipe

PROSE = ("The committee met on a quiet morning to review the plans for the new library, and after a long "
         "discussion the members agreed that the reading rooms should face the river. ")


def _docs(n: int, seed: int = 0, words: int = 200) -> list[dict]:
    r = random.Random(seed)
    vocab = PROSE.replace(",", "").replace(".", "").split() + [f"term{i}" for i in range(3000)]
    return [{"id": f"d{i}", "source": "syn", "text": " ".join(r.choice(vocab) for _ in range(words)) + "."}
            for i in range(n)]


def test_bad_step_params_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match=r"corpus\.steps\.1\.min_doc_words: Input should be greater than 0"):
        load_recipe("demo", ["corpus.steps=[{step: empty}, {step: gopher_quality, min_doc_words: 0}]"])
    with pytest.raises(RecipeError, match=r"corpus\.steps\.0"):
        load_recipe("demo", ["corpus.steps=[{step: no_such_step}]"])


def test_yi_cascade_recipe_loads() -> None:
    steps = [s.step for s in load_recipe("yi-cascade").corpus.steps]
    assert steps[-3:] == ["exact_dedup", "minhash", "subdoc_dedup"]


def test_on_error_stop_names_step_and_document() -> None:
    docs = _docs(3) + [{"id": "broken", "source": "syn", "text": None}]
    cfg = CorpusConfig(steps=[{"step": "ratios", "max_digit_char_ratio": None}])
    with pytest.raises(StepError, match="'ratios' failed on document 'broken'"):
        curate(docs, cfg, StepContext(on_error="stop"))
    ctx = StepContext(on_error="skip")
    kept, reps = curate(docs, cfg.model_copy(update={"on_error": "skip"}), ctx)
    assert [d["id"] for d in kept] == ["d0", "d1", "d2"]
    assert reps[0].errors == 1 and ctx.removed[0].id == "broken" and ctx.removed[0].reason.startswith("error:")


def test_bad_words_inverse_filter_keeps_the_complement() -> None:
    docs = [{"id": "clean", "text": PROSE}, {"id": "flagged", "text": PROSE + " porn porn porn xxx"}]
    kept, _ = run_steps(docs, [BadWordsParams(max_ratio=0.05)], StepContext())
    inv, _ = run_steps(docs, [BadWordsParams(max_ratio=0.05, invert=True)], StepContext())
    assert [d["id"] for d in kept] == ["clean"] and [d["id"] for d in inv] == ["flagged"]


def test_minhash_planted_near_duplicates_recall_and_fpr() -> None:
    r = random.Random(1)
    base = _docs(600, seed=2, words=250)
    dups = []
    for j in range(60):
        w = base[j]["text"].split()
        for k in r.sample(range(len(w)), len(w) // 20):  # ~5% of words edited
            w[k] = f"edit{r.randrange(10**6)}"
        dups.append({"id": f"nd{j}", "text": " ".join(w)})
    pairs = near_duplicate_pairs(base + dups, MinHashParams())
    removed = {i for _, i in pairs}
    recall = sum(600 + j in removed for j in range(60)) / 60
    fpr = sum(i < 600 for i in removed) / 600
    assert recall >= 0.95 and fpr <= 0.01, (recall, fpr)


def test_default_and_cascade_pipelines_run_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def refuse(*_a, **_k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    docs = _docs(40) + [{"id": "dup", "source": "syn", "text": _docs(1)[0]["text"]}]
    kept, reps = curate(docs, CorpusConfig(min_chars=10), StepContext())
    assert [r.step for r in reps] == ["normalize", "empty", "length", "dedup"] and len(kept) == 40
    prose = [{"id": f"p{i}", "source": "syn", "text": (PROSE * 4) + f" Item {i} was noted."} for i in range(5)]
    cfg = load_recipe("yi-cascade").corpus
    ctx = StepContext(cache_dir=tmp_path)
    kept, reps = curate(prose + [{"id": "junk", "source": "syn", "text": "@@ ## $$ %% " * 60}], cfg, ctx)
    assert "junk" in {r.id for r in ctx.removed}
    assert {r.step for r in reps} >= {"language", "minhash", "subdoc_dedup"}


def test_corpus_stage_writes_removed_parquet(tmp_path) -> None:
    from kiln.corpus.stage import build_corpus

    src = tmp_path / "in.jsonl"
    import json

    rows = [{"text": PROSE * 3}, {"text": PROSE * 3}, {"text": "short"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CorpusConfig(sources=[{"kind": "jsonl", "path": str(src)}], min_chars=50, val_fraction=0.0)
    build_corpus(cfg, tmp_path / "corpus")
    table = pq.read_table(tmp_path / "corpus" / "removed.parquet").to_pylist()
    assert [(r["id"], r["step"]) for r in table] == [("in/3", "length"), ("in/2", "dedup")]


def _planted(n: int, n_dups: int) -> list[dict]:
    """``n`` random documents, then ``n_dups`` copies of the first ones with ~5% of words edited, an exact
    copy, and two documents with no words (different symbols): 5-shingle Jaccard ~0.6 for the edited pairs."""
    r = random.Random(1)
    base = _docs(n, seed=2, words=250)
    dups = []
    for j in range(n_dups):
        w = base[j]["text"].split()
        for k in r.sample(range(len(w)), len(w) // 20):
            w[k] = f"edit{r.randrange(10**6)}"
        dups.append({"id": f"nd{j}", "text": " ".join(w)})
    extra = [{"id": "copy", "text": base[5]["text"]}, {"id": "sym1", "text": "@@ ##"}, {"id": "sym2", "text": "%% !!"}]
    return base + dups + extra


def test_minhash_datatrove_backend_keeps_what_numpy_keeps() -> None:
    """Issue 12.5: ``backend: datatrove`` (datatrove's MinHash stages) runs offline and keeps the same set as
    the numpy backend on planted near-duplicates, with the same "near duplicate of" (earliest) documents."""
    docs = _planted(300, 40)
    ids = {}
    for backend in ("numpy", "datatrove"):
        ctx = StepContext()
        kept, _ = run_steps(docs, [MinHashParams(backend=backend)], ctx)
        ids[backend] = ([d["id"] for d in kept], sorted((r.id, r.reason) for r in ctx.removed))
    assert ids["datatrove"] == ids["numpy"]
    removed = dict(ids["numpy"][1])
    assert len(removed) == 41 and removed["nd7"] == "near duplicate of d7" and removed["copy"] == "near duplicate of d5"
    assert {"sym1", "sym2"} <= set(ids["datatrove"][0])


def test_minhash_datatrove_backend_refuses_verify_threshold() -> None:
    with pytest.raises(RecipeError, match=r"corpus\.steps\.0.*verify_threshold: not supported with backend"):
        load_recipe("demo", ["corpus.steps=[{step: minhash, backend: datatrove, verify_threshold: 0.5}]"])
