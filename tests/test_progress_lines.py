"""Plain progress lines without a terminal (issue 12, point 10): training (and probe fine-tuning) print a line
every N steps or seconds when stderr is not a TTY; a terminal keeps its bar and gets no extra lines."""

from __future__ import annotations

import re
import sys

import pytest

from kiln.progress import PlainLines, format_seconds, plain_enabled
from kiln.tokenizer.train import load_token_bytes
from kiln.train.trainer import Trainer, load_train_data

LINE = re.compile(r"^train: step (\d+)/(\d+) \(\d+%\) loss [0-9.]+ lr [0-9.e+-]+ [0-9.]+k tok/s elapsed \S+ ETA \S+$")


def test_plain_lines_every_n_steps_with_an_eta(capsys):
    lines = PlainLines("probe", total=10, every_s=1e9, every_steps=3, active=True)
    printed = [s for s in range(1, 11) if lines.update(s, "loss 1.0")]
    assert printed == [3, 6, 9, 10]  # every 3 steps and the last
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("probe: step 3/10 (30%) loss 1.0 elapsed ") and " ETA " in err[0]


def test_plain_lines_every_n_seconds(capsys, monkeypatch):
    now = [0.0]
    monkeypatch.setattr("kiln.progress.time.perf_counter", lambda: now[0])
    lines = PlainLines("train", total=1000, every_s=30, every_steps=500, active=True)
    printed = []
    for step, t in [(1, 5.0), (2, 31.0), (3, 40.0), (4, 62.0)]:
        now[0] = t
        printed.append(lines.update(step))
    assert printed == [False, True, False, True]  # due 30 s after the last line
    assert capsys.readouterr().err.splitlines()[0] == "train: step 2/1000 (0%) elapsed 31s ETA 4h17m"


def test_inactive_lines_print_nothing(capsys):
    assert not PlainLines("x", total=2, every_steps=1, active=False).update(2, force=True)
    assert capsys.readouterr().err == ""


def test_plain_only_without_a_terminal(monkeypatch):
    monkeypatch.delenv("KILN_QUIET", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert plain_enabled()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not plain_enabled()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setenv("KILN_QUIET", "1")
    assert not plain_enabled()


@pytest.mark.parametrize(("seconds", "text"), [(4.2, "4s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_training_without_a_terminal_prints_step_lines(tiny_trained, tmp_path, logs, monkeypatch):
    """A trainer whose stderr is a pipe (as under pytest's capture) prints step, loss, lr, tok/s, ETA lines
    between its header and the end, and one line per validation."""
    monkeypatch.setenv("KILN_PROGRESS_SECONDS", "1e9")  # by steps only: every tenth of the run
    run = tiny_trained.run
    recipe = tiny_trained.recipe
    token_bytes = load_token_bytes(run.stage("tokenizer"))
    data = load_train_data(recipe, run.stage("tokens"), token_bytes)
    trainer = Trainer(recipe, data, len(token_bytes), tmp_path / "train", tmp_path / "metrics.jsonl")
    trainer.fit()
    err = logs.readouterr().err.splitlines()
    steps = [int(m.group(1)) for m in map(LINE.match, err) if m]
    assert steps == list(range(1, recipe.train.steps + 1))  # 10 steps: a line each (every tenth)
    assert any(line.startswith(f"train: step {recipe.train.steps}/") and "val bpb" in line for line in err)


def test_probe_fine_tuning_without_a_terminal_prints_step_lines(logs, monkeypatch):
    import torch

    from kiln.eval.probe import ProbeConfig, probe_model
    from kiln.eval.probe_tasks import LabelledDoc
    from kiln.model.config import TransformerConfig

    monkeypatch.setenv("KILN_PROGRESS_SECONDS", "1e9")
    torch.manual_seed(0)
    model = TransformerConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=16).build()
    train = [LabelledDoc(f"t{i}", "ab"[i % 2], f"g{i}") for i in range(8)]
    test = [LabelledDoc(f"s{i}", "ab"[i % 2], f"h{i}") for i in range(4)]
    cfg = ProbeConfig(seq_len=16, windows=1, linear_steps=5, finetune_steps=20, batch_size=4)
    probe_model(model, train, test, lambda texts: [[5, 6, 7]] * len(texts), cfg, torch.device("cpu"))
    err = logs.readouterr().err
    steps = re.findall(r"^probe fine-tune: step (\d+)/20 \(\d+%\) loss [0-9.]+ elapsed", err, flags=re.M)
    assert steps == [str(s) for s in range(2, 21, 2)]  # every tenth of the 20 steps
    assert "probe: linear accuracy" in err
