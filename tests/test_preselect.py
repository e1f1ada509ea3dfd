"""PreSelect (kiln.corpus.selection.preselect): predictive strength, labels, the classifier, the 10% threshold.

The spec checks (shared/methods/data.md §3 (d)): synthetic predictive documents (loss falls as the reference
models get better) reach strength 1 far more often than random-loss documents (> 5x); the classifier trained on
the labels separates held-out documents of the two vocabularies (AUC > 0.9); ``select`` keeps 10% of the
characters to within one document. Fast tests stand in for the reference models with synthetic losses (a fake
``ReferenceModel``); the slow test runs the step on three checkpoints of a tiny trained kiln model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from kiln.corpus.scoring.rules import roc_auc
from kiln.corpus.scoring.select import SelectParams, run_select
from kiln.corpus.selection.preselect import (
    choose_labels,
    fit_preselect,
    predictive_strength,
    reference_quality,
    sample_documents,
)
from kiln.corpus.selection.preselect_steps import PreSelectParams
from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.registry import REGISTRY

# ------------------------------------------------------------------ synthetic documents and reference losses

SHARED = [f"the{i}" for i in range(40)]
VOCAB = {"pred": [f"sci{i}" for i in range(60)], "rand": [f"chat{i}" for i in range(60)]}


def _docs(n_per_kind: int, seed: int, prefix: str = "d") -> list[dict]:
    """Documents of two kinds: 'pred' words mostly from one vocabulary, 'rand' from another (plus shared words)."""
    rng = np.random.default_rng(seed)
    docs = []
    for k in range(2 * n_per_kind):
        kind = "pred" if k % 2 == 0 else "rand"
        n = int(rng.integers(30, 120))
        own = rng.random(n) < 0.6
        words = [VOCAB[kind][rng.integers(60)] if o else SHARED[rng.integers(40)] for o in own]
        docs.append({"id": f"{prefix}{k}", "text": " ".join(words), "source": "web", "kind": kind})
    return docs


def _losses(kind: str, n_models: int, rng: np.random.Generator, slope: float = 0.05, noise: float = 0.04,
            spread: float = 0.15) -> np.ndarray:
    """Bits per byte of one document under models ranked 0 (worst) .. n-1 (best).

    Predictive: falls by ``slope`` per rank, plus noise that can break the order. Random: noise only."""
    base = 1.5 + rng.random()
    if kind == "pred":
        return base - slope * np.arange(n_models) + rng.normal(0.0, noise, n_models)
    return base + rng.normal(0.0, spread, n_models)


class _FakeReference:
    """Stands in for a loaded ReferenceModel: bits per byte looked up from a table of synthetic losses."""

    def __init__(self, table: dict[str, np.ndarray], model: int) -> None:
        self.table, self.model = table, model

    def bits_per_byte(self, texts: list[str], max_tokens: int = 1024, batch_size: int = 16) -> np.ndarray:
        return np.array([self.table[t][self.model] for t in texts])


@pytest.fixture
def fake_references(monkeypatch):
    """Reference ``ref-<m>`` = model rank m; losses from ``table`` (text -> per-model losses), set by the test."""
    from kiln.corpus.learned import refmodel

    table: dict[str, np.ndarray] = {}
    monkeypatch.setattr(refmodel, "resolve_checkpoint", lambda p: Path(p))
    monkeypatch.setattr(refmodel, "resolve_tokenizer", lambda c, t: Path(c))
    monkeypatch.setattr(refmodel.ReferenceModel, "load",
                        classmethod(lambda cls, path, tok=None: _FakeReference(table, int(Path(path).name[4:]))))
    return table


def _fill(table: dict[str, np.ndarray], docs: list[dict], n_models: int, seed: int, **kw) -> None:
    rng = np.random.default_rng(seed)
    for d in docs:
        table[d["text"]] = _losses(d["kind"], n_models, rng, **kw)


def _params(n_models: int, **kw) -> PreSelectParams:
    refs = [{"checkpoint": f"ref-{m}", "score": 0.2 + 0.1 * m} for m in range(n_models)]
    return PreSelectParams(references=refs, **kw)


# ------------------------------------------------------------------ predictive strength


def test_strength_counts_ordered_pairs_and_skips_tied_models():
    quality = np.array([1.0, 2.0, 2.0])  # models 1 and 2 tie: that pair orders nothing
    losses = np.array([[3.0, 1.0, 1.0, np.nan],
                       [2.0, 1.0, 2.0, 1.0],
                       [4.0, 1.0, 0.5, 1.0]])
    got = predictive_strength(losses, quality)
    # doc 0: 1 beats 0 (2 < 3) yes, 2 beats 0 (4 < 3) no -> 1/2; doc 1: equal losses order nothing -> 0;
    # doc 2: 2 > 1 no, 0.5 < 1 yes -> 1/2; doc 3: a missing loss -> no strength
    assert got[:3].tolist() == [0.5, 0.0, 0.5] and np.isnan(got[3])
    with pytest.raises(ValueError, match="same downstream score"):
        predictive_strength(losses, np.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        predictive_strength(losses, np.array([1.0, 2.0]))


def test_predictive_documents_reach_strength_one_far_more_often():
    """Spec (d): 6 references (15 pairs); noisy predictive losses vs random losses."""
    rng = np.random.default_rng(0)
    quality = rng.permutation(6).astype(float)  # benchmark ranks, not in file order
    n = 2000
    pred = np.stack([_losses("pred", 6, rng) for _ in range(n)], axis=1)
    rand = np.stack([_losses("rand", 6, rng) for _ in range(n)], axis=1)
    order = np.argsort(np.argsort(quality))  # model i has rank order[i]
    s_pred = predictive_strength(pred[order], quality)
    s_rand = predictive_strength(rand[order], quality)
    rate_pred, rate_rand = float(np.mean(s_pred == 1.0)), float(np.mean(s_rand == 1.0))
    print(f"strength 1: predictive {rate_pred:.3f}, random {rate_rand:.4f}; mean strength {s_pred.mean():.3f} vs "
          f"{s_rand.mean():.3f}")
    assert 0.05 < rate_pred < 0.95  # the noise breaks some orders: the test is not trivially decided
    assert rate_pred > 5 * max(rate_rand, 1.0 / n)
    # the same losses with the benchmark ranking reversed: predictive documents lose their perfect score
    assert float(np.mean(predictive_strength(pred[order], -quality) == 1.0)) < rate_pred / 5


def test_labels_take_perfect_positives_and_lowest_negatives():
    strength = np.array([1.0, 0.2, 1.0, 0.6, 0.0, np.nan, 1.0, 0.2, 0.9])
    ids = [f"d{i}" for i in range(len(strength))]
    got = choose_labels(strength, ids, 1.0, min_positives=2, seed=0)
    assert got.positive.tolist() == [0, 2, 6]
    assert sorted(got.negative.tolist()) == [1, 4, 7]  # 0.0, 0.2, 0.2: the lowest three, never the NaN
    assert got.note is None
    few = choose_labels(np.array([1.0, 1.0, 1.0, 0.5]), ["a", "b", "c", "d"])
    assert few.negative.tolist() == [3] and "only 1 other" in (few.note or "")
    with pytest.raises(ValueError, match=r"only 3 of 8 scored documents.*min_positives: 5"):
        choose_labels(strength, ids, 1.0, min_positives=5)


def test_sample_is_seeded_and_order_independent():
    docs = [{"id": f"x{i}", "text": "t"} for i in range(50)]
    a = [d["id"] for d in sample_documents(docs, 10, seed=3)]
    b = [d["id"] for d in sample_documents(docs[::-1], 10, seed=3)]
    assert len(a) == 10 and sorted(a) == sorted(b)
    assert sorted(a) != sorted(d["id"] for d in sample_documents(docs, 10, seed=4))


# ------------------------------------------------------------------ the classifier and the step


def test_classifier_separates_heldout_vocabularies(fake_references):
    """Spec (d): trained on the strength labels of 400 documents, AUC > 0.9 on 200 unseen ones."""
    train, held = _docs(200, seed=1), _docs(100, seed=2, prefix="h")
    _fill(fake_references, train, 5, seed=3)
    fit = fit_preselect(train, _params(5, min_positives=20), StepContext(step="preselect"))
    assert fit.summary["positives"] >= 20 and fit.summary["negatives"] == fit.summary["positives"]
    scores = fit.score(held)
    kinds = np.array([d["kind"] for d in held])
    auc = roc_auc(scores[kinds == "pred"], scores[kinds == "rand"])
    print(f"held-out AUC {auc:.4f}; {fit.summary['positives']} positives; {fit.summary['strength_histogram']}")
    assert auc > 0.9


def test_step_writes_scores_artifacts_and_is_deterministic(fake_references, tmp_path):
    docs = _docs(150, seed=5)
    _fill(fake_references, docs, 4, seed=6)
    step = REGISTRY["preselect"]
    params = _params(4, sample_docs=200, min_positives=10, cross_fit=3, seed=1)
    runs = []
    for k in range(2):
        ctx = StepContext(step="preselect", out_dir=tmp_path / f"run{k}")
        out, rep = step.run(docs, params, ctx)
        runs.append(np.array([d["preselect"] for d in out]))
        summary = json.loads((tmp_path / f"run{k}" / "preselect.json").read_text())
        assert (tmp_path / f"run{k}" / "preselect.bin").is_file()
        rows = (tmp_path / f"run{k}" / "preselect_strength.jsonl").read_text().splitlines()
        assert len(out) == len(docs) and rep.docs_out == len(docs)  # a scorer removes nothing
    assert summary["sampled"] == 200 and len(rows) == 200 and summary["pairs"] == 6
    assert summary["heldout_auc"] > 0.9, summary
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.all((runs[0] >= 0) & (runs[0] <= 1))
    kinds = np.array([d["kind"] for d in docs])
    assert roc_auc(runs[0][kinds == "pred"], runs[0][kinds == "rand"]) > 0.9


def test_apply_to_limits_the_sample_and_the_scores(fake_references, tmp_path):
    docs = _docs(60, seed=9)
    other = [{**d, "id": f"o{k}", "source": "other"} for k, d in enumerate(_docs(10, seed=10))]
    _fill(fake_references, docs, 3, seed=11)  # no losses for `other`: loading one would fail
    params = _params(3, min_positives=5, apply_to=["web"])
    out, _ = REGISTRY["preselect"].run(docs + other, params, StepContext(step="preselect", out_dir=tmp_path))
    assert all(d["preselect"] is None for d in out if d["source"] == "other")
    assert all(d["preselect"] is not None for d in out if d["source"] == "web")
    assert json.loads((tmp_path / "preselect.json").read_text())["sampled"] == len(docs)


def test_too_few_positives_is_a_clear_error(fake_references):
    docs = _docs(20, seed=7)
    _fill(fake_references, docs, 6, seed=8, noise=0.5)  # noise swamps the slope: few perfect orders
    with pytest.raises(ValueError, match=r"preselect: only \d+ of 40 scored documents.*min_positives: 30"):
        fit_preselect(docs, _params(6, min_positives=30), StepContext(step="preselect"))


# ------------------------------------------------------------------ the 10% threshold (select)


def test_select_keeps_ten_percent_of_characters_within_one_document():
    rng = np.random.default_rng(11)
    docs = [{"id": f"s{i}", "text": "x" * int(rng.integers(50, 5000)), "source": "web",
             "preselect": float(rng.random())} for i in range(500)]
    out, rep = run_select(docs, SelectParams(field="preselect", keep_fraction=0.1), StepContext(step="select"))
    total = sum(len(d["text"]) for d in docs)
    kept = sum(len(d["text"]) for d in out)
    smallest_score = min(d["preselect"] for d in out)
    last = next(len(d["text"]) for d in out if d["preselect"] == smallest_score)
    assert kept >= 0.1 * total > kept - last  # the smallest prefix of the ranking reaching 10%
    assert all(d["preselect"] < smallest_score for d in docs if d not in out)  # the highest scores are kept
    assert rep.docs_removed == len(docs) - len(out)


# ------------------------------------------------------------------ bad input


def test_missing_reference_checkpoint_names_the_path(tmp_path):
    params = PreSelectParams(references=[{"checkpoint": str(tmp_path / "nope"), "score": 1.0},
                                         {"checkpoint": str(tmp_path / "nope2"), "score": 2.0}])
    with pytest.raises(FileNotFoundError, match=r"references\[0\].*nope"):
        fit_preselect([{"id": "a", "text": "t"}], params, StepContext(step="preselect"))


def test_params_need_two_references_and_a_ranking():
    with pytest.raises(ValidationError, match="at least 2"):
        PreSelectParams(references=[{"checkpoint": "a", "score": 1.0}])
    with pytest.raises(ValidationError, match="rank_by"):
        PreSelectParams(references=[{"checkpoint": "a", "score": 1.0}, {"checkpoint": "b"}])


def _fake_run(root: Path, steps: list[int], metrics: dict | None) -> Path:
    """A run folder with checkpoint configs, a tokenizer file and (optionally) eval/metrics.json."""
    for s in steps:
        (root / "train" / "checkpoints" / f"step-{s}").mkdir(parents=True)
        (root / "train" / "checkpoints" / f"step-{s}" / "config.json").write_text("{}")
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    if metrics is not None:
        (root / "eval").mkdir()
        (root / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_rank_by_reads_eval_metrics_and_names_what_is_missing(tmp_path):
    small = _fake_run(tmp_path / "small", [10], {"val_bpb": 1.9, "checkpoint": "x/step-10",
                                                 "tasks": {"cloze": {"acc": 0.4}}})
    large = _fake_run(tmp_path / "large", [10], {"val_bpb": 1.5, "tasks": {"cloze": {"acc": 0.6}}})
    ctx = StepContext(step="preselect")
    refs = [{"checkpoint": str(small)}, {"checkpoint": str(large)}]
    quality, _, _ = reference_quality(PreSelectParams(references=refs, rank_by="tasks/cloze/acc"), ctx)
    assert quality.tolist() == [0.4, 0.6]
    quality, _, _ = reference_quality(PreSelectParams(references=refs, rank_by="val_bpb", higher_is_better=False),
                                      ctx)
    assert quality.tolist() == [-1.9, -1.5]  # lower bpb = better = higher quality
    with pytest.raises(ValueError, match=r"has no number at rank_by 'tasks/qa/acc'.*tasks/cloze/acc"):
        reference_quality(PreSelectParams(references=refs, rank_by="tasks/qa/acc"), ctx)
    bare = _fake_run(tmp_path / "bare", [10], None)
    with pytest.raises(FileNotFoundError, match=r"references\[1\].*no eval/metrics.json"):
        reference_quality(PreSelectParams(references=[refs[0], {"checkpoint": str(bare)}], rank_by="val_bpb"), ctx)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        reference_quality(PreSelectParams(references=[refs[0], {"checkpoint": str(bare), "metrics": str(
            tmp_path / "missing.json")}], rank_by="val_bpb"), ctx)
    two = _fake_run(tmp_path / "two", [10, 20], {"val_bpb": 1.7, "checkpoint": "two/train/checkpoints/step-20"})
    early = {"checkpoint": str(two / "train" / "checkpoints" / "step-10")}
    with pytest.raises(ValueError, match="checkpoint step-10 but .* scores step-20"):
        reference_quality(PreSelectParams(references=[refs[0], early], rank_by="val_bpb"), ctx)


def test_classifier_follows_the_labels_not_the_vocabulary(fake_references):
    """Control for the AUC test: make the other vocabulary the predictive one and the ranking flips."""
    train, held = _docs(200, seed=1), _docs(100, seed=2, prefix="h")
    swapped = [{**d, "kind": "rand" if d["kind"] == "pred" else "pred"} for d in train]
    _fill(fake_references, swapped, 5, seed=3)
    fit = fit_preselect(train, _params(5, min_positives=20), StepContext(step="preselect"))
    scores = fit.score(held)
    kinds = np.array([d["kind"] for d in held])
    assert roc_auc(scores[kinds == "pred"], scores[kinds == "rand"]) < 0.1


def test_recipe_loads_with_preselect_and_select():
    from kiln.recipe import load_recipe

    recipe = load_recipe("preselect")
    steps = [s.step for s in recipe.corpus.steps]
    assert "preselect" in steps and steps.index("select") > steps.index("preselect")
    sel = recipe.corpus.steps[steps.index("select")]
    assert sel.field == "preselect" and sel.keep_fraction == 0.1


# ------------------------------------------------------------------ end to end (slow)


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """A tiny kiln model trained 30 steps on the synthetic sentence corpus, checkpoints at steps 10, 20, 30."""
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    root = tmp_path_factory.mktemp("preselect-ref")
    corpus = write_jsonl_corpus(root / "docs.jsonl", n_docs=60)
    overrides = [*tiny_overrides(corpus, steps=30), "generate.prompts=[]", "train.eval_every=30"]
    run = RunDir(root / "run")
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    ckpts = sorted((run.root / "train" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    assert len(ckpts) == 3
    return root, ckpts


def _pool(path: Path) -> Path:
    """60 documents like the references' training text (``good-``) and 60 of random characters (``junk-``)."""
    import random
    import string

    from tests.synthetic import sentence

    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 10
    rows = [{"id": f"good-{i}", "text": "\n".join(sentence(rng) for _ in range(rng.randint(4, 10)))}
            for i in range(60)]
    rows += [{"id": f"junk-{i}", "text": "".join(rng.choice(alphabet) for _ in range(rng.randint(200, 600)))}
             for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_end_to_end_on_kiln_checkpoints(three_checkpoints, tmp_path):
    """Checkpoints ranked by training step: in-domain text gets lower loss at every later step (predictive),
    random characters do not; the corpus stage keeps the in-domain text. Reversing the ranking selects the junk."""
    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides

    root, ckpts = three_checkpoints
    metrics = tmp_path / "metrics-30.json"
    metrics.write_text(json.dumps({"tasks": {"probe": {"acc": 0.7}}}))
    refs = (f"[{{checkpoint: '{ckpts[0]}', score: 0.3}}, {{checkpoint: '{ckpts[1]}', score: 0.5}}, "
            f"{{checkpoint: '{ckpts[2]}', metrics: '{metrics}'}}]")
    steps = (f"corpus.steps=[{{step: preselect, references: {refs}, rank_by: tasks/probe/acc, min_positives: 10, "
             "max_tokens: 256}, {step: select, field: preselect, keep_fraction: 0.3}]")
    pool = _pool(tmp_path / "pool.jsonl")
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", [*tiny_overrides(pool), "corpus.val_fraction=0.0", steps]), run,
                 until="corpus")
    out = run.stage("corpus")
    kept = [r for f in split_files(out, "train") for r in pq.read_table(f).to_pylist()]
    summary = json.loads((out / "preselect.json").read_text())
    good_texts = {json.loads(line)["text"] for line in pool.read_text().splitlines() if '"good-' in line}
    good = sum(r["text"] in good_texts for r in kept)
    print(f"kept {len(kept)} docs, {good} in-domain; {summary['positives']} positives; "
          f"bpb per reference {[round(r['mean_bpb'], 3) for r in summary['references']]}")
    assert (out / "preselect.bin").is_file() and summary["pairs"] == 3 and summary["sampled"] == 120
    assert all(0.0 <= r["preselect"] <= 1.0 for r in kept)
    assert len(kept) >= 5 and good / len(kept) > 0.9

    docs = [json.loads(line) for line in pool.read_text().splitlines()]
    params = PreSelectParams(references=[{"checkpoint": str(c), "score": -10.0 * k} for k, c in enumerate(ckpts)],
                             min_positives=10, max_tokens=256)
    scored, _ = REGISTRY["preselect"].run(docs, params, StepContext(step="preselect"))
    s = np.array([d["preselect"] for d in scored])
    is_good = np.array([d["id"].startswith("good-") for d in scored])
    reversed_auc = roc_auc(s[~is_good], s[is_good])
    print(f"reversed ranking: AUC junk over in-domain {reversed_auc:.3f}")
    assert reversed_auc > 0.9  # earlier = better: now the junk is the predictive text
