"""The `kiln` command: errors are one clear line; a tiny run works end to end."""

import json

from typer.testing import CliRunner

from kiln.cli import app
from tests.synthetic import tiny_overrides, write_jsonl_corpus

runner = CliRunner()


def test_invalid_override_is_rejected_before_running(tmp_path):
    res = runner.invoke(app, ["run", "demo", "train.lr=-1", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "train.lr: Input should be greater than 0, got -1" in res.output
    assert not (tmp_path / "r").exists()


def test_unknown_recipe_and_stage(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["run", "demo", "--until", "nostage", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown stage" in res.output


def test_recipe_show_and_list():
    res = runner.invoke(app, ["recipe", "show", "demo", "train.steps=3"])
    assert res.exit_code == 0 and "steps: 3" in res.output
    res = runner.invoke(app, ["recipe", "list"])
    assert res.exit_code == 0 and "demo" in res.output


def test_bad_corpus_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    res = runner.invoke(app, ["corpus", "demo", *tiny_overrides(bad), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "bad.jsonl" in res.output and ":2" in res.output
    assert not (tmp_path / "r" / "corpus" / "manifest.json").exists()


def test_tiny_run_eval_generate(tmp_path):
    corpus = write_jsonl_corpus(tmp_path / "docs.jsonl")
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["run", "demo", *tiny_overrides(corpus, steps=6), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "bits/byte" in res.output
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["val_bpb"] > 0
    res = runner.invoke(app, ["generate", "--run-dir", str(run_dir), "-p", "King", "--max-new-tokens", "5",
                              "--temperature", "0"])
    assert res.exit_code == 0, res.output
    assert "King" in res.output
    res = runner.invoke(app, ["eval", "--run-dir", str(run_dir)])  # up to date: skipped, summary printed
    assert res.exit_code == 0 and "bits/byte" in res.output
