"""The context-gain task (kiln/eval/tasks/context_gain.py): triples from held-out documents only, related closer
than unrelated, deterministic; scoring mechanics on stub models (a context-copying model gains, a model that
ignores context or an irrelevant "related" document does not); results in the eval metrics layout."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kiln.corpus.clean import split_score
from kiln.eval.tasks import builders
from kiln.eval.tasks.builders import TASKS, build_task
from kiln.eval.tasks.context_gain import (
    DUP_COSINE,
    KIND,
    ContextGainSet,
    Triple,
    score_context_gain,
    target_bits,
    triple_tokens,
)
from kiln.eval.tasks.score import Scorer
from kiln.eval.tasks.suite import score_task
from kiln.experiments.collect import metric_value
from kiln.recipe import load_recipe
from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS, SPECIAL_TOKENS

CPU = torch.device("cpu")
NAMES = ["context-gain-shakespeare", "context-gain-pydocs"]


@pytest.fixture(scope="module")
def demo():
    return load_recipe("demo", [])


def _key(ts: ContextGainSet) -> list[tuple]:
    return [(t.target_id, t.related_id, t.unrelated_id, t.target, t.related, t.unrelated) for t in ts.triples]


@pytest.mark.parametrize("name", NAMES)
def test_triples_from_held_out_documents(demo, name):
    assert name in TASKS
    ts = build_task(name, demo, max_items=30, seed=0)
    assert isinstance(ts, ContextGainSet) and ts.kind == KIND and len(ts.triples) >= 20
    for d in ts.doc_ids():  # every document of every triple is one the hash split holds out
        assert split_score(d, demo.corpus.split_seed) < demo.corpus.val_fraction, d
    assert len({t.target_id for t in ts.triples}) == len(ts.triples)
    for t in ts.triples:
        assert len({t.target_id, t.related_id, t.unrelated_id}) == 3
        assert t.cos_unrelated < t.cos_related <= DUP_COSINE
    rel = np.array([t.cos_related for t in ts.triples])
    unrel = np.array([t.cos_unrelated for t in ts.triples])
    gap = float(rel.mean() - unrel.mean())
    # measured (demo split, 5% held out): shakespeare 0.30 vs 0.19, pydocs 0.28 vs 0.11
    assert gap > 0.08, (rel.mean(), unrel.mean())
    assert ts.info["n_triples"] == len(ts.triples) and ts.info["held_out_docs"] >= ts.info["n_candidates"]
    # A shares B's play / module more often than C (weakly: hashing bag-of-words, few held-out documents)
    assert ts.info["same_group_related"] > ts.info["same_group_unrelated"], ts.info
    if name == "context-gain-shakespeare":
        from kiln.eval.tasks.pools import load_pool

        edition = {d["id"]: d["edition"] for d in load_pool("shakespeare", demo).docs}
        assert all(edition[d] == "modern" for d in ts.doc_ids())


def test_triples_deterministic_and_seeded(demo):
    from kiln.eval.tasks import pools

    a = build_task("context-gain-pydocs", demo, max_items=25, seed=0)
    pools._MEMO.clear()  # rebuilt from the cache file: the same triples
    b = build_task("context-gain-pydocs", demo, max_items=25, seed=0)
    c = build_task("context-gain-pydocs", demo, max_items=25, seed=1)
    assert _key(a) == _key(b)
    assert [t.target_id for t in c.triples] != [t.target_id for t in a.triples]


def test_train_documents_never_used(demo, monkeypatch):
    full = build_task("context-gain-shakespeare", demo, max_items=1000, seed=0)
    used = sorted(full.doc_ids())
    in_train = set(used[::2])  # pretend the run trained on half of the documents the task used
    monkeypatch.setattr(builders, "train_doc_ids", lambda run: in_train)
    ts = build_task("context-gain-shakespeare", demo, SimpleNamespace(root="fake-run"), max_items=1000, seed=0)
    assert ts.doc_ids() and not ts.doc_ids() & in_train
    assert ts.info["dropped_in_train"] >= len(in_train)


# --------------------------------------------------------------------------------------------- scoring stubs

WORDS = {topic: [f"{topic}{i}" for i in range(40)] for topic in ("red", "green", "blue", "gold", "grey", "pink")}


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for words in WORDS.values():
        for w in words:
            vocab[w] = len(vocab)
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok, len(vocab)


class CopyModel(torch.nn.Module):
    """A causal stub LM: the logit of a token is ``alpha`` if it appeared so far, else 0 (alpha 0: uniform)."""

    def __init__(self, vocab: int, max_seq_len: int, alpha: float):
        super().__init__()
        self.vocab, self.alpha = vocab, alpha
        self.config = SimpleNamespace(max_seq_len=max_seq_len)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = torch.nn.functional.one_hot(tokens, self.vocab).float().cumsum(dim=1).clamp(max=1.0)
        counts[..., : len(SPECIAL_TOKENS)] = 0.0
        return self.alpha * counts


def _text(topic: str, n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS[topic][:20]) for _ in range(n))


def _triples(n: int, irrelevant: bool) -> list[Triple]:
    """Target from one topic; "related" from the same topic (or, ``irrelevant``, from a third topic); unrelated
    from another topic. Texts of different lengths so context counts differ between triples."""
    rng = random.Random(7)
    topics = list(WORDS)
    out = []
    for i in range(n):
        t, u, z = rng.sample(topics, 3)
        rel = z if irrelevant else t
        out.append(Triple(f"b{i}", _text(t, 30 + i % 7, rng), f"a{i}", _text(rel, 40 + i % 11, rng), f"c{i}",
                          _text(u, 45, rng), 0.5, 0.1))
    return out


def _scorer(alpha: float, width: int = 64) -> tuple[Scorer, np.ndarray]:
    tok, vocab = _tokenizer()
    token_bytes = np.array([0] * len(SPECIAL_TOKENS) + [5] * (vocab - len(SPECIAL_TOKENS)), dtype=np.int64)
    return Scorer(CopyModel(vocab, width, alpha), tok, CPU), token_bytes


def _set(triples: list[Triple]) -> ContextGainSet:
    return ContextGainSet("context-gain-toy", KIND, "toy", triples=triples)


def test_copy_model_gains_from_related_context():
    scorer, tb = _scorer(alpha=3.0)
    res, rows = score_context_gain(scorer, _set(_triples(40, irrelevant=False)), tb)
    assert res["kind"] == KIND and res["n_triples"] == 40 == len(rows)
    assert res["bpb_related"] < res["bpb_none"] and res["bpb_related"] < res["bpb_unrelated"]
    assert res["gain"] > 0.1 * res["bpb_unrelated"], res  # a large effect, not noise
    lo, hi = res["gain_ci"]
    assert 0 < lo <= res["gain"] <= hi
    assert res["gain"] == pytest.approx(res["bpb_unrelated"] - res["bpb_related"])
    assert 30 < res["target_tokens"] <= 31 and 30 <= res["context_tokens"] <= 64 - 2 - 30  # n = (64 - 2) // 2
    assert all(r["bits_related"] < r["bits_unrelated"] for r in rows)


def test_no_gain_without_relevant_context():
    scorer, tb = _scorer(alpha=3.0)
    res, _ = score_context_gain(scorer, _set(_triples(40, irrelevant=True)), tb)  # "related" = a third topic
    lo, hi = res["gain_ci"]
    assert abs(res["gain"]) < 0.02 * res["bpb_unrelated"] and lo < 0 < hi, res
    blind, tb = _scorer(alpha=0.0)  # a model that ignores context: exactly no gain
    res, _ = score_context_gain(blind, _set(_triples(40, irrelevant=False)), tb)
    assert res["gain"] == pytest.approx(0.0, abs=1e-9)
    n_vocab = blind.model.vocab
    assert res["bpb_related"] == pytest.approx(math.log2(n_vocab) / 5, rel=1e-6)  # uniform: log2 V bits / 5 bytes


def test_sequences_and_batched_bits():
    scorer, _ = _scorer(alpha=1.0, width=32)
    t = _triples(1, irrelevant=False)[0]
    x = triple_tokens(scorer, t)
    bos, eos = SPECIAL_IDS[BOS], SPECIAL_IDS[EOS]
    b, m = x["target"], x["context_tokens"][0]
    assert len(b) == 15 and m == 32 - 2 - 15
    assert len(x["related"]) == len(x["unrelated"]) == 32 and x["none"] == [bos, *b]
    for k in ("related", "unrelated"):
        seq = x[k]
        assert seq[0] == bos and seq[m + 1] == bos and seq[-len(b):] == b
    assert x["related"][m] == eos  # the context is the related document's end, as concat packing lays it out
    assert x["related"][1:m + 1] == [*scorer.encode(t.related, special=False), eos][-m:]
    seqs = [x["related"], x["none"], x["unrelated"]]
    batched = target_bits(scorer.model, CPU, seqs, [len(b)] * 3)
    for s, got in zip(seqs, batched, strict=True):
        one = target_bits(scorer.model, CPU, [s], [len(b)])[0]
        lp = torch.log_softmax(scorer.model(torch.tensor([s[:-1]])).float(), -1)[0]
        naive = -sum(float(lp[len(s) - 1 - len(b) + j, tok]) for j, tok in enumerate(b)) / math.log(2)
        assert got == pytest.approx(one, rel=1e-6) and got == pytest.approx(naive, rel=1e-5)


def test_result_lands_in_metrics_layout(tmp_path):
    scorer, tb = _scorer(alpha=3.0)
    ts = _set(_triples(12, irrelevant=False))
    res = score_task(scorer, ts, tb, tmp_path, "context-gain-toy")
    assert json.loads((tmp_path / "context-gain-toy.task.json").read_text())["doc_ids"] == sorted(ts.doc_ids())
    rows = [json.loads(line) for line in (tmp_path / "context-gain-toy.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"bits_related", "bits_unrelated", "bits_none"} <= set(rows[0])
    metrics = {"tasks": {"context-gain-toy": res}}
    for key in ("gain", "bpb_related", "bpb_unrelated", "bpb_none", "n_triples"):
        assert metric_value(metrics, f"tasks/context-gain-toy/{key}") == pytest.approx(res[key])
    again = score_task(scorer, ts, tb)
    assert again == res  # deterministic, bootstrap interval included


def test_recipe_accepts_task_names():
    r = load_recipe("demo", ["eval.tasks=[context-gain-shakespeare, context-gain-pydocs, bpb-pydocs]"])
    assert list(r.eval.tasks)[:2] == NAMES


@pytest.mark.slow
def test_run_tasks_on_a_trained_model(tiny_trained, tmp_path, logs):
    """The eval path with a real (tiny) kiln model and tokenizer: results, per-triple rows and the log line."""
    from kiln.eval.stage import final_checkpoint
    from kiln.eval.tasks.suite import run_tasks
    from kiln.model.load import load_model

    run = tiny_trained.run
    model = load_model(final_checkpoint(run), CPU)
    res = run_tasks(tiny_trained.recipe, run, model, CPU, ["context-gain-pydocs"], tmp_path, max_items=12)
    r = res["context-gain-pydocs"]
    assert r["kind"] == KIND and r["n_triples"] == 12 and r["target_tokens"] <= (64 - 2) // 2
    values = [r[k] for k in ("bpb_related", "bpb_unrelated", "bpb_none", "gain")]
    assert all(math.isfinite(v) for v in values) and 0 < r["bpb_none"] < 20
    assert r["gain_ci"][0] <= r["gain"] <= r["gain_ci"][1]
    assert len((tmp_path / "context-gain-pydocs.jsonl").read_text().splitlines()) == 12
    assert "task context-gain-pydocs: gain" in logs.readouterr().err
