"""The model-side objectives: mechanics on tiny batches, recipes, and the effect checks of the spec's (d) lines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.objectives import OBJECTIVES, build_objective
from kiln.objectives.relayout import Piece, relayout
from kiln.objectives.transforms.common import BOS_ID, EOS_ID, FIM_MIDDLE_ID, IGNORE, NUM_SPECIAL, PAD_ID
from kiln.recipe import load_recipe

V = NUM_SPECIAL + 64


def packed_batch(B: int = 4, T: int = 32, seed: int = 0, attention: str = "document") -> Batch:
    """Rows of two documents <bos> ... <eos> and some padding."""
    rng = np.random.default_rng(seed)
    tokens = np.full((B, T), PAD_ID)
    seg = np.full((B, T), -1)
    pos = np.zeros((B, T), dtype=np.int64)
    for b in range(B):
        at = 0
        for s, n in enumerate((12, 14)):
            tokens[b, at : at + n] = [BOS_ID, *rng.integers(NUM_SPECIAL, V, n - 2), EOS_ID]
            seg[b, at : at + n], pos[b, at : at + n] = s, np.arange(n)
            at += n
    if attention == "causal":
        pos[:] = np.arange(T)
    t = torch.from_numpy
    return Batch(t(tokens), t(seg), t(pos), attention, int((seg >= 0).sum()))


def model_for(obj, **kw):
    torch.manual_seed(0)
    base = dict(vocab_size=V, max_seq_len=64, n_layer=2, n_head=2, d_model=32, heads=obj.heads)
    return TransformerConfig(**{**base, **kw}).build()


def fit_docs() -> list[np.ndarray]:
    """The documents of ``packed_batch()``, ten times over: every n-gram in them recurs (ERNIE-Gram's lexicon)."""
    b = packed_batch()
    return [b.tokens[r][b.segments[r] == s].numpy() for r in range(b.batch_size) for s in (0, 1)] * 10


def configured(name: str, **kw):
    obj = build_objective(name, **kw)
    obj.configure(vocab_size=V, seq_len=32, total_steps=10, seed=0)
    obj.fit(fit_docs())
    obj.begin_step(0)
    return obj


CASES = {"clm": {}, "mlm": {}, "electra": {}, "fim": {}, "ul2": {}, "ul2-causal": {"attention": "causal"},
         "codegen2": {}, "mp3": {}, "ernie_gram": {"lexicon_size": 64}, "clm_mlm": {},
         "mixture": {"weights": {"clm": 1, "mlm": 1, "fim": 1}}}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("attention", ["document", "causal"])
def test_every_objective_prepares_and_backpropagates(case, attention):
    name = case.split("-")[0]
    obj = configured(name, **CASES[case])
    model = model_for(obj, positions="none" if name == "mp3" else "rope")
    for step in range(2):
        obj.begin_step(step)
        p = obj.prepare(packed_batch(attention=attention))
        assert p.n_targets > 0
        loss, metrics = obj.loss(model, p)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in model.backbone.parameters())
    for head in model.heads.values() if name not in ("clm_mlm", "mixture") else ():  # these may not use all yet
        assert any(q.grad is not None for q in head.parameters())


def test_registry_and_recipes():
    assert set(OBJECTIVES) == {"clm", "mlm", "electra", "fim", "ul2", "codegen2", "mp3", "ernie_gram", "clm_mlm",
                               "mixture", "kd", "salt", "self_distill", "minilm", "reweight", "ernie3"}
    for recipe, name in [("mlm", "mlm"), ("electra", "electra"), ("fim", "fim"), ("ul2", "ul2"),
                         ("codegen2", "codegen2"), ("mp3", "mp3"), ("ernie-gram", "ernie_gram"),
                         ("clm-mlm", "clm_mlm"), ("mixture", "mixture"), ("ernie3", "ernie3")]:
        r = load_recipe(recipe)
        assert r.train.objective == name
        obj = build_objective(name, **r.train.objective_args)
        cfg = TransformerConfig.from_recipe(r.model, 300, r.data.seq_len, heads=obj.heads)
        assert set(cfg.build().heads) == set(obj.heads)
    with pytest.raises(ValueError, match="objective_args"):
        build_objective("mlm", nope=1)


def test_prepare_is_a_function_of_seed_step_and_micro():
    a, b = configured("mlm"), configured("mlm")
    batch = packed_batch()
    first = a.prepare(batch).tensors["tokens"]
    assert torch.equal(first, b.prepare(batch).tensors["tokens"])
    assert not torch.equal(first, a.prepare(batch).tensors["tokens"])  # the next micro-batch draws anew
    b.begin_step(0)
    assert torch.equal(first, b.prepare(batch).tensors["tokens"])


def test_mlm_masks_per_segment_and_uses_bidirectional_attention():
    obj = configured("mlm", ratio=0.3)
    p = obj.prepare(packed_batch())
    sel = p.tensors["targets"] != IGNORE
    assert p.n_targets == int(sel.sum()) == 4 * (round(0.3 * 10) + round(0.3 * 12))


def test_biphasic_switches_at_the_fraction():
    obj = configured("clm_mlm", clm_fraction=0.3)
    picks = []
    for step in range(10):
        obj.begin_step(step)
        picks.append(obj.prepare(packed_batch()).extra["objective"])
    assert picks == ["clm"] * 3 + ["mlm"] * 7


def test_mixture_weights_and_heads():
    obj = configured("mixture", weights={"clm": 3, "mlm": 1}, seed=1)
    assert obj.heads == {"mlm": {}}
    picks = []
    for step in range(400):
        obj.begin_step(step)
        picks.append(obj.prepare(packed_batch(B=1)).extra["objective"])
    assert abs(picks.count("clm") / 400 - 0.75) < 0.06


def mixture_picks(run_seed: int, steps: int = 200, **kw) -> list[str]:
    """The sub-objective a mixture draws for the first micro-batch of each step, configured with ``run_seed``."""
    obj = build_objective("mixture", weights={"clm": 1, "mlm": 1}, **kw)
    obj.configure(vocab_size=V, seq_len=32, total_steps=steps, seed=run_seed)
    picks = []
    for step in range(steps):
        obj.begin_step(step)
        picks.append(obj.prepare(packed_batch(B=1)).extra["objective"])
    return picks


def test_mixture_draws_follow_the_run_seed():
    """Issue 12.6: the draws key on ``train.seed`` (what the trainer passes to ``configure``): one seed
    reproduces, two seeds differ; an explicit ``seed`` argument pins them whatever the run's seed."""
    assert mixture_picks(0) == mixture_picks(0)
    assert mixture_picks(0) != mixture_picks(1)
    assert mixture_picks(0, seed=7) == mixture_picks(1, seed=7)


def test_relayout_truncates_pads_and_drops_the_cut_target():
    batch = packed_batch(B=1)
    grow = lambda ids: Piece(np.concatenate([ids, ids]), np.concatenate([ids[1:], ids, [IGNORE]]))  # noqa: E731
    t = relayout(batch, grow)
    assert t["tokens"].shape == (1, 32)
    assert t["segments"][0].tolist() == [0] * 24 + [1] * 8
    assert t["positions"][0, 24:].tolist() == list(range(8))
    assert t["targets"][0, 31] == IGNORE and t["targets"][0, 30] == t["tokens"][0, 31]


def test_fim_relayout_keeps_document_ends_and_hlp_targets():
    obj = configured("fim", rate=1.0)
    p = obj.prepare(packed_batch(B=2, T=40))
    t = p.tensors
    for b in range(2):
        seg = t["segments"][b]
        starts = [i for i in range(40) if seg[i] >= 0 and (i == 0 or seg[i] != seg[i - 1])]
        assert all(t["tokens"][b, i] == BOS_ID for i in starts)
        assert (t["tokens"][b] == FIM_MIDDLE_ID).sum() >= 1
    hlp = t["hlp_targets"][t["hlp_mask"]]
    assert hlp.max() <= 1.0 and hlp.min() >= 0.0 and (hlp == 0).any()


def test_ul2_prefix_attention_and_targets_only():
    obj = configured("ul2")
    p = obj.prepare(packed_batch(T=64))
    t = p.tensors
    assert t["prefix"].any()
    # a target never sits at a position whose next token is in the prefix
    nxt_prefix = torch.zeros_like(t["prefix"])
    nxt_prefix[:, :-1] = t["prefix"][:, 1:]
    assert (t["targets"][nxt_prefix] == IGNORE).all()


def test_mp3_refuses_a_model_with_positions():
    obj = configured("mp3")
    with pytest.raises(ValueError, match="positions=none"):
        obj.loss(model_for(obj), obj.prepare(packed_batch()))


# ----------------------------------------------------------------------------- effect checks (spec (d) lines)


def train(obj, model, batches, steps: int, lr: float):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        obj.begin_step(step)
        p = obj.prepare(batches(step))
        loss, metrics = obj.loss(model, p)
        (loss / p.n_targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return metrics


def successor_batch(succ: np.ndarray, B: int, T: int, rng: np.random.Generator) -> Batch:
    """Rows of a Markov chain where each of len(succ) tokens has len(succ[0]) allowed successors."""
    x = np.zeros((B, T), dtype=np.int64)
    x[:, 0] = rng.integers(0, len(succ), B)
    for i in range(1, T):
        x[:, i] = succ[x[:, i - 1], rng.integers(0, succ.shape[1], B)]
    seg = np.zeros((B, T), dtype=np.int64)
    t = torch.from_numpy
    return Batch(t(x + NUM_SPECIAL), t(seg), t(np.tile(np.arange(T), (B, 1))), "document", B * T)


@pytest.mark.slow  # measured 20-190 s on the shared 2-core CPU
def test_electra_discriminator_beats_the_constant_predictor():
    """Spec 1(d): vocab 32, 3 successors, length 32, batch 32, 2-layer d=64 discriminator, d=16 generator:
    discriminator BCE < 0.8 x the constant predictor's entropy by step 600."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    succ = rng.integers(0, 32, (32, 3))
    obj = configured("electra", generator_ratio=0.25)
    model = TransformerConfig(vocab_size=NUM_SPECIAL + 32, max_seq_len=32, n_layer=2, n_head=4, d_model=64,
                              heads=obj.heads).build()
    assert model.heads["generator"].backbone.config.d_model == 16
    # lr 1e-3 (ELECTRA-Small uses 5e-4): at 2e-3 the generator becomes near-perfect so fast that only 4% of
    # tokens are replaced and the discriminator sat at 0.79-0.82x the constant; at 1e-3 it measured 0.48x
    train(obj, model, lambda s: successor_batch(succ, 32, 32, rng), 600, 1e-3)
    bce = replaced = n = 0.0
    with torch.no_grad():
        for s in range(10):
            obj.begin_step(1000 + s)
            p = obj.prepare(successor_batch(succ, 32, 32, rng))
            _, m = obj.loss(model, p)
            bce, replaced, n = bce + float(m["disc_bce_sum"]), replaced + float(m["replaced"]), n + p.n_targets
    q = replaced / n
    const = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    print(f"ELECTRA: disc BCE {bce / n:.3f} vs constant-predictor entropy {const:.3f} (replaced rate {q:.3f})")
    assert bce / n < 0.8 * const


@pytest.mark.slow  # measured 20-190 s on the shared 2-core CPU
def test_hlp_head_beats_the_best_constant():
    """Spec 6(d): 40-token Markov documents, 2 layers d=64: HLP L1 below the best constant's (the median) by a
    margin: <= 0.6x (measured 0.113 vs 0.271, 0.42x; a head that learnt nothing sits at ~1.0x)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    succ = rng.integers(0, 32, (32, 3))

    def docs(step: int, B: int = 32) -> Batch:
        b = successor_batch(succ, B, 64, rng)
        b.tokens[:, 0], b.tokens[:, 39] = BOS_ID, EOS_ID
        b.tokens[:, 40:], b.segments[:, 40:], b.positions[:, 40:] = PAD_ID, -1, 0
        return b

    obj = configured("fim", rate=1.0)
    model = TransformerConfig(vocab_size=NUM_SPECIAL + 32, max_seq_len=64, n_layer=2, n_head=4, d_model=64,
                              heads=obj.heads).build()
    train(obj, model, docs, 150, 3e-3)
    obj.begin_step(1000)
    p = obj.prepare(docs(0, 256))
    with torch.no_grad():
        _, m = obj.loss(model, p)
    targets = p.tensors["hlp_targets"][p.tensors["hlp_mask"]]
    l1, best_const = float(m["hlp_l1_sum"]) / targets.numel(), float((targets - targets.median()).abs().mean())
    print(f"HLP: L1 {l1:.3f} vs best constant {best_const:.3f} ({l1 / best_const:.2f}x)")
    assert l1 <= 0.6 * best_const


def masked_loss_after(name: str, steps: int, succ: np.ndarray, **kw) -> float:
    """Train objective ``name`` for ``steps`` steps (2 layers, d=32, batch 16 x 32 Markov rows, lr 2e-3, seeded),
    then its model's MLM loss per masked token (30%) on 8 held-out batches, the same masks for every model."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    obj = build_objective(name, **kw)
    obj.configure(vocab_size=NUM_SPECIAL + 32, seq_len=32, total_steps=steps, seed=0)
    model = TransformerConfig(vocab_size=NUM_SPECIAL + 32, max_seq_len=32, n_layer=2, n_head=4, d_model=32,
                              heads=obj.heads).build()
    train(obj, model, lambda s: successor_batch(succ, 16, 32, rng), steps, 2e-3)
    ev = build_objective("mlm", ratio=0.3)
    ev.configure(vocab_size=NUM_SPECIAL + 32, seq_len=32, total_steps=1, seed=5)
    held_out = np.random.default_rng(99)
    total = n = 0.0
    with torch.no_grad():
        for s in range(8):
            ev.begin_step(s)
            p = ev.prepare(successor_batch(succ, 64, 32, held_out))
            loss, _ = ev.loss(model, p)
            total, n = total + float(loss), n + p.n_targets
    return total / n


@pytest.mark.slow  # ~26 s on the shared 2-core CPU (one thread)
def test_clm_phase_helps_the_mlm_phase():
    """Spec 4(d), the effect: CLM300 -> MLM300 reaches a lower masked-token loss than the MLM300 phase alone
    (measured 1.44 vs 1.64; CLM-only 600 steps: 5.02, so the MLM phase is what makes it an encoder). The spec's
    stronger claim, within 0.05 of MLM-only for all 600 steps, does not hold at this size: MLM600 reached 1.03
    (lr 2e-3; 0.96 at 3e-3 vs 1.57 biphasic); see docs/methods.md."""
    succ = np.random.default_rng(0).integers(0, 32, (32, 3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is ~4x faster than two contended ones
    try:
        biphasic = masked_loss_after("clm_mlm", 600, succ, clm_fraction=0.5, mlm_ratio=0.3)
        mlm_phase_only = masked_loss_after("mlm", 300, succ, ratio=0.3)
    finally:
        torch.set_num_threads(threads)
    print(f"CLM->MLM: masked loss {biphasic:.3f} vs MLM phase alone {mlm_phase_only:.3f}")
    assert biphasic <= mlm_phase_only - 0.1


@pytest.mark.slow  # measured 20-190 s on the shared 2-core CPU
def test_mp3_position_accuracy_beats_chance_threefold():
    """Spec 5(d): sorted distinct-token sequences (vocab 64, length 16), 2 layers: accuracy >= 3 x chance."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)

    def rows(step: int, B: int = 32) -> Batch:
        x = np.sort(np.stack([rng.choice(64, 16, replace=False) for _ in range(B)]), axis=1) + NUM_SPECIAL
        t = torch.from_numpy
        return Batch(t(x), t(np.zeros_like(x)), t(np.tile(np.arange(16), (B, 1))), "document", x.size)

    obj = configured("mp3")
    model = TransformerConfig(vocab_size=NUM_SPECIAL + 64, max_seq_len=16, n_layer=2, n_head=4, d_model=64,
                              positions="none", heads=obj.heads).build()
    train(obj, model, rows, 100, 3e-3)
    obj.begin_step(1000)
    p = obj.prepare(rows(0, 256))
    with torch.no_grad():
        _, m = obj.loss(model, p)
    acc = float(m["position_correct"]) / p.n_targets
    print(f"MP3: position accuracy {acc:.3f} vs chance {1 / 16:.4f}")
    assert acc >= 3 / 16
