"""Synthetic token sources (tokens.synthetic): determinism, shapes, the generators' structure, their optima."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kiln.data.loader import PackedLoader
from kiln.data.packing import pack
from kiln.data.shards import open_split
from kiln.data.synthetic import (
    markov_chain,
    markov_entropy_rate,
    recall_answer_positions,
    write_synthetic,
)
from kiln.recipe import N_RESERVED_IDS, RecipeError, load_recipe
from kiln.tokenizer.special import BOS, EOS, PAD, SPECIAL_IDS, SPECIAL_TOKENS

MARKOV = "{generator: markov, vocab_size: 145, n_train: 300, n_val: 40, doc_len: 50, concentration: 0.2, seed: 3}"
RECALL = "{generator: associative_recall, vocab_size: 177, n_train: 200, n_val: 30, n_keys: 24, n_pairs: 6, " \
         "n_queries: 5, seed: 1}"


def _cfg(spec: str, *extra: str):
    return load_recipe("demo", [f"tokens.synthetic={spec}", *extra]).tokens.synthetic


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def markov(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("markov")
    return out, write_synthetic(_cfg(MARKOV), out)


@pytest.fixture(scope="module")
def recall(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("recall")
    return out, write_synthetic(_cfg(RECALL), out)


def test_reserved_ids_are_the_special_tokens():
    assert len(SPECIAL_TOKENS) == N_RESERVED_IDS


@pytest.mark.parametrize("spec", [MARKOV, RECALL])
def test_deterministic_and_seeded(spec, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    assert write_synthetic(_cfg(spec), a) == write_synthetic(_cfg(spec), b)
    assert _files(a) == _files(b)
    write_synthetic(_cfg(spec.replace("seed: ", "seed: 1")), c)
    assert _files(c)["train-00000.bin"] != _files(a)["train-00000.bin"]
    assert _files(c)["val-00000.bin"] != _files(c)["train-00000.bin"][: len(_files(c)["val-00000.bin"])]


def test_markov_shapes_and_files(markov):
    out, stats = markov
    cfg = _cfg(MARKOV)
    assert stats["vocab_size"] == 145 and stats["dtype"] == "uint16"
    for split, n in (("train", 300), ("val", 40)):
        shards = open_split(out, split)
        assert shards.n_docs == n == stats[split]["n_docs"]
        assert np.all(shards.doc_lengths() == cfg.doc_len + 2)
        assert stats[split]["n_tokens"] == n * (cfg.doc_len + 2) and stats[split]["n_bytes"] == n * cfg.doc_len
        docs = np.stack([shards.doc(i) for i in range(n)])
        assert np.all(docs[:, 0] == SPECIAL_IDS[BOS]) and np.all(docs[:, -1] == SPECIAL_IDS[EOS])
        assert docs[:, 1:-1].min() >= N_RESERVED_IDS and docs[:, 1:-1].max() < 145
    token_bytes = np.load(out / "token_bytes.npy")
    assert len(token_bytes) == 145 and token_bytes[:N_RESERVED_IDS].sum() == 0
    assert np.all(token_bytes[N_RESERVED_IDS:] == 1)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["vocab_size"] == 145 and vocab["data_ids"] == [N_RESERVED_IDS, 145]


def test_markov_follows_its_chain(markov):
    """The documents are draws of the chain: their empirical transition entropy matches its entropy rate, and the
    reported optimum (the true chain's loss on val) sits well below the unigram baseline."""
    out, stats = markov
    cfg = _cfg(MARKOV)
    chain = markov_chain(cfg)
    assert np.allclose(chain.sum(axis=1), 1.0)
    shards = open_split(out, "train")
    sym = np.stack([shards.doc(i)[1:-1] for i in range(shards.n_docs)]) - N_RESERVED_IDS
    a, b = sym[:, :-1].ravel(), sym[:, 1:].ravel()
    assert np.all(chain[a, b] > 0)  # no transition the chain cannot make
    empirical = -np.log(chain[a, b]).mean()  # the chain's cross-entropy on its own samples ~ entropy rate
    assert empirical == pytest.approx(markov_entropy_rate(chain), rel=0.05)
    assert stats["entropy_rate"] == pytest.approx(markov_entropy_rate(chain))
    per_target_to_bpb = (cfg.doc_len + 1) / (math.log(2) * cfg.doc_len)  # doc_len + 1 targets, doc_len bytes
    assert stats["optimal_bpb"] == pytest.approx(stats["optimal_loss"] * per_target_to_bpb)
    assert stats["optimal_bpb"] < 0.8 * stats["unigram_bpb"]
    # a counted bigram model of train, evaluated on val, lands between the optimum and the unigram baseline
    counts = np.ones_like(chain)
    np.add.at(counts, (a, b), 1)
    val = open_split(out, "val")
    vs = np.stack([val.doc(i)[1:-1] for i in range(val.n_docs)]) - N_RESERVED_IDS
    bigram_bits = -np.log2((counts / counts.sum(1, keepdims=True))[vs[:, :-1], vs[:, 1:]]).mean()
    assert stats["optimal_bpb"] * 0.9 < bigram_bits < stats["unigram_bpb"]


def test_recall_structure(recall):
    out, stats = recall
    cfg = _cfg(RECALL)
    shards = open_split(out, "train")
    width = 2 * (cfg.n_pairs + cfg.n_queries) + 2
    assert np.all(shards.doc_lengths() == width)
    keys_hi = N_RESERVED_IDS + cfg.n_keys
    answers = recall_answer_positions(cfg)
    for i in range(shards.n_docs):
        doc = shards.doc(i)
        assert doc[0] == SPECIAL_IDS[BOS] and doc[-1] == SPECIAL_IDS[EOS]
        keys, values = doc[1 : 1 + 2 * cfg.n_pairs : 2], doc[2 : 2 + 2 * cfg.n_pairs : 2]
        assert len(set(keys.tolist())) == cfg.n_pairs  # distinct keys
        assert np.all((keys >= N_RESERVED_IDS) & (keys < keys_hi)) and np.all(values >= keys_hi)
        table = dict(zip(keys.tolist(), values.tolist(), strict=True))
        queries = doc[answers - 1]
        assert all(q in table for q in queries.tolist())
        assert doc[answers].tolist() == [table[q] for q in queries.tolist()]  # each answer is the paired value
    n_values = cfg.vocab_size - N_RESERVED_IDS - cfg.n_keys
    expected = (sum(math.log(cfg.n_keys - j) for j in range(cfg.n_pairs)) + cfg.n_pairs * math.log(n_values)
                + cfg.n_queries * math.log(cfg.n_pairs)) / (width - 1)
    assert stats["optimal_loss"] == pytest.approx(expected)
    assert stats["optimal_bpb"] < stats["unigram_bpb"]


def test_the_loader_reads_synthetic_tokens(recall):
    out, _ = recall
    train = open_split(out, "train")
    loader = PackedLoader(train, pack(train.doc_lengths(), 64), pad_id=SPECIAL_IDS[PAD], seed=0)
    step = loader.next_step(8, 4)
    assert sum(b.n_tokens for b in step) > 0 and all(b.tokens.shape == (4, 64) for b in step)


@pytest.mark.parametrize(("override", "message"), [
    ("{generator: markov, vocab_size: 114}", "markov needs 2 to 4096 data symbols"),
    ("{generator: associative_recall, vocab_size: 130, n_keys: 16}", "leaves 1 value symbols"),
    ("{generator: associative_recall, n_keys: 4, n_pairs: 5}", "n_pairs .5. must be <= n_keys"),
    ("{generator: copy}", "does not match any of the expected tags"),
    ("{generator: markov, doc_len: 1}", "doc_len"),
])
def test_bad_configs_are_refused_with_their_path(override, message):
    with pytest.raises(RecipeError, match=rf"tokens\.synthetic[\s\S]*{message}"):
        load_recipe("demo", [f"tokens.synthetic={override}"])


@pytest.mark.slow
def test_a_tiny_model_learns_the_chain(tmp_path):
    """End to end through the stage graph with no corpus and no tokenizer: the trained model beats the unigram
    baseline by a wide margin and never beats the chain's own optimum."""
    from kiln.run import RunDir
    from kiln.stages import run_pipeline

    recipe = load_recipe("demo", [
        "tokens.synthetic={generator: markov, vocab_size: 145, n_train: 1000, n_val: 32, doc_len: 62, "
        "concentration: 0.2}",
        "data.seq_len=64", "model.n_layer=1", "model.n_head=2", "model.d_model=64", "train.steps=80",
        "train.batch_tokens=1024", "train.micro_batch_size=16", "train.warmup_steps=4", "train.lr=1e-2",
        "train.log_every=10", "train.eval_every=1000", "train.eval_sequences=8", "train.checkpoint_every=1000",
        "train.threads=2",
    ])
    run = RunDir(tmp_path / "run")
    run_pipeline(recipe, run, until="eval")
    stats = run.manifest("tokens")["stats"]
    metrics = json.loads((run.stage("eval") / "metrics.json").read_text())
    assert not run.stage("corpus").exists() and not run.stage("tokenizer").exists()
    assert stats["optimal_bpb"] <= metrics["val_bpb"] < stats["unigram_bpb"] - 1.0, (metrics, stats)
