"""Shared fixtures: runs that several test modules read, built once per test session.

A shared run is read-only for the tests that use it: write outputs (exports, samples, copies) under the
test's own ``tmp_path``, never into the run, so the order of tests cannot change what they see.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kiln.recipe import Recipe, load_recipe
from kiln.run import RunDir
from tests.synthetic import tiny_overrides, write_jsonl_corpus


@dataclass(frozen=True)
class TinyRun:
    run: RunDir
    recipe: Recipe


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> TinyRun:
    """The demo recipe on a 60-document synthetic JSONL corpus, trained 10 steps on the CPU (a few seconds);
    corpus, tokenizer, tokens and train stages done. Default ``generate.prompts`` (none: held-out openings)."""
    from kiln.stages import run_pipeline

    root = tmp_path_factory.mktemp("tiny-trained")
    corpus = write_jsonl_corpus(root / "docs.jsonl", n_docs=60)
    recipe = load_recipe("demo", [*tiny_overrides(corpus, steps=10), "generate.prompts=[]"])
    run = RunDir(root / "run")
    run_pipeline(recipe, run, until="train")
    return TinyRun(run, recipe)


@pytest.fixture
def logs(capsys, monkeypatch):
    """``capsys`` with kiln's log lines on (CI sets ``KILN_QUIET=1``, which silences them)."""
    monkeypatch.delenv("KILN_QUIET", raising=False)
    return capsys


@pytest.fixture
def one_thread():
    """One torch intra-op thread (as ``train.threads=1``): tiny matmuls only lose to thread contention on a shared
    2-core machine (measured up to 10x slower with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
