"""Pseudo-label pipeline (issue 14 item 8, spec (d)): with 100 labelled and 10k unlabelled toy examples, fine-tune ->
pseudo-label -> train on pseudo-labels -> fine-tune beats labels only on held-out accuracy, over 2 seeds.

The toy (bag-of-words logistic learner, :class:`kiln.eval.pseudo_label.BowLearner`): two classes, each with 200
class-indicative words; a document is 4 indicative words of its class among 26 noise words drawn from 2000 shared
ones. 100 labelled documents show only part of each class's words, so labels alone leave many test documents with
no known indicative word; the unlabelled pool links unseen indicative words to seen ones by co-occurrence, which is
what self-training can exploit. Measured (threshold 0.7, l2 0.1, 2 rounds), labels only -> pseudo-labels:
seed 0: 0.743 -> 0.931, seed 1: 0.666 -> 0.978 (seed 2: 0.770 -> 0.904); margin asserted: +0.08.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from kiln.corpus.augment.eda import EdaConfig
from kiln.eval.probe import ProbeConfig
from kiln.eval.probe_tasks import LabelledDoc
from kiln.eval.pseudo_label import (
    BowLearner,
    PseudoLabelConfig,
    probe_pseudo_label,
    pseudo_label,
    select_confident,
    split_labelled,
)
from kiln.model.config import TransformerConfig

CFG = PseudoLabelConfig(threshold=0.7, rounds=2)


def toy(n: int, seed: int, n_ind: int = 200, per_doc: int = 4, n_noise: int = 2000, length: int = 30):
    rng = random.Random(seed)
    texts, ys = [], []
    for _ in range(n):
        c = rng.randrange(2)
        words = [f"c{c}w{rng.randrange(n_ind)}" for _ in range(per_doc)]
        words += [f"n{rng.randrange(n_noise)}" for _ in range(length - per_doc)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        ys.append(c)
    return texts, np.array(ys)


def run_toy(seed: int, n_unlabelled: int, cfg: PseudoLabelConfig = CFG) -> dict:
    lab_x, lab_y = toy(100, 1000 + seed)
    unl_x, unl_y = toy(n_unlabelled, 2000 + seed)
    test_x, test_y = toy(2000, 3000 + seed)
    learner = BowLearner.for_texts(lab_x + unl_x, 2, min_count=2, l2=0.1)
    return pseudo_label(learner, lab_x, lab_y, unl_x, test_x, test_y, cfg, unl_y=unl_y)


def test_select_confident_thresholds_and_balances() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.99, 0.01], [0.3, 0.7]])
    idx, y = select_confident(probs, 0.7, balance=False, max_pseudo=None)
    assert idx.tolist() == [0, 1, 3, 4, 5] and y.tolist() == [0, 0, 1, 0, 1]
    idx, y = select_confident(probs, 0.7, balance=True, max_pseudo=None)  # 3 of class 0, 2 of class 1: 2 each
    assert idx.tolist() == [0, 3, 4, 5] and y.tolist() == [0, 1, 0, 1]
    idx, _ = select_confident(probs, 0.7, balance=False, max_pseudo=2)
    assert idx.tolist() == [0, 4]
    idx, _ = select_confident(probs, 0.0, balance=False, max_pseudo=None, top_fraction=0.5)  # the 3 most confident
    assert idx.tolist() == [0, 1, 4]
    assert len(select_confident(probs, 1.0, balance=True, max_pseudo=None)[0]) == 0


def test_pseudo_labels_beat_labels_only_on_a_small_pool() -> None:
    """Fast variant: 100 labels, 3000 unlabelled, one round (measured 0.743 -> 0.87)."""
    res = run_toy(0, 3000, PseudoLabelConfig(threshold=0.7, rounds=1))
    assert res["rounds"][0]["n_pseudo"] > 300 and res["rounds"][0]["pseudo_label_acc"] > 0.85
    assert res["pseudo_acc"] > res["labels_only_acc"] + 0.05, res
    assert run_toy(0, 3000, PseudoLabelConfig(threshold=0.7, rounds=1)) == res  # deterministic


def test_nothing_confident_leaves_the_labels_only_result() -> None:
    res = run_toy(0, 500, PseudoLabelConfig(threshold=1.0))
    assert res["pseudo_acc"] == res["labels_only_acc"] and res["rounds"][0]["n_pseudo"] == 0


@pytest.mark.slow
def test_pseudo_labels_beat_labels_only_with_100_labels_and_10k_unlabelled() -> None:
    for seed in (0, 1):
        res = run_toy(seed, 10_000)
        assert res["n_labelled"] == 100 and res["rounds"][0]["n_unlabelled"] == 10_000
        assert res["pseudo_acc"] > res["labels_only_acc"] + 0.08, (seed, res)


def test_split_labelled_is_stratified_and_seeded() -> None:
    docs = [LabelledDoc(f"t{i}", "a" if i % 4 else "b", f"g{i}") for i in range(40)]
    lab, unl = split_labelled(docs, 8, seed=0)
    assert len(lab) == 8 and len(unl) == 32 and sorted(d.label for d in lab) == ["a"] * 6 + ["b"] * 2
    assert split_labelled(docs, 8, seed=0) == (lab, unl) and split_labelled(docs, 8, seed=1) != (lab, unl)
    with pytest.raises(ValueError, match="n_labels"):
        split_labelled(docs, 40, seed=0)


def test_probe_pseudo_label_runs_on_a_kiln_model_and_is_deterministic() -> None:
    """The pipeline with a (tiny, random-init) kiln model on probe windows: class tokens 10-19 vs 20-29 among
    noise tokens 30-63. Checks the plumbing and determinism; the accuracy effect is measured on the toy above."""
    rng = random.Random(0)

    def doc(i: int) -> LabelledDoc:
        lab = "a" if i % 2 else "b"
        base = 10 if lab == "a" else 20
        ids = [rng.randrange(base, base + 10) for _ in range(3)] + [rng.randrange(30, 64) for _ in range(12)]
        rng.shuffle(ids)
        return LabelledDoc(" ".join(map(str, ids)), lab, f"g{i}")

    train, test = [doc(i) for i in range(80)], [doc(i) for i in range(80, 120)]

    def encode(texts):
        return [[int(t) for t in s.split()] for s in texts]

    def run() -> dict:
        torch.manual_seed(0)
        model = TransformerConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=32).build()
        cfg = ProbeConfig(seq_len=16, windows=1, finetune_steps=40, finetune_lr=3e-3, batch_size=16)
        return probe_pseudo_label(model, train, test, encode, 20, cfg, PseudoLabelConfig(threshold=0.6),
                                  torch.device("cpu"), augment=EdaConfig(n_aug=2))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend on a shared machine
    try:
        res, again = run(), run()
    finally:
        torch.set_num_threads(threads)
    assert res["n_labelled_docs"] == 20 and res["n_unlabelled_docs"] == 60 and res["n_test"] == 40
    assert 0.0 <= res["labels_only_acc"] <= 1.0 and 0.0 <= res["pseudo_acc"] <= 1.0
    assert res["labels_only_acc"] > 0.6  # it learns from 20 labelled windows
    assert res["augment"]["copies_made"] == 40 and 0 <= res["augmented_acc"] <= 1
    assert again == res


@pytest.mark.slow
def test_pseudo_labels_on_the_probe_task_of_a_tiny_run(tmp_path) -> None:
    """End to end on a run: a labelled JSONL corpus (two labels from two halves of the word list, as in
    test_probe), the demo recipe trained 10 steps, the ``column:label`` probe task with 20 labelled documents."""
    import json

    from kiln.eval.pseudo_label import run_pseudo_label_probe
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides
    from tests.test_probe import labelled_corpus

    corpus = labelled_corpus(tmp_path / "c.jsonl")
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=10)), run, until="train")
    cfg = ProbeConfig(seq_len=64, windows=2, finetune_steps=20, batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_pseudo_label_probe(run, "column:label", n_labels=20, probe_cfg=cfg,
                                     cfg=PseudoLabelConfig(threshold=0.0, top_fraction=0.5), out=tmp_path / "out",
                                     augment=EdaConfig(n_aug=2))
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "out" / "pseudo-label-column-label.json").read_text())
    assert saved["classes"] == ["a", "b"] and saved["n_labelled_docs"] == 20 and saved["n_unlabelled_docs"] > 40
    assert saved["labels_only_acc"] == res["labels_only_acc"] and 0 <= res["pseudo_acc"] <= 1
    first = res["rounds"][0]
    assert first["n_unlabelled"] > 40 and 0 < first["n_pseudo"] <= first["n_unlabelled"] // 2
    assert first["pseudo_label_acc"] > 0.8  # the teacher's confident windows are mostly right
    assert 0 <= saved["augmented_acc"] <= 1 and 0 < saved["augment"]["copies_kept"] <= 40


def token_toy(n: int, seed: int, n_ind: int = 60, per_doc: int = 3, n_noise: int = 100, length: int = 16):
    """Token windows for a kiln model: bos, ``per_doc`` class tokens (one of ``n_ind`` per class), noise tokens."""
    rng = random.Random(seed)
    rows, ys = [], []
    for _ in range(n):
        c = rng.randrange(2)
        ids = [4 + c * n_ind + rng.randrange(n_ind) for _ in range(per_doc)]
        ids += [4 + 2 * n_ind + rng.randrange(n_noise) for _ in range(length - 1 - per_doc)]
        rng.shuffle(ids)
        rows.append([1, *ids])
        ys.append(c)
    return torch.tensor(rows), np.array(ys)


@pytest.mark.slow
def test_pseudo_labels_beat_labels_only_with_a_kiln_model() -> None:
    """The same effect with :class:`KilnLearner` (a 1-layer kiln transformer from random init, probe-style
    fine-tuning, 200 AdamW steps per fit): 100 labelled, 3000 unlabelled windows, the most confident half
    pseudo-labelled, 2 rounds. Measured labels only -> pseudo-labels: seed 0: 0.810 -> 0.863, seed 1: 0.857 ->
    0.891; margin asserted: +0.015."""
    from kiln.eval.pseudo_label import KilnLearner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in (0, 1):
            lab_x, lab_y = token_toy(100, 10 + seed)
            unl_x, unl_y = token_toy(3000, 20 + seed)
            test_x, test_y = token_toy(1000, 30 + seed)
            torch.manual_seed(seed)
            model = TransformerConfig(vocab_size=224, max_seq_len=16, n_layer=1, n_head=2, d_model=32).build()
            cfg = ProbeConfig(seq_len=16, windows=1, finetune_steps=200, finetune_lr=3e-3, batch_size=32, seed=seed)
            res = pseudo_label(KilnLearner(model, cfg, torch.device("cpu"), 2), lab_x, lab_y, unl_x, test_x, test_y,
                               PseudoLabelConfig(threshold=0.0, top_fraction=0.5, rounds=2), unl_y=unl_y)
            assert res["rounds"][0]["pseudo_label_acc"] > 0.85
            assert res["pseudo_acc"] > res["labels_only_acc"] + 0.015, (seed, res)
    finally:
        torch.set_num_threads(threads)
