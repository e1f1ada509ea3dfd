"""Perplexity filter (kiln.corpus.learned.perplexity): a Shakespeare reference model ranks Shakespeare above junk."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

from kiln.corpus.clean import split_score
from kiln.corpus.learned.perplexity import PerplexityFilterParams, run
from kiln.corpus.learned.refmodel import ReferenceModel, ReferenceModelError, resolve_checkpoint
from kiln.corpus.scoring.rules import roc_auc
from kiln.corpus.sources import cache_dir_for, read_source
from kiln.corpus.steps.base import StepContext
from kiln.recipe import CorpusConfig, SourceConfig, load_recipe
from kiln.run import RunDir
from kiln.stages import run_pipeline
from tests.synthetic import tiny_overrides

STEPS = 300  # ~20 s on one CPU thread: 2 layers, d_model 64, 1024 tokens/step
pytestmark = pytest.mark.slow


def _junk(held: list[str], pydocs: list[str], n: int, seed: int = 0) -> list[str]:
    """Random characters, word-shuffled held-out Shakespeare, and another domain (pydocs), n of each."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 10 + "\n"
    chars = ["".join(rng.choice(alphabet) for _ in range(rng.randint(400, 1500))) for _ in range(n)]
    shuffled = []
    for text in held[:n]:
        words = text.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    return chars + shuffled + pydocs[:n]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A tiny kiln model trained in seconds on Shakespeare scenes (modern edition, not the held-out ones)."""
    tmp = tmp_path_factory.mktemp("ppl")
    cache = cache_dir_for(CorpusConfig())
    scenes = list(read_source(SourceConfig(kind="shakespeare", editions=["modern"]), cache))
    held = [d["text"][:3000] for d in scenes if split_score(d["id"], 3) < 0.05]
    train = [d for d in scenes if split_score(d["id"], 3) >= 0.05][:300]
    corpus = tmp / "shakespeare.jsonl"
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in train))
    overrides = tiny_overrides(corpus, steps=STEPS) + [
        "model.d_model=64", "train.batch_tokens=1024", "train.micro_batch_size=16", "train.lr=0.02",
        "train.warmup_steps=10", f"train.eval_every={STEPS}", f"train.checkpoint_every={STEPS}", "train.log_every=50",
    ]
    run = RunDir(tmp / "run")
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    pydocs = [d["text"][:3000] for d in read_source(SourceConfig(kind="pydocs", max_docs=200), cache)
              if len(d["text"]) > 300]
    return run.root, held, pydocs


# Per junk kind, not pooled: a pooled AUC can pass while one kind (word-shuffled Shakespeare, the hardest: same
# words, same unigram statistics) is ranked at chance. Bars sit below the measured values (see docs/methods.md).
AUC_BARS = {"chars": 0.99, "shuffled": 0.85, "pydocs": 0.95}  # measured 1.0, 0.9225, 0.9888


def test_shakespeare_scores_better_than_each_junk_kind(reference_run):
    root, held, pydocs = reference_run
    ref = ReferenceModel.load(root)
    good = ref.bits_per_byte(held[:40], max_tokens=512)
    junk_texts = _junk(held[40:] + held, pydocs, 20)
    junk = ref.bits_per_byte(junk_texts, max_tokens=512)
    aucs, means = {}, {}
    for i, name in enumerate(AUC_BARS):
        kind = junk[i * 20 : (i + 1) * 20]
        aucs[name] = roc_auc(-good, -kind)  # lower bits per byte = more Shakespeare-like
        means[name] = round(float(np.mean(kind)), 3)
    print(f"perplexity AUC shakespeare vs each junk kind: { {k: round(v, 4) for k, v in aucs.items()} }; "
          f"mean bpb shakespeare {good.mean():.3f}, junk {means}")
    failed = {k: v for k, v in aucs.items() if v < AUC_BARS[k]}
    assert not failed, f"AUC below its bar {AUC_BARS}: {failed}"


def test_step_keeps_the_band_and_resolves_paths(reference_run):
    root, held, pydocs = reference_run
    docs = [{"id": f"s{i}", "source": "s", "text": t} for i, t in enumerate(held[:10])]
    docs += [{"id": f"j{i}", "source": "j", "text": t} for i, t in enumerate(_junk(held, pydocs, 4)[:4])]
    docs.append({"id": "empty", "source": "j", "text": ""})
    ctx = StepContext(step="perplexity", run_dir=root)
    params = PerplexityFilterParams(checkpoint=".", high=70.0, max_tokens=256, score_field="bpb")
    kept, rep = run(docs, params, ctx)
    assert {d["source"] for d in kept} == {"s"} and rep.docs_in == 15 and rep.docs_out == len(kept) == 10
    assert all(d["bpb"] > 0 for d in kept)
    assert {r.id for r in ctx.removed} == {"j0", "j1", "j2", "j3", "empty"}
    only_j, _ = run(docs, params.model_copy(update={"apply_to": ["j"], "low": 0.0, "high": 100.0}), ctx)
    assert len(only_j) == 14  # the empty document has no score and goes; the others are in the band
    assert resolve_checkpoint(root / "train" / "checkpoints").name == f"step-{STEPS:06d}"
    with pytest.raises(ReferenceModelError, match="no kiln checkpoint"):
        resolve_checkpoint(root / "corpus")
    with pytest.raises(ValueError, match="low"):
        PerplexityFilterParams(checkpoint="x", low=60, high=50)


def test_the_filter_is_the_scorer_plus_select(reference_run):
    """``perplexity`` = ``perplexity_score`` (sharded, per document) + ``select: {band, keep: low}``: same kept
    documents, same scores."""
    from kiln.corpus.scoring.base import run_scorer
    from kiln.corpus.scoring.builtin import PerplexityScoreParams, perplexity_score, perplexity_setup
    from kiln.corpus.scoring.select import SelectParams, run_select

    root, held, pydocs = reference_run
    docs = [{"id": f"s{i}", "source": "s", "text": t} for i, t in enumerate(held[:8])]
    docs += [{"id": f"j{i}", "source": "j", "text": t} for i, t in enumerate(_junk(held, pydocs, 3)[:6])]
    ctx = StepContext(step="perplexity", run_dir=root)
    fused, _ = run(docs, PerplexityFilterParams(checkpoint=".", low=10.0, high=60.0, max_tokens=256,
                                                score_field="bpb"), ctx)
    scored, rep = run_scorer(docs, PerplexityScoreParams(checkpoint=".", max_tokens=256, field="bpb", batch_docs=5),
                             StepContext(step="ppl", run_dir=root), perplexity_setup, perplexity_score)
    kept, _ = run_select(scored, SelectParams(field="bpb", band=(10.0, 60.0)), StepContext(step="select"))
    assert [d["id"] for d in kept] == [d["id"] for d in fused]
    assert np.allclose([d["bpb"] for d in kept], [d["bpb"] for d in fused], rtol=1e-6)
    assert rep.scores["n"] == 14 and rep.scores["max"] > rep.scores["min"] > 0
