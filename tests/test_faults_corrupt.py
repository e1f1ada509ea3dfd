"""Corrupt artifacts: truncated shards, checkpoints missing a file, wrong fingerprints, edited tokenizers.

Every one is detected with a clear error naming the file, or (a manifest whose fingerprint does not match)
makes the stage rebuild; none is ever silently used.
"""

from __future__ import annotations

import json

import pytest

from kiln.data.shards import ShardError, TokenShard
from kiln.run import RunDir, RunError
from kiln.stages import run_pipeline
from kiln.train.checkpoint import CheckpointError
from tests.faults_util import copy_run, make_corpus, sha, tiny_recipe

STEPS = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("corrupt")
    corpus = make_corpus(base)
    run = RunDir(base / "clean")
    run_pipeline(tiny_recipe(corpus, "train.checkpoint_every=2", steps=STEPS), run, until="eval")
    return corpus, run


@pytest.fixture
def run(prepared, tmp_path) -> RunDir:
    return copy_run(prepared[1], tmp_path / "run")


def rerun(prepared, run: RunDir, until: str = "train", force: tuple[str, ...] = ()) -> None:
    recipe = tiny_recipe(prepared[0], "train.checkpoint_every=2", steps=STEPS)
    run_pipeline(recipe, run, until=until, force=force)


def test_edited_tokenizer_is_refused_downstream(prepared, run):
    path = run.stage("tokenizer") / "tokenizer.json"
    path.write_text(path.read_text().replace('"<|bos|>"', '"<|BOS|>"', 1))
    with pytest.raises(RunError, match=r"tokenizer\.json was modified after the stage completed.*--force tokenizer"):
        rerun(prepared, run, force=("train",))
    with pytest.raises(RunError, match="tokenizer.json was modified"):
        rerun(prepared, run, until="eval", force=("eval",))


def test_truncated_shard_is_refused(prepared, run):
    path = run.stage("tokens") / "train-00000.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RunError, match=r"train-00000\.bin has \d+ bytes, the stage wrote \d+"):
        rerun(prepared, run, force=("train",))
    manifest = json.loads((run.stage("tokens") / "manifest.json").read_text())
    manifest.pop("files")  # a manifest from before file records: the shard reader still refuses
    (run.stage("tokens") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="truncated or mismatched"):
        rerun(prepared, run, force=("train",))
    with pytest.raises(ShardError, match="truncated"):
        TokenShard(run.stage("tokens") / "train-00000")


def test_shard_index_with_wrong_offsets_is_refused(run):
    idx = run.stage("tokens") / "val-00000.idx.npy"
    import numpy as np

    offsets = np.load(idx)
    offsets[-1] += 1
    np.save(idx, offsets)
    with pytest.raises(ShardError, match="inconsistent"):
        TokenShard(run.stage("tokens") / "val-00000")


@pytest.mark.parametrize("missing", ["optimizer.pt", "model.safetensors", "trainer_state.json"])
def test_checkpoint_missing_a_file_is_refused_on_resume(prepared, run, missing):
    (run.stage("train") / "manifest.json").unlink()  # an unfinished train stage resumes from its last checkpoint
    (run.stage("train") / "checkpoints" / f"step-{STEPS:06d}" / missing).unlink()
    with pytest.raises(CheckpointError, match=f"step-{STEPS:06d} is incomplete: missing {missing}"):
        rerun(prepared, run)


@pytest.mark.parametrize("text,problem", [('{"step": 4, "tok', "is corrupt"), ('{"step": 4}', "lacks tokens_seen")])
def test_corrupt_trainer_state_is_refused_on_resume(prepared, run, text, problem):
    (run.stage("train") / "manifest.json").unlink()
    (run.stage("train") / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json").write_text(text)
    with pytest.raises(CheckpointError, match=f"trainer_state.json {problem}.*delete checkpoint"):
        rerun(prepared, run)


def test_corrupt_checkpoint_config_is_refused_by_eval(prepared, run):
    (run.stage("train") / "checkpoints" / f"step-{STEPS:06d}" / "config.json").write_text('{"vocab_size": ')
    with pytest.raises(CheckpointError, match="config.json is not a valid model config"):
        rerun(prepared, run, until="eval", force=("eval",))


def test_final_checkpoint_missing_weights_is_refused_by_eval(prepared, run):
    (run.stage("train") / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        rerun(prepared, run, until="eval", force=("eval",))


def test_manifest_with_wrong_fingerprint_is_rebuilt_not_used(prepared, run):
    path = run.stage("tokenizer") / "manifest.json"
    manifest = json.loads(path.read_text())
    good = manifest["fingerprint"]
    path.write_text(json.dumps({**manifest, "fingerprint": "0" * 16}))
    assert not run.is_complete("tokenizer", good)
    before = sha(run.stage("tokenizer") / "tokenizer.json")
    rerun(prepared, run, until="tokens")
    assert run.manifest("tokenizer")["fingerprint"] == good
    assert sha(run.stage("tokenizer") / "tokenizer.json") == before  # rebuilt identically


def test_corrupt_manifest_is_a_clear_error(prepared, run):
    (run.stage("corpus") / "manifest.json").write_text('{"stage": "corpus", "compl')
    with pytest.raises(RunError, match="corrupt manifest.*--force corpus"):
        rerun(prepared, run, until="tokens")


def test_deleted_corpus_file_is_refused(prepared, run):
    (run.stage("corpus") / "val-00000.parquet").unlink()
    with pytest.raises(RunError, match=r"val-00000\.parquet is missing"):
        rerun(prepared, run, until="tokens", force=("tokenizer",))
