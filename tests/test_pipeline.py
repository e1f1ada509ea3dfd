"""End-to-end pipeline on a tiny synthetic corpus: stages, skipping, resume, CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from kiln.recipe import load_recipe
from kiln.run import RunDir, RunError
from kiln.stages import ORDER, run_pipeline
from tests.synthetic import tiny_overrides, write_jsonl_corpus


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl_corpus(tmp_path / "docs.jsonl")


def metrics(run: RunDir, kind: str) -> list[dict]:
    return [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if r["kind"] == kind]


def test_full_pipeline_then_skip(tmp_path, corpus):
    recipe = load_recipe("demo", tiny_overrides(corpus))
    run = RunDir(tmp_path / "run")
    results = run_pipeline(recipe, run)
    assert list(results) == ORDER
    for name in ORDER:
        m = run.manifest(name)
        assert m and m["complete"], name
    ev = json.loads((run.stage("eval") / "metrics.json").read_text())
    assert 0 < ev["val_bpb"] < ev["unigram_bpb"] * 2
    assert (run.stage("report") / "index.html").exists()
    assert (run.stage("train") / "checkpoints" / "step-000020" / "model.safetensors").exists()
    rows = metrics(run, "train")
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert rows[-1]["loss"] < rows[0]["loss"]

    before = {n: run.manifest(n)["finished"] for n in ORDER}
    run_pipeline(recipe, run)  # everything up to date: nothing but the report reruns
    after = {n: run.manifest(n)["finished"] for n in ORDER}
    assert all(before[n] == after[n] for n in ORDER if n != "report")


def test_changed_config_reruns_downstream_only(tmp_path, corpus, logs):
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=4)), run, until="tokens")
    tok_fp = run.manifest("tokenizer")["fingerprint"]
    corpus_manifest = run.manifest("corpus")
    logs.readouterr()
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=4) + ["tokenizer.vocab_size=600"]), run,
                 until="tokens")
    err = " ".join(logs.readouterr().err.split())  # each rebuilt stage says why
    assert "corpus: up to date" in err
    assert "tokenizer: config tokenizer.vocab_size: 512 -> 600, rebuilding" in err
    assert "tokens: input tokenizer changed, rebuilding" in err
    assert run.manifest("corpus") == corpus_manifest  # untouched
    assert run.manifest("tokenizer")["fingerprint"] != tok_fp
    assert run.manifest("tokens")["inputs"]["tokenizer"] == run.manifest("tokenizer")["fingerprint"]


def test_resume_continues_the_same_run_exactly(tmp_path, corpus):
    recipe = load_recipe("demo", tiny_overrides(corpus, steps=20))
    full = RunDir(tmp_path / "full")
    run_pipeline(recipe, full, until="train")
    reference = metrics(full, "train")

    # Simulate a crash after the step-10 checkpoint: drop the later checkpoint, the manifest, the log tail.
    broken = RunDir(tmp_path / "broken")
    shutil.copytree(full.root, broken.root)
    shutil.rmtree(broken.stage("train") / "checkpoints" / "step-000020")
    (broken.stage("train") / "manifest.json").unlink()
    lines = broken.metrics_path.read_text().splitlines()
    broken.metrics_path.write_text("\n".join(lines[: len(lines) * 2 // 3]) + '\n{"kind": "tr')  # torn last line
    assert not broken.is_complete("train", full.manifest("train")["fingerprint"])

    run_pipeline(recipe, broken, until="train")
    resumed = metrics(broken, "train")
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for a, b in zip(reference, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), a["step"]
        assert a["tokens"] == b["tokens"]


def test_train_with_other_config_refuses_without_force(tmp_path, corpus):
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=4)), run, until="train")
    (run.stage("train") / "manifest.json").unlink()  # an unfinished train stage
    other = load_recipe("demo", tiny_overrides(corpus, steps=4) + ["train.lr=0.01"])
    with pytest.raises(RunError, match="--force train"):
        run_pipeline(other, run, until="train")
    run_pipeline(other, run, until="train", force=("train",))
    assert run.manifest("train")["complete"]


def test_second_process_is_locked_out(tmp_path, corpus):
    run = RunDir(tmp_path / "run")
    with run.lock(), pytest.raises(RunError, match="in use by another kiln process"):
        run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=2)), run, until="corpus")
