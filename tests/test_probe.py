"""The downstream probe (`kiln eval --probe TASK`): task builders, and a tiny run probed end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from kiln.cli import app
from kiln.eval.probe import ProbeConfig, constant_baselines, probe_model, windows_of
from kiln.eval.probe_tasks import PLAY_GENRE, LabelledDoc, build_task, in_test
from kiln.model.config import TransformerConfig
from tests.synthetic import WORDS, tiny_overrides


def shakespeare_rows() -> list[dict]:
    rows = []
    for play in sorted(PLAY_GENRE):
        for edition in ("modern", "folio"):
            for scene in range(3):
                rows.append({"id": f"shakespeare/{play}/{edition}/{scene}", "text": f"{play} {edition} {scene}",
                             "edition": edition, "play": play, "form": "play", "module": None})
    rows.append({"id": "shakespeare/sonnets/modern/1", "text": "Shall I compare thee", "edition": "modern",
                 "play": "sonnets", "form": "poem", "module": None})
    return rows


def test_edition_and_genre_split_by_play():
    rows = shakespeare_rows()
    for task in ("edition", "genre"):
        train, test = build_task(rows, task, test_fraction=0.3)
        assert {d.group for d in train}.isdisjoint({d.group for d in test})  # a play on one side only
        assert "sonnets" not in {d.group for d in train + test}  # poems left out
        assert len(train) + len(test) == 6 * len(PLAY_GENRE)
    train, _ = build_task(rows, "edition")
    assert {d.label for d in train} == {"modern", "folio"}
    train, test = build_task(rows, "genre")
    assert {d.label for d in train + test} == {"comedy", "history", "tragedy"}
    assert all(d.label == PLAY_GENRE[d.group] for d in train + test)


def test_edition_needs_both_editions_and_unknown_tasks_fail():
    modern = [r for r in shakespeare_rows() if r["edition"] == "modern"]
    with pytest.raises(ValueError, match="both editions"):
        build_task(modern, "edition")
    with pytest.raises(ValueError, match="unknown probe task"):
        build_task(modern, "nope")


def test_pydocs_module_keeps_the_most_frequent_modules():
    rows = [{"id": f"{m}.f{i}", "text": "doc", "module": m} for m, n in (("os", 30), ("re", 20), ("json", 5))
            for i in range(n)]
    train, test = build_task(rows, "pydocs-module", top_modules=2)
    assert {d.label for d in train + test} == {"os", "re"} and len(train) + len(test) == 50
    assert all(in_test(d.group, 0.25) for d in test)


def test_windows_are_even_and_bounded():
    assert windows_of(list(range(10)), 128, 4) == [list(range(10))]
    wins = windows_of(list(range(1000)), 128, 4)
    assert len(wins) == 4 and all(len(w) == 127 for w in wins) and wins[0][0] == 0 and wins[-1][-1] == 999


def labelled_corpus(path, n_docs: int = 120, seed: int = 0):
    """Two labels whose documents draw from different halves of the word list (a synthetic metadata task)."""
    rng = random.Random(seed)
    half = len(WORDS) // 2
    with open(path, "w") as f:
        for i in range(n_docs):
            label = "a" if i % 3 else "b"
            words = WORDS[:half] if label == "a" else WORDS[half:]
            text = "\n".join(" ".join(rng.choice(words) for _ in range(10)) + "." for _ in range(rng.randint(6, 20)))
            f.write(json.dumps({"id": f"doc{i}", "text": text, "label": label}) + "\n")
    return path


def test_probe_on_a_tiny_run(tmp_path):
    corpus = labelled_corpus(tmp_path / "c.jsonl")
    run_dir = tmp_path / "r"
    res = CliRunner().invoke(app, ["eval", "demo", *tiny_overrides(corpus, steps=10), "--run-dir", str(run_dir),
                                   "--probe", "column:label", "--probe-steps", "20"])
    assert res.exit_code == 0, res.output
    assert "probe column:label: linear" in res.output
    out = json.loads((run_dir / "eval" / "probe-column-label.json").read_text())
    assert out["classes"] == ["a", "b"] and out["n_test"] > 0
    assert out["linear_acc"] > out["majority_acc"] + 0.2
    assert out["finetune_acc"] >= out["majority_acc"]


def skewed_docs() -> tuple[list[LabelledDoc], list[LabelledDoc]]:
    """Train mostly "a", test mostly "b": a split by group that shifts the label mix (genre: history vs tragedy)."""
    train = [LabelledDoc(f"t{i}", "a" if i < 8 else "b", f"g{i}") for i in range(10)]
    test = [LabelledDoc(f"s{i}", "b" if i < 7 else "a", f"h{i}") for i in range(10)]
    return train, test


def test_majority_baseline_is_the_best_constant_predictor_on_the_test_split():
    train, test = skewed_docs()
    classes = ["a", "b"]
    tr = torch.tensor([classes.index(d.label) for d in train])
    te = torch.tensor([classes.index(d.label) for d in test])
    base = constant_baselines(tr, te, classes)
    constant_accs = {c: int((te == k).sum()) / len(te) for k, c in enumerate(classes)}
    # a model that always predicts one class can never beat the reported baseline
    assert base["majority_acc"] == max(constant_accs.values()) == pytest.approx(0.7)
    assert base["majority_class"] == "b"
    # the train-split majority rule is kept, named as such: "a" scores 0.3 on the test split
    assert base["train_majority_class"] == "a" and base["train_majority_acc"] == pytest.approx(0.3)


def test_a_probe_on_featureless_windows_does_not_beat_the_majority_baseline():
    """Every window encodes to the same tokens, so the linear probe can only predict one class: it must not
    score above the majority baseline (with the train-majority rule it beat it, 0.3 -> 0.3 but 'b' scores 0.7)."""
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=16).build()
    train, test = skewed_docs()
    cfg = ProbeConfig(seq_len=16, windows=1, linear_steps=50, finetune_steps=0)
    res = probe_model(model, train, test, lambda texts: [[5, 6, 7]] * len(texts), cfg, torch.device("cpu"))
    assert res["linear_acc"] == pytest.approx(res["train_majority_acc"])  # it learned the train prior only
    assert res["linear_acc"] < res["majority_acc"]
    assert res["test_label_counts"] == {"a": 3, "b": 7}
