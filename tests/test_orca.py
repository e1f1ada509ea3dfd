"""ORCA-ICL (kiln.corpus.selection.orca / orca_steps): task and document gradients, the seeded block-wise random
projection, the selection of recall documents on a synthetic corpus, iteration, and the ``orca_score`` step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.corpus.scoring.base import run_scorer
from kiln.corpus.selection.orca import (
    GradientProjector,
    OrcaScorer,
    cosine_to,
    doc_loss,
    one_pass_adam,
    orca_rounds,
    prompt_loss,
    select_parameters,
    task_gradient,
)
from kiln.corpus.selection.orca_steps import (
    OrcaScoreParams,
    build_prompts,
    encode_prompt,
    orca_score,
    orca_setup,
    read_task_examples,
)
from kiln.corpus.steps.base import StepContext
from kiln.model.config import TransformerConfig
from kiln.model.heads import LanguageModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared, loaded CPU, small per-document backward passes run far faster that way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(vocab: int = 150, seq: int = 32, d: int = 32, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(TransformerConfig(vocab_size=vocab, max_seq_len=seq, n_layer=2, n_head=2, d_model=d))


# ----------------------------------------------------------------------------- projection mechanics


SIZES = [("a.weight", 1000), ("b.weight", 3000), ("c.weight", 2000)]


def _split(v: torch.Tensor) -> list[torch.Tensor]:
    out, start = [], 0
    for _, n in SIZES:
        out.append(v[:, start : start + n])
        start += n
    return out


def test_projection_is_seeded_blockwise_and_cache_free():
    g = torch.randn(3, 6000, generator=torch.Generator().manual_seed(1))
    small_blocks = dict(block_bytes=4 * 64 * 100)  # 100 rows per block: every parameter spans several blocks
    a = GradientProjector(SIZES, 64, seed=3, **small_blocks).project(_split(g))
    b = GradientProjector(SIZES, 64, seed=3, **small_blocks).project(_split(g))
    uncached = GradientProjector(SIZES, 64, seed=3, cache_bytes=0, **small_blocks)
    assert uncached._cache is None
    assert torch.equal(a, b)
    assert torch.allclose(a, uncached.project(_split(g)), atol=1e-6)
    other = GradientProjector(SIZES, 64, seed=4, **small_blocks).project(_split(g))
    assert not torch.allclose(a, other, atol=1e-2)
    # blocks are seeded by parameter name: projecting one parameter alone gives its share of the full projection
    only_b = GradientProjector([SIZES[1]], 64, seed=3, **small_blocks).project([_split(g)[1]])
    zeroed = g.clone()
    zeroed[:, :1000] = 0
    zeroed[:, 4000:] = 0
    full = GradientProjector(SIZES, 64, seed=3, **small_blocks).project(_split(zeroed))
    assert torch.allclose(only_b, full, atol=1e-5)
    rademacher = GradientProjector(SIZES, 64, seed=3, **small_blocks).block(0, 0)
    assert set(torch.unique(rademacher * 8).tolist()) == {-1.0, 1.0}  # +-1/sqrt(64)
    assert GradientProjector(SIZES, 64, kind="auto").kind == "rademacher"  # 6000 x 64 floats fit the cache
    assert GradientProjector(SIZES, 64, kind="auto", cache_bytes=1000).kind == "sparse"
    with pytest.raises(ValueError, match="gradients for 3 parameters"):
        GradientProjector(SIZES, 64).project(_split(g)[:2])


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sparse"])
def test_projection_approximately_preserves_inner_products(kind):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(20, 6000, generator=gen)
    cosines = torch.linspace(-0.9, 0.9, 20)[:, None]
    other = cosines * base + (1 - cosines**2).sqrt() * torch.randn(20, 6000, generator=gen)  # cos ~ linspace
    proj = GradientProjector(SIZES, 1024, seed=0, kind=kind)
    pa, pb = proj.project(_split(base)).double().numpy(), proj.project(_split(other)).double().numpy()
    exact = F.cosine_similarity(base, other).double().numpy()
    approx = np.array([cosine_to(pa[i : i + 1], pb[i])[0] for i in range(20)])
    ratio = np.linalg.norm(pa, axis=1) / np.linalg.norm(base.double().numpy(), axis=1)
    err = np.abs(approx - exact)
    print(f"{kind}: |cos error| mean {err.mean():.4f} max {err.max():.4f}; "
          f"norm ratio {ratio.min():.3f}-{ratio.max():.3f}")
    assert err.max() < 0.15 and err.mean() < 0.04  # JL: sd ~ (1 - cos^2) / sqrt(1024) <= 0.031; measured <= 0.09
    assert np.all(np.abs(ratio - 1) < 0.1)


def test_select_parameters_subsets():
    model = _tiny()
    names = lambda subset: [n for n, _ in select_parameters(model, subset)]  # noqa: E731
    assert sum(p.numel() for _, p in select_parameters(model, "all")) == model.num_params()
    assert "backbone.tok_emb.weight" in names("all")
    assert "backbone.tok_emb.weight" not in names("no_embeddings") and "backbone.norm.weight" in names("no_embeddings")
    mats = names("attention_mlp")
    assert mats and all(".attn." in n or ".mlp." in n for n in mats) and len(mats) == 2 * 7
    assert names(["*.attn.wq.*"]) == ["backbone.blocks.0.attn.wq.weight", "backbone.blocks.1.attn.wq.weight"]
    with pytest.raises(ValueError, match="expected one of"):
        select_parameters(model, "embeddings_only")
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(model, ["nothing.*"])


# ----------------------------------------------------------------------------- gradients


def test_task_gradient_is_the_answer_loss_and_batching_does_not_change_it():
    model = _tiny()
    params = [p for _, p in select_parameters(model, "all")]
    rng = np.random.default_rng(0)
    shapes = [(5, 1), (12, 3), (20, 2)]
    prompts = [(list(rng.integers(113, 150, n)), list(rng.integers(113, 150, a))) for n, a in shapes]
    batched = task_gradient(model, params, prompts, batch_size=3)  # padded to one width
    single = task_gradient(model, params, prompts, batch_size=1)
    manual = [torch.zeros(p.numel()) for p in params]
    for ctx, ans in prompts:
        seq = torch.tensor([*ctx, *ans])
        logits = model(seq[None, :-1])[0]
        loss = F.cross_entropy(logits[-len(ans):], seq[-len(ans):], reduction="sum")
        for m, g in zip(manual, torch.autograd.grad(loss, params), strict=True):
            m += g.reshape(-1)
    for a, b, c in zip(batched, single, manual, strict=True):
        assert torch.allclose(a, c, atol=1e-5) and torch.allclose(b, c, atol=1e-5)
    # a document's loss is its mean token loss; one longer than the context is cut into windows
    doc = list(rng.integers(113, 150, 50))
    windows = [doc[0:32], doc[31:50]]
    want = sum(F.cross_entropy(model(torch.tensor(w)[None, :-1])[0], torch.tensor(w[1:]), reduction="sum")
               for w in windows) / 49
    assert torch.allclose(doc_loss(model, doc), want, atol=1e-5)
    assert doc_loss(model, [113]) is None


def test_exact_and_projected_scores_agree_on_orthogonal_and_repeated_documents():
    model = _tiny()
    rng = np.random.default_rng(1)
    prompts = [(list(rng.integers(113, 150, 10)), [int(rng.integers(113, 150))]) for _ in range(8)]
    docs = [list(rng.integers(113, 150, 20)) for _ in range(6)] + [[113]]
    exact = OrcaScorer(model, proj_dim=0).fit_task(prompts).score(docs)
    proj = OrcaScorer(model, proj_dim=1024, grad_batch=4).fit_task(prompts).score(docs)
    assert np.isnan(exact[-1]) and np.isnan(proj[-1])
    assert np.all(np.abs(exact[:-1]) <= 1) and np.max(np.abs(exact[:-1] - proj[:-1])) < 0.1
    again = OrcaScorer(model, proj_dim=1024, grad_batch=3).fit_task(prompts).score(docs)
    assert np.allclose(proj, again, atol=1e-5, equal_nan=True)  # batching of documents does not matter


# ----------------------------------------------------------------------------- synthetic selection (spec (d))

VOCAB = 113 + 40
RECALL_SHARE = 6 / 32  # recall documents per training batch: an under-trained skill, as ICL is in a pretraining mix


def _synthetic(seed: int = 0):
    from kiln.data.synthetic import generate, recall_answer_positions
    from kiln.recipe import MarkovSource, RecallSource

    rc = RecallSource(generator="associative_recall", vocab_size=VOCAB, n_keys=12, n_pairs=4, n_queries=8,
                      n_train=2000, n_val=200, seed=1 + seed)
    mc = MarkovSource(generator="markov", vocab_size=VOCAB, doc_len=24, concentration=0.1, n_train=2000, n_val=200,
                      seed=2 + seed)
    split = {(name, s): np.concatenate(list(generate(cfg, s))) for name, cfg in (("r", rc), ("m", mc))
             for s in ("train", "val")}
    return split, recall_answer_positions(rc)


def _train(split, steps: int, seed: int = 0) -> LanguageModel:
    """A 2-layer model trained on batches of 6 recall + 26 Markov documents, lr 1e-2 decayed linearly to 0."""
    model = _tiny(VOCAB, 32, 32, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    rng = np.random.default_rng(seed)
    recall, markov = split[("r", "train")], split[("m", "train")]
    n_recall = round(32 * RECALL_SHARE)
    for _ in range(steps):
        batch = torch.as_tensor(np.concatenate([recall[rng.integers(0, len(recall), n_recall)],
                                                markov[rng.integers(0, len(markov), 32 - n_recall)]]))
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _answer_loss(model, prompts) -> float:
    """Mean loss on the answer tokens of ``prompts`` (in-context recall: lower = better)."""
    with torch.no_grad():
        return float(sum(prompt_loss(model, prompts, 64))) / sum(len(a) for _, a in prompts)


TRAIN_STEPS = 300
POOL_RECALL, POOL_MARKOV = 40, 160  # base rate of recall documents in the pool: 20%


@pytest.fixture(scope="module")
def recall_world():
    """A model trained briefly on a recall + Markov mix; task prompts = recall queries (one per queried key) from
    held-out recall documents; a pool of unseen documents, 20% recall."""
    split, answers = _synthetic()
    model = _train(split, TRAIN_STEPS)
    recall, markov = split[("r", "val")], split[("m", "val")]
    queries = lambda docs: [(list(d[:p]), [int(d[p])]) for d in docs for p in answers]  # noqa: E731
    pool = [list(d) for d in recall[100 : 100 + POOL_RECALL]] + [list(d) for d in markov[:POOL_MARKOV]]
    is_recall = np.arange(len(pool)) < POOL_RECALL
    return model, queries(recall[:40]), pool, is_recall, queries(recall[150:200])


@pytest.mark.slow
def test_orca_selection_oversamples_recall_documents(recall_world):
    """Spec (d): the top k by ORCA score over-sample recall documents (base rate 20%), the 1024-wide projection keeps
    the exact ranking, and one pass of Adam on the selection lowers held-out recall loss more than on random sets.

    What drives it here: recall is the under-trained part of the model's mix. The same model does not tell intact
    recall documents from ones whose answers were replaced by random values (measured: 17 intact vs 23 broken in
    a top 40), so this shows the task-gradient alignment, not a model that has learnt the recall mechanism."""
    model, prompts, pool, is_recall, held = recall_world
    k = POOL_RECALL
    projected = OrcaScorer(model, proj_dim=1024).fit_task(prompts).score(pool)
    exact = OrcaScorer(model, proj_dim=0).fit_task(prompts).score(pool)
    rerun = OrcaScorer(model, proj_dim=1024).fit_task(prompts).score(pool)
    sparse = OrcaScorer(model, proj_dim=1024, kind="sparse").fit_task(prompts).score(pool)
    top = np.argsort(-projected, kind="stable")[:k]
    share, share_exact = is_recall[top].mean(), is_recall[np.argsort(-exact, kind="stable")[:k]].mean()
    from scipy.stats import spearmanr

    rho, rho_sparse = spearmanr(projected, exact).statistic, spearmanr(sparse, exact).statistic
    # continued pretraining (one pass of Adam) on the selection vs equal-size random selections
    before = _answer_loss(model, held)
    picked = _answer_loss(one_pass_adam(model, [pool[i] for i in top], lr=3e-3, batch_size=8), held)
    rng = np.random.default_rng(0)
    random_losses = [_answer_loss(one_pass_adam(model, [pool[i] for i in rng.choice(len(pool), k, replace=False)],
                                                lr=3e-3, batch_size=8, seed=s), held) for s in range(3)]
    print(f"ORCA top-{k}: recall share {share:.3f} (exact cosines {share_exact:.3f}; base {is_recall.mean():.2f}); "
          f"mean score recall {projected[is_recall].mean():.3f} vs markov {projected[~is_recall].mean():.3f}; "
          f"spearman(projected, exact) {rho:.4f} (sparse {rho_sparse:.4f}); "
          f"held-out recall answer loss {before:.4f} -> ORCA {picked:.4f}, "
          f"random {np.round(random_losses, 4).tolist()}")
    assert np.array_equal(projected, rerun)
    assert share > 0.6 and share_exact > 0.6  # measured 0.775 / 0.875 here, 0.725-0.9 for data/model seeds 1-3
    assert rho > 0.8 and rho_sparse > 0.8  # measured 0.9865, sparse 0.9917 (0.98-0.99 seeds 1-3)
    assert picked < min(random_losses)  # measured 3.615 vs >= 3.727; ORCA below every random set for seeds 0-3


def test_orca_rounds_select_disjoint_top_k_and_recompute_the_task_gradient():
    model = _tiny(seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = np.random.default_rng(2)
    prompts = [(list(rng.integers(113, 150, 12)), [int(rng.integers(113, 150))]) for _ in range(16)]
    docs = [list(rng.integers(113, 150, 20)) for _ in range(24)]
    out = orca_rounds(model, docs, prompts, k=5, rounds=3, lr=1e-3, batch_size=4, proj_dim=256)
    again = orca_rounds(model, docs, prompts, k=5, rounds=3, lr=1e-3, batch_size=4, proj_dim=256)
    assert [len(s) for s in out.selected] == [5, 5, 5] and len(set(out.union)) == 15
    assert out.selected == again.selected
    assert all(np.array_equal(a, b) for a, b in zip(out.scores, again.scores, strict=True))
    first = np.argsort(-out.scores[0], kind="stable")[:5].tolist()
    assert out.selected[0] == first  # round 1 is plain ORCA at theta0
    assert out.selected[1] == [i for i in np.argsort(-out.scores[1], kind="stable") if i not in first][:5]
    assert np.max(np.abs(out.scores[1] - out.scores[0])) > 1e-3  # g_task moved with theta_1
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the caller's model is untouched
    with pytest.raises(ValueError, match="k >= 1"):
        orca_rounds(model, docs, prompts, k=0)


# ----------------------------------------------------------------------------- the orca_score step


def _task_files(tmp_path):
    """The same examples as {context, answer} and as kiln multiple-choice rows."""
    rows = [("The king and the queen", " sleep."), ("A lord and a lady", " dream."), ("Night and day", " fall."),
            ("Love and death", " rise."), ("The sword and the crown", " stand."), ("Blood and heart", " weep.")]
    pairs = tmp_path / "task.jsonl"
    pairs.write_text("".join(json.dumps({"context": c, "answer": a}) + "\n" for c, a in rows))
    mc = tmp_path / "task_mc.jsonl"
    mc.write_text("".join(json.dumps({"context": c, "choices": [" go.", a], "gold": 1}) + "\n" for c, a in rows))
    return pairs, mc


def test_task_file_formats_and_prompts(tmp_path):
    pairs, mc = _task_files(tmp_path)
    assert read_task_examples(pairs) == read_task_examples(mc)
    examples = read_task_examples(pairs)
    prompts = build_prompts(examples, shots=2, max_prompts=4, seed=0, separator="\n\n")
    assert prompts == build_prompts(examples, shots=2, max_prompts=4, seed=0, separator="\n\n")
    assert len(prompts) == 4 and prompts != build_prompts(examples, shots=2, max_prompts=4, seed=1, separator="\n\n")
    for context, answer in prompts:
        demos = context.split("\n\n")
        assert len(demos) == 3 and (demos[-1], answer) in examples  # two demonstrations, then the query
        assert all(d in [c + a for c, a in examples] for d in demos[:-1])
        assert demos[-1] + answer not in demos[:-1]  # the query is not its own demonstration
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x", "answer": "y"}) + "\n" + json.dumps({"context": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'answer'"):
        read_task_examples(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_task_examples(tmp_path / "missing.jsonl")


def test_orca_score_step_on_a_trained_run(tiny_trained, tmp_path):
    from kiln.corpus.learned.refmodel import ReferenceModel
    from kiln.corpus.steps.registry import REGISTRY
    from kiln.tokenizer.special import BOS, SPECIAL_IDS
    from tests.synthetic import sentence

    assert REGISTRY["orca_score"].per_doc
    root = tiny_trained.run.root
    pairs, mc = _task_files(tmp_path)
    import random

    rng = random.Random(0)
    docs = [{"id": f"d{i}", "text": " ".join(sentence(rng) for _ in range(4)), "source": "s"} for i in range(8)]
    docs.append({"id": "empty", "text": "", "source": "s"})
    params = OrcaScoreParams(checkpoint=str(root), task_file=str(pairs), shots=2, max_prompts=6, proj_dim=256,
                             projection="rademacher",
                             max_tokens=64, field="orca", batch_docs=4)
    out, rep = run_scorer(docs, params, StepContext(step="orca_score"), orca_setup, orca_score)
    scores = np.array([d["orca"] if d["orca"] is not None else np.nan for d in out])
    assert len(out) == len(docs) and np.all(np.abs(scores[:-1]) <= 1) and np.isfinite(scores[:-1]).all()
    assert rep.scores is not None
    # shard by shard (per_doc): each shard runs setup again and gets the same task gradient
    halves = [run_scorer(part, params, StepContext(step="orca_score"), orca_setup, orca_score)[0]
              for part in (docs[:3], docs[3:])]
    assert np.allclose([d["orca"] for d in halves[0] + halves[1]][:-1], scores[:-1], atol=1e-5)
    # the multiple-choice task file (gold = the same answers) gives the same scores
    mc_out, _ = run_scorer(docs, params.model_copy(update={"task_file": str(mc)}), StepContext(step="orca_score"),
                           orca_setup, orca_score)
    assert np.allclose([d["orca"] for d in mc_out][:-1], scores[:-1], atol=1e-6)
    # the step = the token-level scorer on the tokenizer's ids
    ref = ReferenceModel.load(root)
    prompts = [encode_prompt(ref.tokenizer, c, a) for c, a in build_prompts(read_task_examples(pairs), 2, 6, 0)]
    assert all(ctx[0] == SPECIAL_IDS[BOS] and ans for ctx, ans in prompts)
    direct = OrcaScorer(ref.model, proj_dim=256).fit_task(prompts).score(
        [ref.tokenizer.encode(d["text"]).ids[:64] for d in docs[:-1]])
    assert np.allclose(direct, scores[:-1], atol=1e-5)


def test_orca_score_step_names_missing_inputs(tiny_trained, tmp_path):
    pairs, _ = _task_files(tmp_path)
    docs = [{"id": "a", "text": "The king sleeps.", "source": "s"}]
    ctx = StepContext(step="orca_score")
    missing_task = OrcaScoreParams(checkpoint=str(tiny_trained.run.root), task_file=str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_scorer(docs, missing_task, ctx, orca_setup, orca_score)
    missing_ckpt = OrcaScoreParams(checkpoint=str(tmp_path / "no-run"), task_file=str(pairs))
    with pytest.raises(FileNotFoundError, match="no-run"):
        run_scorer(docs, missing_ckpt, ctx, orca_setup, orca_score)


def test_corpus_stage_scores_and_keeps_the_top_documents(tiny_trained, tmp_path):
    """The recipe form: ``orca_score`` then ``select`` (top 10 documents), through the corpus stage (executor,
    Parquet column)."""
    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    pool = write_jsonl_corpus(tmp_path / "pool.jsonl", n_docs=30, seed=5)
    pairs, _ = _task_files(tmp_path)
    steps = (f"corpus.steps=[{{step: orca_score, field: orca, checkpoint: '{tiny_trained.run.root}', "
             f"task_file: '{pairs}', shots: 2, max_prompts: 6, proj_dim: 128, max_tokens: 64, threads: 1}}, "
             "{step: select, field: orca, keep_docs: 10}]")
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", [*tiny_overrides(pool), "corpus.val_fraction=0.0", steps]), run, until="corpus")
    kept = [r for f in split_files(run.stage("corpus"), "train") for r in pq.read_table(f).to_pylist()]
    assert len(kept) == 10 and all(-1 <= r["orca"] <= 1 for r in kept)
