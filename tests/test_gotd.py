"""GOT-D selection (kiln.corpus.selection.gotd, the ``gotd_score`` step): data.md §6 (d) and the step contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.corpus.scoring.base import run_scorer
from kiln.corpus.scoring.select import SelectParams, run_select
from kiln.corpus.selection.gotd import (
    calibrate,
    chunk_text,
    gotd_doc_scores,
    gotd_point_scores,
    ot_solve,
    sq_euclidean,
)
from kiln.corpus.selection.gotd_steps import GotdScoreParams, gotd_score, gotd_setup
from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.registry import REGISTRY


def _modes(seed: int = 0, n_a: int = 1900, n_b: int = 100, n_target: int = 100, d: int = 16, spread: float = 0.15
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool: n_a points near pre-training mode A, n_b near the under-represented mode B; target 50/50 A/B."""
    rng = np.random.default_rng(seed)
    centre_a, centre_b = np.zeros(d), np.eye(d)[0]
    pool = np.concatenate([centre_a + spread * rng.standard_normal((n_a, d)),
                           centre_b + spread * rng.standard_normal((n_b, d))])
    target = np.concatenate([centre_a + spread * rng.standard_normal((n_target, d)),
                             centre_b + spread * rng.standard_normal((n_target, d))])
    return pool, target, np.r_[np.zeros(n_a), np.ones(n_b)]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def test_gotd_selects_the_underrepresented_mode_far_more_than_knn_and_random() -> None:
    pool, target, is_b = _modes()
    k = 100
    got = is_b[_top(gotd_point_scores(target, pool), k)].mean()
    # kNN-to-target: pool points ranked by their mean distance to their 5 nearest target points
    knn = is_b[_top(-np.sort(sq_euclidean(target, pool), axis=0)[:5].mean(0), k)].mean()
    rand = is_b[np.random.default_rng(1).choice(len(pool), k, replace=False)].mean()
    print(f"share of mode B in the top {k}: GOT-D {got:.2f}, kNN {knn:.2f}, random {rand:.2f}")
    assert got > 0.8
    assert got >= knn + 0.3
    assert got >= rand + 0.5


def test_potentials_are_the_dual_of_a_plan_with_the_right_marginals() -> None:
    pool, target, _ = _modes(n_a=300, n_b=30, n_target=40)
    eps = 0.1
    res = ot_solve(target, pool, epsilon=eps, tol=1e-9)
    assert res.converged and res.n_iter <= 2000
    a, b = np.full(len(target), 1 / len(target)), np.full(len(pool), 1 / len(pool))
    plan = a[:, None] * b[None, :] * np.exp((res.f[:, None] + res.g[None, :] - sq_euclidean(target, pool)) / eps)
    np.testing.assert_allclose(plan.sum(1), a, rtol=1e-6)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-9)


def test_calibration_is_a_monotone_shift_free_transform() -> None:
    g = np.random.default_rng(0).standard_normal(500)
    cal = calibrate(g)
    np.testing.assert_array_equal(np.argsort(cal, kind="stable"), np.argsort(g, kind="stable"))
    np.testing.assert_allclose(calibrate(g + 7.5), cal, atol=1e-12)  # the potentials' free constant is gone
    n = len(g)
    np.testing.assert_allclose(cal, g - (g.sum() - g) / (n - 1))
    spec_form = g - (g.sum() - g) / n  # data.md's "/ N": the same ranking
    np.testing.assert_array_equal(np.argsort(spec_form, kind="stable"), np.argsort(cal, kind="stable"))
    pool, target, _ = _modes(n_a=300, n_b=30, n_target=40)
    g_real = ot_solve(target, pool).g
    np.testing.assert_array_equal(np.argsort(calibrate(g_real), kind="stable"), np.argsort(g_real, kind="stable"))


def test_scores_are_deterministic() -> None:
    pool, target, _ = _modes(n_a=400, n_b=40, n_target=50)
    np.testing.assert_array_equal(gotd_point_scores(target, pool), gotd_point_scores(target, pool))


def test_large_problems_subsample_the_target_or_refuse() -> None:
    pool, target, is_b = _modes()
    res = ot_solve(target, pool, max_cells=60 * len(pool), seed=3)
    assert len(res.target_used) == 60 and len(set(res.target_used.tolist())) == 60
    np.testing.assert_array_equal(res.target_used, ot_solve(target, pool, max_cells=60 * len(pool), seed=3)
                                  .target_used)
    assert is_b[_top(-calibrate(res.g), 100)].mean() > 0.8
    with pytest.raises(ValueError, match="max_cells"):
        ot_solve(target, pool, max_cells=len(pool) * 4)


def test_nonconvergence_warns() -> None:
    pool, target, _ = _modes(n_a=200, n_b=20, n_target=30)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = ot_solve(target, pool, epsilon=0.01, max_iter=1, tol=1e-12)
    assert not res.converged


def test_chunking() -> None:
    assert chunk_text("abcdefg", 3) == ["abc", "def", "g"]
    assert chunk_text("", 3) == [""]
    long = "".join(chr(65 + i) * 10 for i in range(20))
    picked = chunk_text(long, 10, max_chunks=5)
    assert picked[0] == "A" * 10 and picked[-1] == "T" * 10 and len(picked) == 5


# ---------------------------------------------------------------- the step on a tiny corpus

_A_TEXT = ("def return value argument module class function parameter object list dict string integer type "
           "default keyword raise error exception iterator generator attribute method instance call")
_B_TEXT = ("flour sugar butter oven bake whisk dough knead yeast salt pepper simmer boil roast garlic onion "
           "tomato basil olive vinegar pan skillet recipe minutes")
_A_WORDS, _B_WORDS = tuple(_A_TEXT.split(" ")), tuple(_B_TEXT.split(" "))


def _text(rng: np.random.Generator, words: tuple[str, ...], chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(words[int(rng.integers(len(words)))])
    return " ".join(out)


def _corpus(seed: int = 0) -> tuple[list[dict], list[str], list[str]]:
    """190 'code docs' (the common kind) and 10 'cooking' docs (rare); target texts 10 + 10."""
    rng = np.random.default_rng(seed)
    docs = [{"id": f"a{i:03d}", "source": "pool", "text": _text(rng, _A_WORDS, int(rng.integers(300, 2600)))}
            for i in range(190)]
    docs += [{"id": f"b{i:03d}", "source": "pool", "text": _text(rng, _B_WORDS, int(rng.integers(300, 2600)))}
             for i in range(10)]
    docs = [docs[i] for i in rng.permutation(len(docs))]
    target = [_text(rng, _A_WORDS, 800) for _ in range(10)] + [_text(rng, _B_WORDS, 800) for _ in range(10)]
    return docs, target, [d["id"] for d in docs if d["id"].startswith("b")]


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_step_scores_the_column_and_ranks_the_target_rare_kind_first(tmp_path: Path) -> None:
    docs, target, rare = _corpus()
    _write_jsonl(tmp_path / "target.jsonl", target)
    assert "gotd_score" in REGISTRY
    params = GotdScoreParams(field="gotd", target=[{"path": "target.jsonl"}])
    ctx = StepContext(step="gotd_score", run_dir=tmp_path)
    out, rep = run_scorer(docs, params, ctx, gotd_setup, gotd_score)
    assert len(out) == len(docs) and all(isinstance(d["gotd"], float) for d in out)
    assert rep.scores is not None
    top = {d["id"] for d in sorted(out, key=lambda d: -d["gotd"])[: len(rare)]}
    got = len(top & set(rare)) / len(rare)
    # kNN baseline on the same embeddings: mean cosine of a document's first chunk to its 3 nearest target texts
    from kiln.corpus.selection.embed import embed_texts

    sims = embed_texts([d["text"] for d in docs]) @ embed_texts(target).T
    knn_top = {docs[i]["id"] for i in _top(np.sort(sims, axis=1)[:, -3:].mean(1), len(rare))}
    knn = len(knn_top & set(rare)) / len(rare)
    print(f"rare kind among the top {len(rare)}: GOT-D {got:.2f}, kNN {knn:.2f}, random {len(rare) / len(docs):.2f}")
    assert got >= 0.8
    kept, _ = run_select(out, SelectParams(field="gotd", keep_docs=len(rare)), StepContext(step="select"))
    assert {d["id"] for d in kept} == top
    again, _ = run_scorer(docs, params, StepContext(step="gotd_score", run_dir=tmp_path), gotd_setup, gotd_score)
    assert [d["gotd"] for d in again] == [d["gotd"] for d in out]  # reruns give the same scores


def test_target_from_the_corpus_is_left_out_of_the_pool() -> None:
    docs, target, rare = _corpus()
    docs = docs + [{"id": f"t{i}", "source": "task", "text": t} for i, t in enumerate(target)]
    params = GotdScoreParams(target=[{"source": "task"}])
    out, _ = run_scorer(docs, params, StepContext(step="gotd_score"), gotd_setup, gotd_score)
    assert all(d["gotd_score"] is None for d in out if d["source"] == "task")
    scored = sorted((d for d in out if d["source"] == "pool"), key=lambda d: -d["gotd_score"])
    assert len({d["id"] for d in scored[: len(rare)]} & set(rare)) >= 0.8 * len(rare)


def test_missing_or_empty_target_is_a_clear_error(tmp_path: Path) -> None:
    docs, _, _ = _corpus()
    ctx = StepContext(step="gotd_score", run_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        gotd_setup(GotdScoreParams(target=[{"path": "nope.jsonl"}]), ctx, docs)
    _write_jsonl(tmp_path / "blank.jsonl", ["   ", ""])
    with pytest.raises(ValueError, match="select no non-empty text"):
        gotd_setup(GotdScoreParams(target=[{"path": "blank.jsonl"}]), ctx, docs)
    with pytest.raises(ValueError, match="select no non-empty text"):
        gotd_setup(GotdScoreParams(target=[{"source": "absent"}]), ctx, docs)
    with pytest.raises(ValueError, match="at least one target"):
        gotd_doc_scores([], ["x"])


def test_recipe_parses() -> None:
    from kiln.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "kiln" / "recipes" / "gotd.yaml")
    steps = [s.step for s in recipe.corpus.steps]
    assert steps[-2:] == ["gotd_score", "select"]
    assert recipe.corpus.steps[-1].field == recipe.corpus.steps[-2].column
