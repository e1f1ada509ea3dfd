"""AttentionInfluence (kiln.corpus.selection.attention_influence): uniform head masking, retrieval-head detection,
the loss-ratio score and the ``attention_influence`` scorer step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kiln.corpus.scoring.rules import roc_auc
from kiln.corpus.selection.attention_influence import (
    KVPrompt,
    build_kv_prompts,
    induction_head_scores,
    influence_scores,
    n_top_heads,
    rank_heads,
    repeated_sequences,
    retrieval_head_scores,
)
from kiln.model.attention import Attention, AttentionMask
from kiln.model.config import TransformerConfig
from kiln.model.flex import HAS_FLEX
from kiln.model.heads import LanguageModel


def _model(backend: str = "sdpa", **kw) -> LanguageModel:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=40, max_seq_len=32, n_layer=2, n_head=4, d_model=32, attention_backend=backend,
                            **kw)
    return LanguageModel(cfg).eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SEGMENTS = torch.tensor([[0] * 7 + [1] * 9, [0] * 12 + [-1] * 4])


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_empty_head_list_gives_identical_logits(backend):
    model = _model(backend)
    tokens = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for kw in ({}, {"segments": SEGMENTS}):
            base = model(tokens, **kw)
            assert torch.equal(model(tokens, masked_heads=[], head_mask_mode="uniform", **kw), base)
            # masking a head changes the logits (so the equality above is not vacuous)
            assert not torch.allclose(model(tokens, masked_heads=[(0, 1)], head_mask_mode="uniform", **kw), base)
    with pytest.raises(ValueError, match="head_mask_mode"):
        model(tokens, masked_heads=[(0, 1)], head_mask_mode="mean")


def _head_outputs(layer: Attention, x: torch.Tensor, mask: AttentionMask, head_mask: torch.Tensor | None,
                  mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-head outputs (B, H, T, hd) before the output projection, values (B, H, T, hd))."""
    seen = {}
    hook = layer.wo.register_forward_pre_hook(lambda m, args: seen.setdefault("y", args[0]))
    with torch.no_grad():
        layer(x, mask, head_mask=head_mask, head_mask_mode=mode)
        v = layer.wv(x).view(*x.shape[:2], layer.n_kv_head, layer.head_dim).transpose(1, 2)
    hook.remove()
    B, T, _ = x.shape
    return seen["y"].view(B, T, layer.n_head, layer.head_dim).transpose(1, 2), v


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("segmented", [False, True])
def test_uniform_mask_changes_only_that_head(backend, segmented):
    """One masked head becomes the mean of the values it may see (1/(t+1) causal, inside its document with
    segments); every other head's output is bit-identical."""
    cfg = TransformerConfig(vocab_size=40, max_seq_len=32, n_layer=1, n_head=4, d_model=32)
    torch.manual_seed(0)
    layer = Attention(cfg, 0).eval()
    x = torch.randn(2, 16, 32)
    segments = SEGMENTS if segmented else None
    mask = AttentionMask.build("causal", backend, q_len=16, device=x.device, segments=segments)
    base, v = _head_outputs(layer, x, mask, None, "zero")
    hm = torch.ones(4)
    hm[2] = 0.0
    masked, _ = _head_outputs(layer, x, mask, hm, "uniform")
    others = [0, 1, 3]
    assert torch.equal(masked[:, others], base[:, others])
    allowed = torch.ones(16, 16).tril()[None].expand(2, -1, -1)
    if segmented:
        allowed = allowed * (SEGMENTS[:, :, None] == SEGMENTS[:, None, :])
    expected = (allowed / allowed.sum(-1, keepdim=True)) @ v[:, 2]
    torch.testing.assert_close(masked[:, 2], expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(masked[:, 2], base[:, 2])


FLEX = pytest.param("flex", marks=[pytest.mark.slow, pytest.mark.skipif(not HAS_FLEX, reason="no FlexAttention")])


@pytest.mark.parametrize("backend", ["sdpa", FLEX])  # flex: FlexAttention's slow reference path on CPU
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_uniform_mask_agrees_across_backends_and_reports_uniform_probabilities(backend, n_kv_head):
    """sdpa (causal fast path, boolean document mask) and flex (document block masks) give the eager backend's
    uniformly masked logits, also with grouped-query attention."""
    tokens = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(2))
    model, eager = _model(backend, n_kv_head=n_kv_head), _model("eager", n_kv_head=n_kv_head)
    heads = [(0, 1), (1, 3)]
    with torch.no_grad():
        for kw in ({}, {"segments": SEGMENTS}):
            want = eager(tokens, masked_heads=heads, head_mask_mode="uniform", **kw)
            assert not torch.allclose(want, eager(tokens, **kw))
            got = model(tokens, masked_heads=heads, head_mask_mode="uniform", **kw)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        sdpa = _model("sdpa", n_kv_head=n_kv_head)
        out = sdpa(tokens, masked_heads=[(0, 1)], head_mask_mode="uniform", output_attentions=True)
    probs = out.attentions[0][:, 1]  # (B, T, T): row t is 1/(t+1) on 0..t
    expected = torch.ones(16, 16).tril() / torch.arange(1, 17)[:, None]
    torch.testing.assert_close(probs, expected.expand_as(probs), atol=1e-6, rtol=0)


def test_uniform_mask_with_kv_cache_decoding():
    """Decoding token by token with a KV cache gives the same logits as one full forward."""
    from kiln.model.cache import KVCache

    model = _model()
    tokens = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(3))
    heads = [(0, 0), (1, 2)]
    with torch.no_grad():
        full = model(tokens, masked_heads=heads, head_mask_mode="uniform")
        cfg = model.config
        cache = KVCache(cfg.n_layer, 1, cfg.n_kv_head, cfg.max_seq_len, cfg.head_dim, dtype=torch.float32)
        first = model(tokens[:, :6], kv_cache=cache, masked_heads=heads, head_mask_mode="uniform")
        rest = [model(tokens[:, t : t + 1], kv_cache=cache, masked_heads=heads, head_mask_mode="uniform")
                for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- detection


class _FakeModel(torch.nn.Module):
    """Returns fixed attention maps: head 0 of layer 1 looks at the context copy of the token to predict, head 1
    at the previous token, everything else at position 0."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(n_layer=2, n_head=2)

    def forward(self, tokens, output_attentions=False):
        T = tokens.shape[1]
        att = torch.zeros(2, 1, 2, T, T)
        att[..., 0] = 1.0
        p = self.prompt
        for i in range(p.answer_len):
            q = p.answer_start - 1 + i
            att[1, 0, 0, q] = 0.0
            att[1, 0, 0, q, p.source_start + i] = 1.0
            att[1, 0, 1, q] = 0.0
            att[1, 0, 1, q, q - 1] = 1.0
        return SimpleNamespace(attentions=tuple(att))


def test_retrieval_scores_count_copied_answer_tokens():
    tokens = [0, 5, 6, 7, 8, 9, 3, 5, 6, 7, 8]  # context: key 5, value 6 7 8; query: key 5 -> answer 6 7 8
    prompt = KVPrompt(tokens, answer_start=8, answer_len=3, source_start=2)
    model = _FakeModel()
    model.prompt = prompt
    scores = retrieval_head_scores(model, [prompt])
    assert scores[1, 0] == 1.0 and scores[1, 1] == 0.0 and scores[0].sum() == 0.0
    assert rank_heads(scores)[0] == (1, 0)
    with pytest.raises(ValueError, match="does not hold the answer"):
        KVPrompt([0, 5, 6, 7, 1, 5, 6, 9], answer_start=5, answer_len=3, source_start=1)
    assert n_top_heads(384, 0.05) == 19 and n_top_heads(8, 0.05) == 1


# ----------------------------------------------------------------------------- the toy (spec (d))

V, P = 32, 19  # vocabulary; span length
T = 1 + 2 * P  # <bos>, a span, then (repeat docs) the span again


def _repeat_doc(g: torch.Generator) -> torch.Tensor:
    span = torch.randint(2, V, (P,), generator=g)
    return torch.cat([torch.tensor([0]), span, span])


def _random_doc(g: torch.Generator) -> torch.Tensor:
    return torch.cat([torch.tensor([0]), torch.randint(2, V, (T - 1,), generator=g)])


@pytest.fixture(scope="module")
def toy_model():
    """2 layers, 4 heads, d_model 64, a tiny MLP; 150 AdamW steps on half repeat-docs (a random span, then the
    same span: copying is rewarded) and half random docs. ~8 s on one loaded CPU thread."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=V, max_seq_len=T, n_layer=2, n_head=4, d_model=64, ffn_hidden=16,
                            attention_backend="sdpa")
    model = LanguageModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(150):
            batch = torch.stack([_repeat_doc(g) if i % 2 else _random_doc(g) for i in range(16)])
            loss = torch.nn.functional.cross_entropy(model(batch)[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(before)
    return model.eval()


def test_masking_the_top_head_hurts_repeat_docs_more(toy_model):
    """Spec (d): the top head (by the induction score on repeated random spans: the toy's 32-token vocabulary
    has no text for a key-value prompt) is masked uniformly; the loss ratio ranks repeat-docs above random docs."""
    scores = induction_head_scores(toy_model, repeated_sequences(32, P, range(2, V), seed=5, bos_id=0), P)
    top = rank_heads(scores)[:1]
    g = torch.Generator().manual_seed(7)
    repeat = influence_scores(toy_model, [[_repeat_doc(g).tolist()] for _ in range(40)], top)
    random_ = influence_scores(toy_model, [[_random_doc(g).tolist()] for _ in range(40)], top)
    auc = roc_auc(repeat, random_)
    print(f"top head {top} (induction {scores[top[0]]:.2f}); AUC repeat vs random {auc:.3f}; mean score repeat "
          f"{repeat.mean():.4f}, random {random_.mean():.4f}")
    assert scores[top[0]] > 0.5
    assert auc > 0.9
    assert repeat.mean() > random_.mean() + 0.02
    # baseline: the lowest-ranked head, masked the same way, separates the two kinds far less
    low = rank_heads(scores)[-1:]
    low_gap = (influence_scores(toy_model, [[_repeat_doc(g).tolist()] for _ in range(40)], low).mean()
               - influence_scores(toy_model, [[_random_doc(g).tolist()] for _ in range(40)], low).mean())
    print(f"lowest head {low}: mean score gap {low_gap:.4f} vs top {repeat.mean() - random_.mean():.4f}")
    assert repeat.mean() - random_.mean() > 2 * low_gap


# ----------------------------------------------------------------------------- the step on a kiln run


def test_kv_prompts_from_a_kiln_tokenizer(tiny_trained):
    from kiln.tokenizer.train import load_tokenizer

    tok = load_tokenizer(tiny_trained.run.root / "tokenizer")
    short = dict(n_pairs=8, n_demos=0, key_chars=4, max_value_tokens=3, bos_id=0, instruction=False)
    prompts = build_kv_prompts(tok, 20, 64, seed=3, **short)
    assert all(len(p.tokens) <= 64 and p.tokens[0] == 0 for p in prompts)  # spans checked by KVPrompt itself
    assert len({tuple(p.tokens) for p in prompts}) == 20
    again = build_kv_prompts(tok, 20, 64, seed=3, **short)
    assert again == prompts
    long = build_kv_prompts(tok, 3, 4096, seed=3, values=["the quick brown fox", "a b c d"])
    assert all(len(p.tokens) > 300 for p in long)  # 32 pairs of 32-character keys, as in the paper
    with pytest.raises(ValueError, match="max_seq_len=64"):
        build_kv_prompts(tok, 1, 64, key_chars=32)


def test_attention_influence_step(tiny_trained, tmp_path):
    from kiln.corpus.selection.attention_influence_steps import STEPS, AttentionInfluenceParams
    from kiln.corpus.steps.base import StepContext
    from kiln.corpus.steps.registry import REGISTRY

    step = STEPS[0]
    assert step.per_doc and REGISTRY["attention_influence"].params is AttentionInfluenceParams
    root = tiny_trained.run.root
    docs = [{"id": str(i), "text": f"King Henry said {i} words to the court. " * (1 + i % 4), "source": "a"}
            for i in range(6)]
    small = dict(checkpoint=str(root), n_prompts=6, n_pairs=6, n_demos=0, instruction=False, key_chars=4,
                 max_value_tokens=3, max_tokens=200, batch_size=4, top_fraction=0.5)

    def run(**kw):
        ctx = StepContext(step="attention_influence", out_dir=tmp_path, run_dir=root)
        return step.run(docs, AttentionInfluenceParams(**{**small, **kw}), ctx)

    out, rep = run()
    scores = np.array([d["attention_influence"] for d in out])
    assert len(out) == 6 and np.isfinite(scores).all() and rep.scores is not None
    saved = json.loads((tmp_path / "attention_influence_heads.json").read_text())
    assert len(saved["ranked"]) == 4 and saved["detector"] == "kv"
    again, _ = run()
    assert [d["attention_influence"] for d in again] == scores.tolist()  # deterministic (and read from the cache)
    top2 = [tuple(h) for h in saved["ranked"][:2]]
    explicit, _ = run(heads=[list(h) for h in top2])
    assert [d["attention_influence"] for d in explicit] == scores.tolist()  # 50% of 4 heads = the top 2
    other, _ = run(heads=[list(h) for h in saved["ranked"][-2:]])
    assert [d["attention_influence"] for d in other] != scores.tolist()
    induction, _ = run(detector="induction", name="ai_induction")
    assert np.isfinite([d["ai_induction"] for d in induction]).all()
    assert (tmp_path / "ai_induction_heads.json").exists()

    with pytest.raises(FileNotFoundError, match="no-such-run"):
        run(checkpoint=str(tmp_path / "no-such-run"))
    with pytest.raises(FileNotFoundError, match="values.txt"):
        run(values_file=str(tmp_path / "values.txt"), name="ai_values")
    with pytest.raises(ValueError, match="heads"):
        run(heads=[[5, 0]])


def test_corpus_stage_scores_and_selects_per_source(tiny_trained, tmp_path):
    """The recipe form: ``attention_influence`` then ``select`` (top 20% of characters per source), through the
    corpus stage (executor, Parquet column, heads artifact in the corpus folder)."""
    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    pool = write_jsonl_corpus(tmp_path / "pool.jsonl", n_docs=40, seed=4)
    steps = (f"corpus.steps=[{{step: attention_influence, checkpoint: '{tiny_trained.run.root}', n_prompts: 8, "
             "n_pairs: 6, n_demos: 0, instruction: false, key_chars: 4, max_value_tokens: 3, max_tokens: 128}, "
             "{step: select, field: attention_influence, keep_fraction: 0.2, per_source: true}]")
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", [*tiny_overrides(pool), "corpus.val_fraction=0.0", steps]), run, until="corpus")
    out = run.stage("corpus")
    kept = [r for f in split_files(out, "train") for r in pq.read_table(f).to_pylist()]
    assert (out / "attention_influence_heads.json").is_file()
    assert 3 <= len(kept) <= 16 and all(np.isfinite(r["attention_influence"]) for r in kept)
    docs = [json.loads(line) for line in pool.read_text().splitlines()]
    chars = sum(len(r["text"]) for r in kept) / sum(len(d["text"]) for d in docs)
    print(f"kept {len(kept)} of {len(docs)} docs, {chars:.3f} of the characters")
    assert 0.1 < chars < 0.35
