"""In-Context Pretraining ordering (kiln/corpus/selection/icp.py, icp_steps.py): spec checks of
shared/methods/data.md §1 (d) on synthetic Gaussian topics, the traversal's cost, dedup, IVF and the step."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kiln.corpus.selection.icp import (
    cut_contexts,
    icp_order,
    knn,
    restrict,
    semantic_dedup,
    shuffle_contexts,
    traverse,
    undirected,
)
from kiln.corpus.steps.base import StepContext


def topics(n_topics: int, per_topic: int, dim: int, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around ``n_topics`` random unit centres, documents of all topics interleaved (corpus order
    carries no topic signal)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_topics, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.permutation(np.repeat(np.arange(n_topics), per_topic))
    x = centres[label] + noise * rng.standard_normal((len(label), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), label


def neighbour_stats(x: np.ndarray, label: np.ndarray, order: np.ndarray) -> tuple[float, float]:
    """Mean cosine and same-topic share of consecutive documents in ``order``."""
    a, b = x[order[:-1]], x[order[1:]]
    return float(np.einsum("ij,ij->i", a, b).mean()), float((label[order[:-1]] == label[order[1:]]).mean())


def test_order_is_a_permutation_that_groups_topics() -> None:
    x, label = topics(50, 100, 64)
    res = icp_order(x, np.full(len(x), 1000), k=10, context_chars=32768, seed=0)
    assert sorted(res.order.tolist()) == list(range(len(x)))  # nothing lost or repeated (no near-duplicates here)
    assert res.dedup.keep.all()
    cos, same = neighbour_stats(x, label, res.order)
    rcos, rsame = neighbour_stats(x, label, np.random.default_rng(1).permutation(len(x)))
    print(f"icp: cosine {cos:.3f} same-topic {same:.3f}; random: cosine {rcos:.3f} same-topic {rsame:.3f}; "
          f"paths {res.walk.n_paths}")
    assert cos > 0.5 and same > 0.8
    assert rcos < 0.1 and rsame < 0.1
    # the path itself (before the context shuffle) and its recorded cosines agree with the embeddings
    path = res.order[np.argsort(res.position)]
    pcos, psame = neighbour_stats(x, label, path)
    assert psame >= same and pcos > 0.5
    recorded = res.prev_cosine[np.argsort(res.position)][1:]
    assert np.allclose(recorded, np.einsum("ij,ij->i", x[path[1:]], x[path[:-1]]), atol=1e-5)
    # contexts: ~33 documents of 1000 chars each reach 32768; emitted in shuffled order, each one contiguous
    assert np.all(np.diff(res.context) >= 0)
    assert res.context.max() + 1 == -(-len(x) // 33)
    assert not np.all(np.diff(res.position) == 1)  # the shuffle moved contexts


def test_same_input_same_order_and_seed_changes_it() -> None:
    x, _ = topics(20, 30, 16, seed=3)
    lengths = np.random.default_rng(0).integers(100, 3000, len(x))
    a = icp_order(x, lengths, k=8, context_chars=5000, seed=4)
    b = icp_order(x.copy(), lengths.copy(), k=8, context_chars=5000, seed=4)
    assert np.array_equal(a.order, b.order) and np.array_equal(a.context, b.context)
    assert np.array_equal(a.position, b.position)
    c = icp_order(x, lengths, k=8, context_chars=5000, seed=5)
    assert not np.array_equal(a.order, c.order) and sorted(a.order.tolist()) == sorted(c.order.tolist())


def test_knn_excludes_self_sorted_and_matches_brute_force() -> None:
    x, _ = topics(5, 40, 8, noise=0.3, seed=2)
    x = np.concatenate([x, x[:3]])  # exact duplicates: self may not come first among equal similarities
    ids, sims = knn(x, 6)
    n = len(x)
    assert ids.shape == (n, 6) and not np.any(ids == np.arange(n)[:, None])
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    best = -np.sort(-full, axis=1)[:, :6]
    assert np.allclose(sims, best, atol=1e-5)
    assert np.all(ids[200] == ids[200]) and ids[200, 0] == 0 and sims[200, 0] == pytest.approx(1.0, abs=1e-5)
    small_ids, _ = knn(x[:4], 10)
    assert small_ids.shape == (4, 3)  # k capped at n - 1
    assert knn(x[:1], 5)[0].shape == (1, 0)


def test_semantic_dedup_keeps_first_occurrence() -> None:
    x, _ = topics(10, 30, 32, noise=0.2, seed=5)
    rng = np.random.default_rng(0)
    src = np.array([3, 50, 120, 299])
    near = x[src] + 0.01 * rng.standard_normal((len(src), x.shape[1])).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    y = np.concatenate([near[:2], x, near[2:]])  # two copies before their originals, two after
    ids, sims = knn(y, 10)
    dd = semantic_dedup(ids, sims, 0.9)
    dropped = np.flatnonzero(~dd.keep).tolist()
    # copies 0, 1 come first: their originals (at 2 + 3, 2 + 50) go; the late copies (302, 303) go
    assert dropped == [5, 52, 302, 303]
    assert dd.dup_of[5] == 0 and dd.dup_of[52] == 1 and dd.dup_of[302] == 122 and dd.dup_of[303] == 301
    assert np.all(dd.dup_sim[dropped] > 0.9)
    assert semantic_dedup(ids, sims, None).keep.all()
    sub_ids, sub_sims = restrict(ids, sims, dd.keep)
    assert sub_ids.shape == (len(y) - 4, 10) and sub_ids.max() < len(y) - 4
    valid = sub_ids >= 0
    assert np.all(valid[:, :-1] >= valid[:, 1:])  # missing neighbours last
    assert np.all(np.isneginf(sub_sims[~valid]))


def test_traversal_takes_most_similar_and_starts_at_min_degree() -> None:
    # a chain: 0 has the one lowest degree, so the walk starts there; at 2 it skips visited 1 and takes 3
    ids = np.array([[1, -1], [2, 0], [1, 3], [2, 1]])
    indptr, adj = undirected(ids)
    assert np.diff(indptr).tolist() == [1, 3, 2, 2] and adj[indptr[1]:indptr[2]].tolist() == [0, 2, 3]
    walk = traverse(ids, seed=0)
    assert walk.path.tolist() == [0, 1, 2, 3] and walk.starts.tolist() == [True, False, False, False]
    # the degree is that of the graph still unvisited: after the path 0 -> 1 -> 2 (2 lists nobody), doc 3 (full
    # degree 2, like every member of the triangle 4-5-6) has no unvisited neighbour left: degree 0, visited next
    ids = np.array([[1, -1], [2, -1], [-1, -1], [1, 2], [5, 6], [4, 6], [4, 5]])
    for seed in range(5):
        walk = traverse(ids, seed=seed)
        assert walk.path[:4].tolist() == [0, 1, 2, 3] and sorted(walk.path[4:].tolist()) == [4, 5, 6]
        assert walk.starts.tolist() == [True, False, False, True, True, False, False]
    starts = {int(traverse(ids, seed=s).path[4]) for s in range(12)}
    assert starts == {4, 5, 6}  # equal degrees: a seeded random pick


def synthetic_graph(n: int, k: int, block: int = 100, seed: int = 0) -> np.ndarray:
    """kNN-like lists of ``n`` documents in topic blocks: each lists ``k`` random members of its block."""
    rng = np.random.default_rng(seed)
    ids = (np.arange(n) // block * block)[:, None] + rng.integers(0, block, (n, k))
    return np.minimum(ids, n - 1)


def test_traversal_cost_grows_linearly() -> None:
    k = 10
    cost = {}
    for n in (20000, 50000):
        walk = traverse(synthetic_graph(n, k), seed=0)
        assert sorted(walk.path.tolist()) == list(range(n))
        assert walk.inspections <= n * k and walk.heap_pops <= n + 2 * n * k
        cost[n] = walk.inspections + walk.heap_pops
    ratio = cost[50000] / cost[20000]
    print(f"inspections+pops: {cost}, ratio {ratio:.2f} (n ratio 2.5; quadratic would be 6.25)")
    assert 2.0 < ratio < 3.0


def test_contexts_cut_and_shuffle() -> None:
    lengths = np.array([5, 5, 5, 20, 1, 1, 30, 2])
    ctx = cut_contexts(lengths, 10)
    assert ctx.tolist() == [0, 0, 1, 1, 2, 2, 2, 3]  # a context closes once it holds >= 10
    order, new = shuffle_contexts(ctx, seed=0)
    assert sorted(order.tolist()) == list(range(8)) and np.all(np.diff(new) >= 0)
    for c in range(4):  # each context stays contiguous and in path order
        assert np.all(np.diff(order[new == c]) == 1)
    with pytest.raises(ValueError, match="context_chars"):
        cut_contexts(lengths, 0)


def test_ivf_path_matches_exact_neighbours() -> None:
    x, label = topics(30, 100, 32, noise=0.1, seed=7)
    exact_ids, _ = knn(x, 10)
    ivf_ids, ivf_sims = knn(x, 10, exact_max=1000, seed=0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids.tolist(), ivf_ids.tolist(), strict=True)])
    print(f"IVF recall@10 vs exact: {recall:.3f}")
    assert recall > 0.9
    again, again_sims = knn(x, 10, exact_max=1000, seed=0, threads=2)
    assert np.array_equal(ivf_ids, again) and np.array_equal(ivf_sims, again_sims)  # reruns (and threads) agree
    one, one_sims = knn(x, 10, exact_max=1000, seed=0, nlist=300, nprobe=1)  # the IVF index is really in use
    recall1 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids.tolist(), one.tolist(), strict=True)])
    print(f"IVF nlist 300 nprobe 1 recall@10: {recall1:.3f}, rows short of 10: {(one < 0).any(axis=1).sum()}")
    assert recall1 < 0.95 and np.all(np.isneginf(one_sims[one < 0])) and np.all(one_sims[one >= 0] > -1.01)
    res = icp_order(x, np.full(len(x), 500), k=10, exact_max=1000, context_chars=20000, dedup_cosine=None)
    assert sorted(res.order.tolist()) == list(range(len(x)))
    cos, same = neighbour_stats(x, label, res.order)
    assert cos > 0.5 and same > 0.8


PETS_WORDS = ("cat dog kitten puppy fur whiskers leash collar bark purr paw tail vet groom litter bowl treat toy "
        "hamster rabbit parrot cage feed walk fetch sleep nap cuddle breed shelter adopt")
MARKET_WORDS = ("stock bond market price yield dividend equity trader broker index fund share rally crash hedge "
          "option futures inflation rate bank credit debt portfolio asset return volatility earnings quarter")
PETS, MARKET = PETS_WORDS.split(), MARKET_WORDS.split()


def test_icp_order_step_groups_topics_and_removes_near_duplicate() -> None:
    from kiln.corpus.pipeline import run_steps
    from kiln.corpus.selection.icp_steps import IcpOrderParams
    from kiln.corpus.steps.registry import REGISTRY
    from kiln.recipe import load_recipe

    assert "icp_order" in REGISTRY
    assert load_recipe("demo", ["corpus.steps=[{step: icp_order, k: 5}]"]).corpus.steps[0].k == 5
    r = random.Random(0)
    docs = []
    for i in range(40):  # alternating topics: the input order is the worst possible
        vocab = PETS if i % 2 == 0 else MARKET
        docs.append({"id": f"d{i}", "source": "pets" if i % 2 == 0 else "market", "text": " ".join(
            r.choice(vocab) for _ in range(60))})
    dup = docs[6]["text"].split()
    dup[10] = "zebra"
    docs.append({"id": "dup", "source": "pets", "text": " ".join(dup)})
    ctx = StepContext()
    out, reps = run_steps(docs, [IcpOrderParams(k=5)], ctx)
    rep = reps[0]
    assert [r.id for r in ctx.removed] == ["dup"] and "semantic near-duplicate of d6" in ctx.removed[0].reason
    assert rep.docs_in == 41 and rep.docs_out == 40 and rep.docs_removed == 1
    assert sorted(d["id"] for d in out) == sorted(d["id"] for d in docs[:40])
    switches = sum(a["source"] != b["source"] for a, b in zip(out, out[1:], strict=False))
    print(f"topic switches: icp {switches}, input 39")
    assert switches <= 3
    assert sorted(d["icp_position"] for d in out) == list(range(40))
    assert all(d["icp_context"] == 0 for d in out)  # 40 x ~400 chars < 32768: one context
    cos = [d["icp_prev_cosine"] for d in out]
    assert sum(c is None for c in cos) == 1 and rep.scores["field"] == "icp_prev_cosine"
    assert rep.summary["dropped"] == 1 and rep.summary["mean_path_cosine"] > rep.summary["mean_input_cosine"] + 0.2
    small, _ = run_steps(docs, [IcpOrderParams(k=5, context_chars=1000, dedup_cosine=None)], StepContext())
    assert len(small) == 41 and len({d["icp_context"] for d in small}) > 10
    assert [d["icp_context"] for d in small] == sorted(d["icp_context"] for d in small)


def test_step_bad_input_is_a_clear_error() -> None:
    from kiln.corpus.selection.icp_steps import IcpOrderParams, run

    with pytest.raises(TypeError, match="document 'x'"):
        run([{"id": "x", "text": None, "source": "s"}], IcpOrderParams(), StepContext(step="icp_order"))
    assert run([], IcpOrderParams(), StepContext())[0] == []
    with pytest.raises(ValueError, match="lengths"):
        icp_order(np.eye(3, dtype=np.float32), np.array([1, 2]))


def test_order_reaches_the_batches_through_the_corpus_stage_and_concat_packing(tmp_path) -> None:
    """Streaming corpus stage (several shards, re-sharded after the whole-corpus step) = in-memory path; the train
    parts keep the ICP order; the tokens stage and ``concat`` packing keep it (``best_fit`` does not)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files
    from kiln.corpus.stage import build_corpus, reference_corpus
    from kiln.data.encode import encode_corpus
    from kiln.data.packing import pack
    from kiln.data.shards import open_split
    from kiln.recipe import CorpusConfig, TokenizerConfig, TokensConfig
    from kiln.tokenizer.train import load_tokenizer, train_tokenizer

    r = random.Random(1)
    rows = [{"id": f"t{i}", "topic": "pets" if i % 2 == 0 else "market",
             "text": " ".join(r.choice(PETS if i % 2 == 0 else MARKET) for _ in range(50))} for i in range(60)]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = CorpusConfig.model_validate({"sources": [{"kind": "jsonl", "path": str(src), "id_field": "id"}],
                                       "min_chars": 10, "shard_docs": 8, "val_fraction": 0.1,
                                       "steps": [{"step": "length", "min_chars": 10}, {"step": "icp_order", "k": 5}]})
    out = tmp_path / "corpus"
    build_corpus(cfg, out)
    train = pa.concat_tables([pq.read_table(p) for p in split_files(out, "train")]).to_pylist()
    ref_train, _, _, _ = reference_corpus(cfg)
    assert [d["id"] for d in train] == [d["id"] for d in ref_train]
    assert 45 <= len(train) < 60 and all(d["icp_context"] == 0 for d in train)
    assert [d["icp_position"] for d in train] == sorted(d["icp_position"] for d in train)
    switches = sum(a["topic"] != b["topic"] for a, b in zip(train, train[1:], strict=False))
    assert switches <= 3
    funnel = json.loads((out / "funnel.json").read_text())
    row = next(s for s in funnel["steps"] if s["step"] == "icp_order")
    assert row["scores"]["field"] == "icp_prev_cosine" and any("icp_context" in f for f in funnel["schema"])

    tok_dir, tokens = tmp_path / "tok", tmp_path / "tokens"
    train_tokenizer(TokenizerConfig(vocab_size=600), out, tok_dir)
    encode_corpus(TokensConfig(workers=1), load_tokenizer(tok_dir), out, tokens)
    shards = open_split(tokens, "train")
    assert shards.n_docs == len(train)

    def reading_order(mode: str) -> list[int]:
        packing = pack(shards.doc_lengths(), 256, mode)
        seen = [d for row in range(packing.n_rows) for d, _, _ in packing.row(row)]
        return [d for i, d in enumerate(seen) if i == 0 or seen[i - 1] != d]

    assert reading_order("concat") == list(range(len(train)))  # rows hold the documents in corpus (ICP) order
    assert reading_order("best_fit") != list(range(len(train)))  # best_fit sorts by length: order lost
