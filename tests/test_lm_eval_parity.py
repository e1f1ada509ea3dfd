"""lm-eval parity: a ``kiln export`` model scored by the real ``lm_eval`` CLI on kiln's exported tasks gives the
accuracies ``kiln eval --tasks`` gives (equal to 3 decimals): shakespeare-cloze and pydocs-name (40 items, every
template; contexts longer than the tiny model's 64 tokens, so left truncation is exercised) and two hand-made
tasks covering a context ending in whitespace, an empty context and choices starting with a newline, and a
partially scored task (the choice ends the context, one shared continuation is scored: lm-eval's multiple-input
form). Offline."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import lm_eval  # noqa: E402,F401 - a [test] dependency: missing means a broken install, which must fail, not skip

from kiln.cli import app  # noqa: E402
from kiln.eval.stage import final_checkpoint  # noqa: E402
from kiln.eval.tasks.builders import build_task  # noqa: E402
from kiln.eval.tasks.items import Item, TaskSet  # noqa: E402
from kiln.eval.tasks.lm_eval_export import (  # noqa: E402
    export_tasks,
    lm_eval_command,
    lm_eval_name,
    read_lm_eval_results,
)
from kiln.eval.tasks.score import Scorer  # noqa: E402
from kiln.eval.tasks.suite import score_task  # noqa: E402
from kiln.model.load import load_model  # noqa: E402
from kiln.tokenizer.train import load_token_bytes, load_tokenizer  # noqa: E402
from tests.synthetic import WORDS, sentence  # noqa: E402


def cloze_task(n: int = 40, seed: int = 0) -> TaskSet:
    """Last word of a synthetic sentence among 4 words; two templates (one ends in a space: lm-eval moves it)."""
    rng = random.Random(seed)
    plain, quoted = [], []
    for i in range(n):
        words = sentence(rng).rstrip(".!?").split()
        gold_word = words[-1].lower()
        options = [gold_word, *rng.sample([w for w in WORDS if w != gold_word], 3)]
        rng.shuffle(options)
        gold = options.index(gold_word)
        ids = (f"c{i}",)
        plain.append(Item(f"c{i}", " ".join(words[:-1]), tuple(" " + w for w in options), gold, gold_word, ids))
        quoted.append(Item(f"c{i}", f"Line: {' '.join(words[:-1])} ", tuple(options), gold, gold_word, ids))
    return TaskSet("toy-cloze", templates={"plain": plain, "line colon": quoted})


def order_task(n: int = 30, seed: int = 1) -> TaskSet:
    """Which of 2-3 continuations (of different lengths) follows a line; one template with an empty context."""
    rng = random.Random(seed)
    nl, empty = [], []
    for i in range(n):
        a, b, c = sentence(rng), sentence(rng), sentence(rng)
        k = rng.randint(2, 3)
        choices = (" " + b, " " + c.lower(), "\n" + a)[:k]
        gold = rng.randrange(k)
        nl.append(Item(f"o{i}", a, choices, gold, str(gold), (f"o{i}",)))
        empty.append(Item(f"o{i}", "", choices, gold, str(gold), (f"o{i}",)))
    return TaskSet("toy-order", templates={"newline": nl, "empty": empty})


def partial_task(n: int = 30, seed: int = 2) -> TaskSet:
    """Which first word makes the rest of a sentence likelier: the choice ends the context and the shared rest is
    scored (lm-eval's multiple-input form); one template with a context, one with an empty one."""
    rng = random.Random(seed)
    lead, bare = [], []
    for i in range(n):
        words = sentence(rng).split()
        gold_word = words[0]
        options = [gold_word, *rng.sample([w.capitalize() for w in WORDS if w.capitalize() != gold_word], 2)]
        rng.shuffle(options)
        gold, rest, ids = options.index(gold_word), " " + " ".join(words[1:]), (f"p{i}",)
        lead.append(Item(f"p{i}", "Line:", tuple(" " + w for w in options), gold, gold_word, ids, continuation=rest))
        bare.append(Item(f"p{i}", "", tuple(options), gold, gold_word, ids, continuation=rest))
    return TaskSet("toy-partial", templates={"lead": lead, "bare": bare})


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmeval") / "model"
    res = CliRunner().invoke(app, ["export", str(tiny_trained.run.root), "--format", "hf", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_tokenizer_matches_exported_hf(tiny_trained, exported):
    """kiln's task encoding = the exported tokenizer's default call (which lm-eval's hf model makes)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(exported))
    scorer = Scorer(load_model(final_checkpoint(tiny_trained.run), torch.device("cpu")),
                    load_tokenizer(tiny_trained.run.stage("tokenizer")), torch.device("cpu"))
    for text in ["King and queen", "  leading spaces\tand\n\nnewlines ", "naïve café 日本語", "a", "Sleep. Dream!"]:
        assert scorer.encode(text) == hf(text)["input_ids"], text
        assert scorer.encode(text, special=False) == hf(text, add_special_tokens=False)["input_ids"], text


def test_lm_eval_cli_gives_kiln_accuracies(tiny_trained, exported, tmp_path):
    run = tiny_trained.run
    device = torch.device("cpu")
    scorer = Scorer(load_model(final_checkpoint(run), device), load_tokenizer(run.stage("tokenizer")), device)
    tasks = [build_task(name, tiny_trained.recipe, run, max_items=40) for name in ("shakespeare-cloze", "pydocs-name")]
    tasks += [cloze_task(), order_task(), partial_task()]
    kiln_res = {t.name: score_task(scorer, t, load_token_bytes(run.stage("tokenizer"))) for t in tasks}
    groups = export_tasks(tasks, tmp_path / "tasks")
    assert set(groups) == {"kiln_shakespeare-cloze", "kiln_pydocs-name", "kiln_toy-cloze", "kiln_toy-order",
                           "kiln_toy-partial"}
    out = tmp_path / "lm-eval-out"
    cmd = lm_eval_command(exported, tmp_path / "tasks", list(groups), out)
    cmd[0:1] = [sys.executable, "-m", "lm_eval"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(f"lm_eval took {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = read_lm_eval_results(out)
    compared = 0
    for t in tasks:
        for template in t.templates:
            name = lm_eval_name(t.name, template)
            for m in ("acc", "acc_norm"):
                ours = kiln_res[t.name]["templates"][template][m]
                assert round(theirs[name][m], 3) == round(ours, 3), (name, m, theirs[name][m], ours)
                compared += 1
        for m in ("acc", "acc_norm"):  # the group = the unweighted template mean = kiln's task accuracy
            assert round(theirs[lm_eval_name(t.name)][m], 3) == round(kiln_res[t.name][m], 3), (t.name, m)
    assert compared == 2 * sum(len(t.templates) for t in tasks) == 2 * (len(tasks[0].templates) +
                                                                          len(tasks[1].templates) + 6)
    assert Path(out).exists()
