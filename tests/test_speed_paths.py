"""CPU tests of the GPU speed paths: FlexAttention dispatch and equality, chunked cross-entropy,
the tail hold-out split and the stop-at-target rule."""

from __future__ import annotations

import pytest
import torch

from kiln.corpus.clean import TAIL_SUFFIX, split_tail
from kiln.model.config import TransformerConfig
from kiln.model.flex import HAS_FLEX, use_flex
from kiln.objectives.losses import IGNORE, chunked_cross_entropy, plain_cross_entropy
from kiln.recipe import RecipeError, load_recipe
from kiln.train.trainer import target_reached

# ----------------------------------------------------------------------------- flex dispatch


def test_use_flex_dispatch() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_flex("auto", cpu)
    assert use_flex("auto", cuda) == HAS_FLEX
    assert not use_flex("sdpa", cuda)
    assert use_flex("flex", cpu) == HAS_FLEX or not HAS_FLEX
    with pytest.raises(ValueError):
        use_flex("flash", cpu)


def test_recipe_attention_backend() -> None:
    assert load_recipe(None, ["model.attention_backend=flex"]).model.attention_backend == "flex"
    with pytest.raises(RecipeError, match="model.attention_backend"):
        load_recipe(None, ["model.attention_backend=flash"])


def _segments(B: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, 4, (B, T), generator=g).sort(dim=1).values
    seg[:, -5:] = -1  # trailing padding is a segment of its own
    return seg


@pytest.mark.skipif(not HAS_FLEX, reason="torch without FlexAttention")
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_flex_equals_sdpa_document_mask(n_kv_head: int) -> None:
    """Same weights, same packed rows: FlexAttention block masks give SDPA's boolean-mask output.
    (FlexAttention has no backward on CPU, so this runs without gradients; the GPU script checks both.)"""
    torch.manual_seed(0)
    B, T = 2, 48
    cfg = TransformerConfig(vocab_size=97, max_seq_len=T, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32,
                            attention_backend="sdpa")
    sdpa = cfg.build().eval()
    flex = TransformerConfig(**{**cfg.to_dict(), "attention_backend": "flex"}).build().eval()
    flex.load_state_dict(sdpa.state_dict())
    tokens = torch.randint(0, 97, (B, T))
    seg = _segments(B, T, 1)
    positions = torch.zeros_like(tokens)
    for b in range(B):
        for i in range(1, T):
            positions[b, i] = positions[b, i - 1] + 1 if seg[b, i] == seg[b, i - 1] else 0
    with torch.no_grad():
        a = sdpa(tokens, positions=positions, segments=seg)
        f = flex(tokens, positions=positions, segments=seg)
        plain = flex(tokens)  # no segments: the causal SDPA path, whatever the backend
    torch.testing.assert_close(f, a, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, f, atol=1e-3)


# ----------------------------------------------------------------------------- chunked cross-entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_ce_equals_plain(chunk: int) -> None:
    torch.manual_seed(0)
    N, d, V = 50, 16, 131
    h0, w0 = torch.randn(N, d), torch.randn(V, d) * 0.3
    targets = torch.randint(0, V, (N,))
    targets[::5] = IGNORE
    h1, w1 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    h2, w2 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref = plain_cross_entropy(h1, w1, targets)
    got = chunked_cross_entropy(h2, w2, targets, chunk)
    (ref * 0.37).backward()
    (got * 0.37).backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["chunked", "compiled"])
def test_fast_clm_losses_equal_full_logits_tied_weights(mode: str) -> None:
    """The CLM loss with ``loss_chunk_tokens`` or with the compiled head + loss matches the eager full-logits
    loss, gradients included (tied embedding: the head's gradient adds to the embedding's)."""
    from kiln.data.loader import Batch
    from kiln.objectives.clm import CausalLM

    torch.manual_seed(0)
    B, T = 2, 24
    model = TransformerConfig(vocab_size=61, max_seq_len=T, n_layer=1, n_head=2, d_model=16).build()
    tokens = torch.randint(0, 61, (B, T))
    seg = _segments(B, T, 2)
    batch = Batch(tokens=tokens, segments=seg, positions=torch.zeros_like(tokens), attention="document",
                  n_tokens=int((seg >= 0).sum()))
    from kiln.objectives.losses import compiled_cross_entropy

    info = compiled_cross_entropy.cache_info()
    calls_before = info.hits + info.misses
    grads, losses = [], []
    for fast in (False, True):
        obj = CausalLM()
        obj.loss_chunk_tokens = 10 if fast and mode == "chunked" else None
        obj.set_compile_loss(fast and mode == "compiled")
        model.zero_grad()
        loss, _ = obj.loss(model, obj.prepare(batch))
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    info = compiled_cross_entropy.cache_info()  # the compiled loss was called exactly when asked for
    assert info.hits + info.misses - calls_before == (mode == "compiled")


def test_compile_reaches_the_loss_of_every_objective_in_a_mixture() -> None:
    """``parallelize(compile=True)`` compiles the blocks and turns on the compiled loss, down to a mixture's
    parts; without compile nothing changes."""
    from kiln.objectives import build_objective
    from kiln.train.dist import DistEnv
    from kiln.train.parallel import parallelize

    for compile in (False, True):
        model = TransformerConfig(vocab_size=61, max_seq_len=16, n_layer=2, n_head=2, d_model=16).build()
        obj = build_objective("mixture", weights={"clm": 0.5, "fim": 0.5})
        parallelize(model, obj, strategy="single", compile=compile, device=torch.device("cpu"), env=DistEnv())
        assert obj.compile_loss is compile
        assert all(o.compile_loss is compile for o in obj.objectives.values())
        assert all(hasattr(b, "_compiled_call_impl") and (b._compiled_call_impl is not None) is compile
                   for b in model.backbone.blocks)


# ----------------------------------------------------------------------------- tail split


def _docs() -> list[dict]:
    texts = [("b.txt", "x" * 130), ("a.txt", "a" * 400), ("a.txt", "b" * 300), ("c.txt", "c" * 170)]
    return [{"id": f"d{i}", "text": t, "file": f} for i, (f, t) in enumerate(texts)]


def test_tail_split_exact_characters() -> None:
    docs = _docs()
    train, val, info = split_tail(docs, 0.05 * 10, ["file"])  # 50%: the cut falls inside d2
    ordered = sorted(docs, key=lambda d: d["file"])  # a, a, b, c (stable)
    concat = "".join(d["text"] for d in ordered)
    assert "".join(d["text"] for d in train) + "".join(d["text"] for d in val) == concat
    assert sum(len(d["text"]) for d in val) == round(0.5 * len(concat)) == info["val_chars"]
    assert [d["id"] for d in train] == ["d1", "d2"]
    assert [d["id"] for d in val] == ["d2" + TAIL_SUFFIX, "d0", "d3"]
    assert info["split_document"] == "d2" and info["cut_char"] == 500


def test_tail_split_five_percent_and_read_order() -> None:
    docs = [{"id": f"s{i}", "text": chr(65 + i % 26) * (97 + 13 * i)} for i in range(40)]
    train, val, info = split_tail(docs, 0.05, [])
    concat = "".join(d["text"] for d in docs)
    assert "".join(d["text"] for d in train + val) == concat
    n_val = sum(len(d["text"]) for d in val)
    assert n_val == round(0.05 * len(concat))
    assert abs(n_val / len(concat) - 0.05) < 1e-3
    assert val[-1]["id"] == "s39" and train[0]["id"] == "s0"


def test_tail_split_on_a_document_boundary_splits_nothing() -> None:
    docs = [{"id": "a", "text": "x" * 90}, {"id": "b", "text": "y" * 10}]
    train, val, info = split_tail(docs, 0.1, [])
    assert [d["id"] for d in train] == ["a"] and [d["id"] for d in val] == ["b"]
    assert info["split_document"] is None


def test_recipe_split_fields() -> None:
    r = load_recipe(None, ["corpus.split=tail", "corpus.split_order_by=[file]", "corpus.select={form: [play]}"])
    assert r.corpus.split == "tail" and r.corpus.split_order_by == ["file"] and r.corpus.select == {"form": ["play"]}
    with pytest.raises(RecipeError, match="corpus.split"):
        load_recipe(None, ["corpus.split=random"])


def test_select_step() -> None:
    from kiln.corpus.clean import step_select
    from kiln.recipe import CorpusConfig

    docs = [{"id": "1", "text": "t", "form": "play"}, {"id": "2", "text": "t", "form": "poem"},
            {"id": "3", "text": "t"}]
    kept, rep = step_select(docs, CorpusConfig(select={"form": ["play"]}))
    assert [d["id"] for d in kept] == ["1"] and rep.docs_removed == 2


# ----------------------------------------------------------------------------- stop at target


def test_target_reached() -> None:
    assert not target_reached(1.9, None)
    assert not target_reached(1.9, 1.843)
    assert target_reached(1.843, 1.843)
    assert target_reached(1.5, 1.843)
    assert not target_reached(float("nan"), 1.843)
    assert load_recipe(None, ["train.stop_at_val_bpb=1.843"]).train.stop_at_val_bpb == 1.843
