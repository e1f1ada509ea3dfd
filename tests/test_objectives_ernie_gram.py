"""ERNIE-Gram objective: slot isolation, padding, targets, 15% masking on packed batches, checkpoints, resume, and
the spec's (d) effect check (the coarse head beats the majority baseline on text with recurring 3-grams)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.data.loader import Batch, PackedLoader
from kiln.data.packing import pack
from kiln.data.shards import ShardWriter, TokenShard
from kiln.model.config import TransformerConfig
from kiln.model.io import load_pretrained, save_pretrained
from kiln.objectives import build_objective
from kiln.objectives.ernie_gram import ERNIEGram, lexicon_sizes
from kiln.objectives.transforms.common import BOS_ID, EOS_ID, IGNORE, MASK_ID, NUM_SPECIAL, PAD_ID
from kiln.objectives.transforms.ernie_gram import fine_slot_attention

V = NUM_SPECIAL + 200
PLANTED = [tuple(int(x) for x in g) for g in np.random.default_rng(7).integers(NUM_SPECIAL, V, size=(10, 3))]


def planted_docs(n_docs: int, seed: int = 0, lo: int = 20, hi: int = 60) -> list[np.ndarray]:
    """<bos> ... <eos> documents of random tokens with a planted 3-gram at ~25% of the draws."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        out, length = [BOS_ID], int(rng.integers(lo, hi))
        while len(out) < length:
            planted = rng.random() < 0.25
            out += PLANTED[int(rng.integers(len(PLANTED)))] if planted else [int(rng.integers(NUM_SPECIAL, V))]
        docs.append(np.array([*out, EOS_ID], dtype=np.int64))
    return docs


def as_batch(docs: list[np.ndarray], T: int, attention: str = "document") -> Batch:
    """Pack documents greedily (in order) into rows of ``T`` tokens, padding the rest."""
    rows: list[list[np.ndarray]] = [[]]
    for d in docs:
        d = d[:T]
        if sum(map(len, rows[-1])) + len(d) > T:
            rows.append([])
        rows[-1].append(d)
    B = len(rows)
    tokens, seg, pos = np.full((B, T), PAD_ID), np.full((B, T), -1), np.zeros((B, T), dtype=np.int64)
    for b, row in enumerate(rows):
        at = 0
        for s, d in enumerate(row):
            tokens[b, at : at + len(d)], seg[b, at : at + len(d)], pos[b, at : at + len(d)] = d, s, np.arange(len(d))
            at += len(d)
    if attention == "causal":
        pos[:] = np.arange(T)
    t = torch.from_numpy
    return Batch(t(tokens), t(seg), t(pos), attention, int((seg >= 0).sum()))


def fitted(seed: int = 0, vocab: int = V, docs: list[np.ndarray] | None = None, **kw) -> ERNIEGram:
    obj = build_objective("ernie_gram", **{"lexicon_size": 60, "min_count": 5, **kw})
    obj.configure(vocab_size=vocab, seq_len=64, total_steps=10, seed=seed)
    obj.fit(planted_docs(300) if docs is None else docs)
    obj.begin_step(0)
    return obj


def tiny_model(obj: ERNIEGram, max_seq_len: int = 64, vocab: int = V, d_model: int = 32):
    torch.manual_seed(0)
    return TransformerConfig(vocab_size=vocab, max_seq_len=max_seq_len, n_layer=2, n_head=2, d_model=d_model,
                             attention="bidirectional", heads=obj.heads).build()


@pytest.fixture(scope="module")
def obj() -> ERNIEGram:
    return fitted(ratio=0.3)


def test_lexicon_from_fit_holds_the_planted_trigrams_and_sizes_split(obj):
    assert set(PLANTED) <= {g for g in obj.lexicon.ngrams if len(g) == 3}
    assert lexicon_sizes(30000, 3) == {2: 20000, 3: 10000} and lexicon_sizes(10, 2) == {2: 10}
    assert obj.heads == {"mlm": {}, "ngram": {"n_ngrams": 60}}
    with pytest.raises(RuntimeError, match="fit"):
        unfitted = build_objective("ernie_gram")
        unfitted.configure(vocab_size=V, seq_len=64, total_steps=1, seed=0)
        unfitted.prepare(as_batch(planted_docs(2), 64))
    whole = fitted(max_n=1, ratio=0.3)  # whole-token masking: no n-grams, coarse = fine
    p = whole.prepare(as_batch(planted_docs(8), 64))
    assert len(whole.lexicon) == 0 and p.extra["n_coarse"] == p.extra["n_fine"] > 0


def test_layout_rebuilds_the_rows_and_targets_sit_on_masks_and_slots(obj):
    """Causal data attention (positions 0..T-1 per row): every row is the collapsed sequence + its fine slots;
    writing kept tokens and slot targets back at their positions recovers the batch exactly."""
    batch = as_batch(planted_docs(12, seed=1), 64, attention="causal")
    p = obj.prepare(batch)
    t = p.tensors
    coarse, fine = t["coarse_targets"] != IGNORE, t["fine_targets"] != IGNORE
    assert p.n_targets == int(coarse.sum() + fine.sum()) and not (coarse & fine).any()
    assert (t["tokens"][coarse] == MASK_ID).all() and (t["tokens"][fine] == MASK_ID).all()
    assert (t["coarse_targets"][coarse] >= V).any()  # some masked units are lexicon n-grams
    for b in range(batch.batch_size):
        real = batch.segments[b] >= 0
        kept = ~coarse[b] & ~fine[b] & (t["tokens"][b] != PAD_ID)
        rec = torch.full((64,), -1)
        rec[t["positions"][b][kept]] = t["tokens"][b][kept]
        rec[t["positions"][b][fine[b]]] = t["fine_targets"][b][fine[b]]
        assert torch.equal(rec[real], batch.tokens[b][real])
        collapsed = torch.nonzero(~fine[b] & (t["tokens"][b] != PAD_ID)).flatten().tolist()
        starts = t["positions"][b][collapsed].tolist() + [int(real.sum())]
        for k, j in enumerate(collapsed):  # a mask's n-gram runs to the next collapsed token's position
            if coarse[b, j]:
                assert int(t["coarse_targets"][b, j]) == obj.lexicon.coarse_id(rec[starts[k] : starts[k + 1]])


def test_mask_is_block_diagonal_slot_attention(obj):
    """Per packed document: collapsed tokens see their document's collapsed tokens, a slot sees those and itself
    (``fine_slot_attention``); nothing crosses documents; padding sees only itself."""
    p = obj.prepare(as_batch(planted_docs(12, seed=2), 96))
    t = p.tensors
    for b in range(t["tokens"].shape[0]):
        mask, fine, pad = t["mask"][b], t["fine_targets"][b] != IGNORE, t["tokens"][b] == PAD_ID
        at, n_real = 0, int((~pad).sum())
        while at < n_real:  # a document: its collapsed run, then its slot run
            C = S = 0
            while at + C < n_real and not fine[at + C]:
                C += 1
            while at + C + S < n_real and fine[at + C + S]:
                S += 1
            block = slice(at, at + C + S)
            assert torch.equal(mask[block, block], fine_slot_attention(C, S))
            assert mask[block].sum() == fine_slot_attention(C, S).sum()  # and nothing outside its block
            at += C + S
        assert torch.equal(mask[pad], torch.eye(len(pad), dtype=torch.bool)[pad])
        assert not mask[~pad][:, pad].any()


def test_fine_slots_do_not_see_each_other_and_padding_is_inert(obj):
    model = tiny_model(obj, max_seq_len=96)
    p = obj.prepare(as_batch(planted_docs(6, seed=3), 96))
    t = p.tensors
    fine = t["fine_targets"] != IGNORE
    b = int(torch.argmax(fine.sum(1)))
    slots = torch.nonzero(fine[b]).flatten()
    assert len(slots) >= 2

    def hidden(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.backbone(tokens, t["positions"], mask=t["mask"])

    base = hidden(t["tokens"])
    poked = t["tokens"].clone()
    poked[b, slots[0]] = NUM_SPECIAL + 5  # another input at one slot
    out = hidden(poked)
    changed = (out - base).abs().amax(-1)[b] > 1e-6
    assert changed[slots[0]] and int(changed.sum()) == 1  # no other slot, no collapsed token moved
    pad = t["tokens"] == PAD_ID
    assert pad.any()
    poked = torch.where(pad, NUM_SPECIAL + 9, t["tokens"])
    assert torch.allclose(hidden(poked)[~pad], base[~pad], atol=1e-6)
    assert not (t["coarse_targets"][pad] != IGNORE).any() and not (t["fine_targets"][pad] != IGNORE).any()


def test_loss_is_the_coarse_plus_fine_cross_entropy_on_the_targets_only(obj):
    model = tiny_model(obj, max_seq_len=96)
    p = obj.prepare(as_batch(planted_docs(8, seed=4), 96))
    loss, m = obj.loss(model, p)
    t = p.tensors
    hidden = model.backbone(t["tokens"], t["positions"], mask=t["mask"])
    emb = model.backbone.tok_emb.weight
    total = torch.zeros(())
    for name, head, n_used in (("coarse_targets", "ngram", len(obj.lexicon)), ("fine_targets", "mlm", None)):
        for b, j in (t[name] != IGNORE).nonzero().tolist():
            args = (hidden[b, j][None], emb) + ((n_used,) if n_used is not None else ())
            total = total + F.cross_entropy(model.heads[head](*args), t[name][b, j][None], reduction="sum")
    assert torch.allclose(loss, total, rtol=1e-5)
    assert int(m["coarse_n"] + m["fine_n"]) == p.n_targets
    loss.backward()
    assert model.heads["ngram"].ngrams.weight.grad.abs().sum() > 0
    assert model.heads["ngram"].ngrams.weight.grad[len(obj.lexicon):].abs().sum() == 0  # unused rows idle


def test_rows_may_outgrow_the_context_but_not_its_positions():
    """Full 64-token rows grow by one slot per masked unit; positions stay < max_seq_len = seq_len."""
    obj = fitted(ratio=0.15)
    p = obj.prepare(as_batch(planted_docs(40, seed=5, lo=60, hi=62), 64))
    assert p.tensors["tokens"].shape[1] > 64 and int(p.tensors["positions"].max()) < 64
    model = tiny_model(obj, max_seq_len=64)
    loss, _ = obj.loss(model, p)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.backbone(p.tensors["tokens"])  # implied positions still may not exceed the context


def test_masked_fraction_on_packed_batches_and_fit_on_a_shard(tmp_path):
    prefix = tmp_path / "train"
    with ShardWriter(prefix, "uint16") as w:
        for d in planted_docs(600, seed=6, lo=30, hi=200):
            w.add(d)
    shard = TokenShard(prefix)
    obj = fitted(docs=shard)
    again = fitted(docs=shard, lexicon_tokens=shard.n_tokens // 2)  # a sample: deterministic, still finds them
    assert set(PLANTED) <= set(again.lexicon.ngrams)
    assert again.lexicon.ngrams == fitted(docs=shard, lexicon_tokens=shard.n_tokens // 2).lexicon.ngrams
    loader = PackedLoader(shard, pack(shard.doc_lengths(), 128, "best_fit"), pad_id=PAD_ID, seed=0)
    masked = eligible = ngram_units = units = 0
    for step in range(20):
        obj.begin_step(step)
        for batch in loader.next_step(16, 8):
            p = obj.prepare(batch)
            masked, eligible = masked + p.extra["masked_tokens"], eligible + p.extra["eligible_tokens"]
            c = p.tensors["coarse_targets"]
            units, ngram_units = units + int((c != IGNORE).sum()), ngram_units + int((c >= V).sum())
            assert p.tensors["tokens"].shape[1] <= 128 + int((c != IGNORE).sum(1).max())
    frac = masked / eligible
    print(f"ERNIE-Gram masked fraction {frac:.4f} over {eligible} tokens; {ngram_units / units:.2f} of units n-grams")
    assert abs(frac - 0.15) <= 0.01 and ngram_units > 0


def test_prepare_is_a_function_of_seed_step_and_micro():
    a, b = fitted(seed=3), fitted(seed=3)
    batch = as_batch(planted_docs(10, seed=8), 64)
    first = a.prepare(batch).tensors
    same = b.prepare(batch).tensors
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not torch.equal(first["tokens"], a.prepare(batch).tensors["tokens"])  # next micro-batch draws anew
    b.begin_step(0)
    assert all(torch.equal(first[k], v) for k, v in b.prepare(batch).tensors.items())
    assert a.lexicon.ngrams == b.lexicon.ngrams  # fit again (resume): the same lexicon


def test_mixture_fits_its_members():
    mix = build_objective("mixture", weights={"mlm": 1, "ernie_gram": 1}, args={"ernie_gram": {"lexicon_size": 9}})
    mix.configure(vocab_size=V, seq_len=64, total_steps=4, seed=0)
    mix.fit(planted_docs(100))
    assert mix.heads == {"mlm": {}, "ngram": {"n_ngrams": 9}} and len(mix.objectives["ernie_gram"].lexicon) > 0


def test_checkpoint_round_trip_keeps_the_coarse_head(obj, tmp_path):
    model = tiny_model(obj, max_seq_len=96)
    with torch.no_grad():
        model.heads["ngram"].ngrams.weight.add_(1.0)
    p = obj.prepare(as_batch(planted_docs(6, seed=9), 96))
    before, _ = obj.loss(model, p)
    loaded = load_pretrained(save_pretrained(model, tmp_path / "m"))
    assert loaded.config.heads == {"mlm": {}, "ngram": {"n_ngrams": 60}}
    assert torch.equal(loaded.heads["ngram"].ngrams.weight, model.heads["ngram"].ngrams.weight)
    after, _ = obj.loss(loaded, p)
    assert torch.allclose(before, after)


# ----------------------------------------------------------------------------- effect check (spec 3(d))



@pytest.mark.slow  # measured ~30 s on the shared 2-core CPU
def test_coarse_head_beats_the_majority_baseline_on_recurring_trigrams(one_thread):
    """Spec 3(d): documents drawn from a Markov chain over 32 single tokens and 8 planted 3-grams (3 successors
    and 3 predecessors per unit, so every unit is equally frequent); lexicon fitted on the corpus; 2 layers,
    d=64; 200 steps of 32 x 64 tokens, lr 2e-3. Coarse accuracy on held-out masked units beats the majority
    baseline (the eval set's most frequent coarse target)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    vocab = NUM_SPECIAL + 32
    units = [(NUM_SPECIAL + i,) for i in range(32)] + [tuple(int(x) for x in rng.choice(32, 3, replace=False)
                                                              + NUM_SPECIAL) for _ in range(8)]
    succ = np.stack([rng.permutation(len(units)) for _ in range(3)], 1)  # 3 successors and 3 predecessors each

    def docs(n: int) -> list[np.ndarray]:
        out = []
        for _ in range(n):
            u, ids = int(rng.integers(len(units))), [BOS_ID]
            while len(ids) < 63:
                ids += units[u]
                u = int(succ[u, rng.integers(3)])
            out.append(np.array([*ids[:63], EOS_ID]))
        return out

    obj = fitted(vocab=vocab, docs=docs(400), lexicon_size=48)
    assert {u for u in units if len(u) == 3} <= set(obj.lexicon.ngrams)
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=vocab, max_seq_len=64, n_layer=2, n_head=4, d_model=64,
                              attention="bidirectional", heads=obj.heads).build()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(200):
        obj.begin_step(step)
        p = obj.prepare(as_batch(docs(32), 64))
        loss, _ = obj.loss(model, p)
        (loss / p.n_targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    obj.begin_step(10_000)
    p = obj.prepare(as_batch(docs(256), 64))
    with torch.no_grad():
        _, m = obj.loss(model, p)
    targets = p.tensors["coarse_targets"][p.tensors["coarse_targets"] != IGNORE]
    acc = float(m["coarse_correct"]) / len(targets)
    majority = float(torch.bincount(targets).max()) / len(targets)
    ngram_share = float((targets >= vocab).float().mean())
    print(f"ERNIE-Gram coarse accuracy {acc:.3f} vs majority baseline {majority:.3f} over {len(targets)} masked "
          f"units ({ngram_share:.2f} n-grams), fine accuracy {float(m['fine_correct']) / int(m['fine_n']):.3f}, "
          f"{time.perf_counter() - t0:.1f} s")
    assert ngram_share > 0.1
    # spec: beats the majority baseline; measured 0.50 vs 0.05, so demand a clear margin
    assert acc > 2 * majority, f"coarse accuracy {acc:.3f} vs majority baseline {majority:.3f}"
