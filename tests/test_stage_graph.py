"""Stages as a graph: derived order, recipe-dependent inputs, the shared stage store, post stages."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from kiln.recipe import load_recipe
from kiln.run import RunDir, RunError
from kiln.stage_graph import MODEL, ORDER, STAGES, Stage, plan_names, register_stage, topo_order, unregister_stage
from kiln.stages import final_checkpoint, make_plan, run_pipeline, source_checkpoint, synthetic
from kiln.store import StageStore
from tests.synthetic import tiny_overrides, write_jsonl_corpus


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=60)


@pytest.fixture(autouse=True)
def _default_store(monkeypatch):
    monkeypatch.delenv("KILN_STAGE_CACHE", raising=False)


def test_order_is_derived_from_the_graph(corpus):
    recipe = load_recipe("demo", tiny_overrides(corpus))
    assert plan_names(recipe, ["report"]) == ORDER
    assert plan_names(recipe, ["generate"]) == ["corpus", "tokenizer", "tokens", "train", "generate"]
    assert topo_order(["report", "tokens", "corpus", "tokenizer"], recipe) == ["corpus", "tokenizer", "tokens",
                                                                               "report"]


def test_synthetic_tokens_need_no_corpus_nor_tokenizer(corpus):
    recipe = load_recipe("demo", tiny_overrides(corpus))
    fake = recipe.model_copy(update={"tokens": SimpleNamespace(synthetic={"kind": "markov"})})
    assert synthetic(fake) and not synthetic(recipe)
    assert plan_names(fake, ["report"]) == ["tokens", "train", "eval", "generate", "report"]
    assert "tokens" not in plan_names(fake, ["corpus"])


def _run(tmp_path, name, corpus, *extra):
    recipe = load_recipe("demo", tiny_overrides(corpus, steps=4) + list(extra))
    run = RunDir(tmp_path / name)
    run_pipeline(recipe, run, until="train")
    return recipe, run


def test_second_run_reuses_shared_stages_from_the_store(tmp_path, corpus, logs):
    _, a = _run(tmp_path, "a", corpus)
    logs.readouterr()
    _, b = _run(tmp_path, "b", corpus, "train.lr=0.01")
    err = " ".join(logs.readouterr().err.split())
    for name in ("corpus", "tokenizer", "tokens"):
        assert f"{name}: reused" in err, name
        mb = b.manifest(name)
        assert mb["fingerprint"] == a.manifest(name)["fingerprint"]
        assert mb["reused_from"] == str(tmp_path / ".store" / name / mb["fingerprint"])
        assert mb["finished"] == a.manifest(name)["finished"]  # built once, by run a
        for rel in mb["files"]:  # copy-free: the same file on disk
            assert os.stat(a.stage(name) / rel).st_ino == os.stat(b.stage(name) / rel).st_ino
    assert not any(f"{n}: running" in err for n in ("corpus", "tokenizer", "tokens"))
    assert b.manifest("train")["fingerprint"] != a.manifest("train")["fingerprint"]
    assert b.manifest("train")["complete"]


def test_force_in_one_run_never_corrupts_another(tmp_path, corpus):
    recipe, a = _run(tmp_path, "a", corpus)
    _, b = _run(tmp_path, "b", corpus, "train.lr=0.01")
    tokens_a = {rel: (a.stage("tokens") / rel).read_bytes() for rel in a.manifest("tokens")["files"]}
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=4) + ["train.lr=0.01"]), b, until="tokens",
                 force=("tokens",))
    assert "reused_from" not in b.manifest("tokens")  # rebuilt, not taken from the store
    for rel, data in tokens_a.items():
        assert (a.stage("tokens") / rel).read_bytes() == data
    store = StageStore.for_run(a)
    assert store.lookup("tokens", a.manifest("tokens")["fingerprint"]) is not None
    run_pipeline(recipe, a, until="train")  # run a still complete and valid


def test_damaged_store_entry_is_dropped_and_rebuilt(tmp_path, corpus, logs):
    _, a = _run(tmp_path, "a", corpus)
    fp = a.manifest("tokenizer")["fingerprint"]
    entry = tmp_path / ".store" / "tokenizer" / fp
    victim = entry / "tokenizer.json"
    victim.unlink()  # the store's link only: run a's file stays
    victim.write_text("{}")
    logs.readouterr()
    b = RunDir(tmp_path / "b")
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=4)), b, until="tokenizer")
    err = " ".join(logs.readouterr().err.split())
    assert "is damaged" in err and "tokenizer: running" in err
    assert "reused_from" not in b.manifest("tokenizer")
    assert json.loads((entry / "tokenizer.json").read_text()) != {}  # republished by run b


def test_store_can_be_disabled(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("KILN_STAGE_CACHE", "off")
    _run(tmp_path, "a", corpus)
    _, b = _run(tmp_path, "b", corpus, "train.lr=0.01")
    assert "reused_from" not in b.manifest("corpus")
    assert not (tmp_path / ".store").exists()


def test_force_rebuilds_downstream_only(tmp_path, corpus):
    recipe, a = _run(tmp_path, "a", corpus)
    for name in ("corpus", "tokenizer", "tokens"):
        (a.stage(name) / "marker").write_text("still here")  # gone when the folder is rebuilt
    with pytest.raises(RunError, match="unknown stage"):
        run_pipeline(recipe, a, until="train", force=("nope",))
    run_pipeline(recipe, a, until="train", force=("tokenizer",))
    assert (a.stage("corpus") / "marker").exists()
    assert not (a.stage("tokenizer") / "marker").exists() and not (a.stage("tokens") / "marker").exists()
    assert "reused_from" not in a.manifest("tokenizer") and "reused_from" not in a.manifest("tokens")


# ----------------------------------------------------------------------------- post stages


def _average(recipe, run, out):
    """A real post stage: the mean of the last two checkpoints of the model stage before it."""
    from kiln.model.load import list_checkpoints

    last = source_checkpoint(recipe, run, "average")
    ckpts = list_checkpoints(last.parent)[-2:]
    states = [load_file(c / "model.safetensors") for c in ckpts]
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0).contiguous() for k in states[0]}
    dest = out / "checkpoints" / last.name
    dest.mkdir(parents=True)
    save_file(mean, dest / "model.safetensors")
    (dest / "config.json").write_bytes((last / "config.json").read_bytes())
    return {"averaged": [c.name for c in ckpts]}


@pytest.fixture
def average_stage():
    register_stage(Stage("average", (), _average, (MODEL,), ("checkpoints/step-N",), model=True,
                         extra=lambda r: {"k": 2}))
    yield
    unregister_stage("average")
    assert "average" not in STAGES and "average" not in ORDER


def test_post_stage_follows_train_and_feeds_eval(tmp_path, corpus, average_stage):
    recipe = load_recipe("demo", tiny_overrides(corpus, steps=20))
    assert ORDER.index("average") == ORDER.index("train") + 1
    assert plan_names(recipe, ["eval"]) == ["corpus", "tokenizer", "tokens", "train", "average", "eval"]
    plan = make_plan(recipe, None)
    assert plan.inputs["average"] == {"train": plan.fps["train"]}
    assert set(plan.inputs["eval"]) == {"average", "tokens"}
    run = RunDir(tmp_path / "run")
    results = run_pipeline(recipe, run)
    assert results["average"]["stats"]["averaged"] == ["step-000010", "step-000020"]
    ckpt = final_checkpoint(run, recipe)
    assert ckpt.parent.parent == run.stage("average")
    assert final_checkpoint(run) == ckpt  # from the run's recipe.yaml
    ev = json.loads((run.stage("eval") / "metrics.json").read_text())
    assert ev["checkpoint"] == str(ckpt)
    samples = (run.stage("generate") / "samples.jsonl").read_text().splitlines()
    assert all(json.loads(s)["checkpoint"] == str(ckpt) for s in samples)
    before = run.manifest("average")["finished"]
    run_pipeline(recipe, run)  # up to date: the post stage is skipped like any other
    assert run.manifest("average")["finished"] == before


def test_synthetic_run_end_to_end(tmp_path, corpus):
    """tokens.synthetic: no corpus, no tokenizer; train/eval read token_bytes from tokens; generate says why not."""
    over = tiny_overrides(corpus, steps=6) + [
        "tokens.synthetic={generator: markov, vocab_size: 160, n_train: 64, n_val: 8, doc_len: 40}"]
    recipe = load_recipe("demo", over)
    run = RunDir(tmp_path / "run")
    results = run_pipeline(recipe, run)
    assert list(results) == ["tokens", "train", "eval", "generate", "report"]
    assert not run.stage("corpus").exists() and not run.stage("tokenizer").exists()
    assert run.manifest("tokens")["inputs"] == {}
    ev = json.loads((run.stage("eval") / "metrics.json").read_text())
    assert ev["val_bpb"] > 0 and ev["unigram_bpb"] == run.manifest("tokens")["stats"]["unigram_bpb"]
    assert "no tokenizer" in run.manifest("generate")["stats"]["skipped"]
    assert (run.stage("report") / "index.html").exists()
    from kiln.model.load import load_model

    assert load_model(final_checkpoint(run)).config.vocab_size == 160


@pytest.mark.slow
def test_torchrun_verifies_the_tokenizer_like_one_process(tmp_path, corpus):
    """One run_stage path: under torchrun rank 0 checks every upstream file (the drifted copy skipped the
    tokenizer's), and every rank stops with the error."""
    from tests.test_distributed import torchrun_train

    over = tiny_overrides(corpus, steps=4)
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", over), run, until="tokens")
    tok = run.stage("tokenizer") / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<|bos|>"', '"<|BOS|>"', 1))
    output = torchrun_train(over, run.root, ok=False)
    assert "tokenizer.json was modified after the stage completed" in output and "rank 0 failed" in output
    assert not run.stage("train").exists()


def test_dry_run_says_what_each_stage_would_do(tmp_path, corpus):
    from typer.testing import CliRunner

    from kiln.cli import app
    from kiln.stages import plan_status

    recipe, a = _run(tmp_path, "a", corpus)
    rows = {r["stage"]: r for r in plan_status(recipe, a, "train")}
    assert [rows[n]["action"] for n in ("corpus", "tokenizer", "tokens", "train")] == ["up to date"] * 4
    b = RunDir(tmp_path / "b")
    other = load_recipe("demo", tiny_overrides(corpus, steps=4) + ["train.lr=0.01"])
    rows = {r["stage"]: r for r in plan_status(other, b, "train")}
    assert rows["tokens"]["action"] == "reuse" and rows["train"]["action"] == "run"
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=61)  # the source changed
    rows = {r["stage"]: r for r in plan_status(recipe, a, "train", force=("tokens",))}
    assert rows["corpus"] == {**rows["corpus"], "action": "rebuild", "why": f"source {src} changed"}
    assert rows["tokenizer"]["why"] == "input corpus changed"
    assert rows["tokens"]["why"] == "forced"
    assert not b.root.exists() or not b.stage("corpus").exists()  # nothing ran

    before = a.manifest("corpus")
    res = CliRunner().invoke(app, ["run", "--run-dir", str(a.root), "--dry-run", "--until", "tokens"])
    assert res.exit_code == 0, res.output
    assert "rebuild" in res.output and "changed" in res.output
    assert a.manifest("corpus") == before  # a dry run builds nothing


def test_store_sweeps_what_a_killed_publisher_left(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    src = tmp_path / "stage"
    src.mkdir()
    (src / "manifest.json").write_text("{}")
    store = StageStore(tmp_path / "store")
    stale = tmp_path / "store" / "corpus" / f".abc.{dead}.tmp"
    stale.mkdir(parents=True)
    live = tmp_path / "store" / "corpus" / f".abc.{os.getpid()}.tmp"  # this process: not swept, reused
    live.mkdir()
    entry = store.publish("corpus", "abc", src)
    assert entry is not None and (entry / "manifest.json").read_text() == "{}"
    assert not stale.exists() and not live.exists()  # the dead one swept, ours renamed into the entry
    assert os.stat(entry / "manifest.json").st_ino == os.stat(src / "manifest.json").st_ino
