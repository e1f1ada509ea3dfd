"""The task suite measures learning: a small decoder trained longer on Shakespeare (modern) + pydocs scores
higher on shakespeare-cloze than the same model barely trained (template-mean accuracy, by a margin), and
every task reports its chance and majority baselines. Slow: two CPU runs sharing their corpus, tokenizer and
tokens through the stage store (about 2 minutes on 2 idle cores).

pydocs-name is scored too (its baselines are checked) but has no effect test: it stays near chance at this scale
(issue 13 keeps that acceptance point open): a pydocs document is the docstring
alone (the name never appears next to it in training), so the task is solvable only by copying words of the
docstring into the name (a word-overlap heuristic scores ~0.52), which a 2-layer, 600-step model has not learnt
(measured 0.27-0.29 at 150-600 steps against 0.25 chance). On the 5- and 600-step checkpoints of this config
(200 items), nothing tried moves it by the margin: the three templates here (template mean 0.272 -> 0.257 with
item seed 0, 0.237 -> 0.245 with seed 1); name-first templates scoring the name and the docstring's first
paragraph as the continuation (``{module}.`` + ``{name}\n{summary}``, also with the masked name restored or a
signature added: 0.21-0.29 for both models, decided by the name's own prior; the docstring's log-likelihood
given the name alone picks the gold 0.20 -> 0.30-0.32, from a below-chance start, and is no lm-eval
multiple-choice score); lm-eval's ``acc_mutual_info`` scoring (0.20-0.30, no gain); and, retrained, pydocs
documents that start with a ``module.name(signature)`` line (templates here 0.262 -> 0.275, name-first ones
0.21 -> 0.22). Measured again on 2026-11-29 with *partial scoring* (the candidate name ends the context and the
same 160-character docstring start is scored after each: lm-eval's multiple-input form, now supported by the
suite and its lm-eval export; 200 items, item seeds 0 / 1): 5 steps 0.215-0.31, 600 steps 0.215-0.295, 1500
steps 0.23-0.28 over four such templates (``{module}.{name}``, ``Help on {kind} {name} in module``, bare name,
``def {name}(...)``); the name as words (``json encoder encode``, whose tokens are the docstring's) 0.205-0.26 at
both ends; and pydocs documents headed by their dotted name (the form the partial template scores), 5 -> 600
steps: 0.29 / 0.285 -> 0.285 / 0.25. The task stays at chance for models this small: the open point needs a
larger model (a GPU run), not another template.
shakespeare-cloze is solvable from local context (a word-bigram model of the train split scores ~0.6 on its
word/line templates; unigram frequency 0.25), and a model with word-sized tokens (vocab 2048) learns part of it
in 600 steps (template-mean acc 0.250 -> 0.362 measured on 2026-11-29)."""

from __future__ import annotations

import json

import pytest

from kiln.recipe import load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline

TASKS = ("shakespeare-cloze", "pydocs-name")
MARGIN = 0.04
LONG, SHORT = 600, 5
ITEMS = 200


def overrides(steps: int) -> list[str]:
    return [
        "corpus.sources=[{kind: shakespeare, editions: [modern]}, {kind: pydocs}]",
        "corpus.val_fraction=0.05",
        "tokenizer.vocab_size=2048",  # word-sized tokens: word co-occurrence is learnt within a few hundred steps
        "data.seq_len=128", "data.attention=causal",
        "model.n_layer=2", "model.n_head=2", "model.d_model=96",
        f"train.steps={steps}", "train.batch_tokens=2048", "train.micro_batch_size=16", "train.lr=3e-3",
        "train.warmup_steps=2", "train.eval_every=100000", "train.eval_sequences=2", "train.threads=2",
        f"train.checkpoint_every={steps}", "train.keep_checkpoints=1", "train.log_every=100",
        "eval.max_sequences=16", f"eval.tasks=[{', '.join(TASKS)}]", f"eval.task_items={ITEMS}",
    ]


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> dict[int, dict]:
    root = tmp_path_factory.mktemp("effect")
    out = {}
    for steps in (SHORT, LONG):
        run = RunDir(root / f"steps-{steps}")
        run_pipeline(load_recipe("demo", overrides(steps)), run, until="eval")
        out[steps] = json.loads((run.stage("eval") / "metrics.json").read_text())
    for steps, m in out.items():
        print(f"\n{steps} steps: val_bpb {m['val_bpb']:.3f}; " + "; ".join(
            f"{t} acc {m['tasks'][t]['acc']:.3f} acc_norm {m['tasks'][t]['acc_norm']:.3f} (chance "
            f"{m['tasks'][t]['chance']:.2f}, majority {m['tasks'][t]['majority']:.2f})" for t in TASKS))
    return out


@pytest.mark.slow
def test_longer_training_scores_higher_on_cloze(metrics):
    assert metrics[LONG]["val_bpb"] < metrics[SHORT]["val_bpb"] - 0.5
    for t in TASKS:  # baselines reported for every task, on the same items for both runs
        short, long = metrics[SHORT]["tasks"][t], metrics[LONG]["tasks"][t]
        assert long["n_items"] == short["n_items"] == ITEMS
        assert long["chance"] == short["chance"] == 0.25 and 0 < long["majority"] < 1
        assert long["acc_ci"][0] <= long["acc"] <= long["acc_ci"][1]
    short, long = metrics[SHORT]["tasks"]["shakespeare-cloze"], metrics[LONG]["tasks"]["shakespeare-cloze"]
    assert long["acc"] >= short["acc"] + MARGIN, (short["acc"], long["acc"])
    assert long["acc"] > long["chance"] + MARGIN / 2, (long["acc"], long["chance"])

