"""Small deterministic corpora for end-to-end tests (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "king", "queen", "lord", "lady", "sword", "crown", "night", "day", "love", "death", "heart", "blood",
    "fair", "foul", "sweet", "speak", "hear", "see", "know", "come", "go", "stay", "fly", "stand", "fall",
    "rise", "sleep", "dream", "wake", "weep", "laugh",
]


def sentence(rng: random.Random) -> str:
    n = rng.randint(4, 12)
    words = [rng.choice(WORDS)]
    for _ in range(n - 1):
        # a little structure: each word prefers a few successors
        i = WORDS.index(words[-1])
        words.append(WORDS[(i * 7 + rng.choice((1, 2, 3, 5))) % len(WORDS)])
    return " ".join(words).capitalize() + rng.choice(".!?")


def write_jsonl_corpus(path: Path, n_docs: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            text = "\n".join(sentence(rng) for _ in range(rng.randint(6, 40)))
            f.write(json.dumps({"id": f"doc{i}", "text": text}) + "\n")
    return path


def tiny_overrides(corpus: Path, steps: int = 20) -> list[str]:
    """Overrides turning any recipe into a seconds-long CPU run on a jsonl corpus."""
    return [
        f"corpus.sources=[{{kind: jsonl, path: '{corpus}'}}]",
        "corpus.min_chars=20",
        "corpus.val_fraction=0.1",
        "tokenizer.vocab_size=512",
        "data.seq_len=64",
        "model.n_layer=2",
        "model.n_head=2",
        "model.d_model=32",
        f"train.steps={steps}",
        "train.batch_tokens=512",
        "train.micro_batch_size=4",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.eval_every=5",
        "train.eval_sequences=4",
        "train.checkpoint_every=10",
        "train.keep_checkpoints=3",
        "train.threads=1",
        "generate.max_new_tokens=8",
        "generate.prompts=[King]",
    ]


def tiny_run(root: Path, until: str, steps: int = 20, extra: tuple[str, ...] = (), name: str = "run",
             n_docs: int = 60):
    """A demo-recipe run on a synthetic JSONL corpus under ``root``, built up to stage ``until``: (RunDir, the
    overrides that made it)."""
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline

    overrides = [*tiny_overrides(write_jsonl_corpus(root / "docs.jsonl", n_docs=n_docs), steps=steps), *extra]
    run = RunDir(root / name)
    run_pipeline(load_recipe("demo", overrides), run, until=until)
    return run, overrides

