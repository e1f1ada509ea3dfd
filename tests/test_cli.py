"""The `kiln` command: errors are one clear line; a tiny run works end to end."""

import json

import pytest
import yaml
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


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.delenv("KILN_QUIET", raising=False)  # the header is a log line; CI sets KILN_QUIET=1
    root = tmp_path_factory.mktemp("cli")
    corpus = write_jsonl_corpus(root / "docs.jsonl")
    run_dir = root / "run"
    res = runner.invoke(app, ["run", "demo", *tiny_overrides(corpus, steps=12), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "bits/byte" in res.output
    assert "activation checkpointing none" in res.output  # not a bare "checkpointing none" next to checkpoint_every
    return run_dir


def test_tiny_run_eval_generate(tiny_run):
    run_dir = tiny_run
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["val_bpb"] > 0
    res = runner.invoke(app, ["generate", "--run-dir", str(run_dir), "-p", "King", "--max-new-tokens", "5",
                              "--temperature", "0"])
    assert res.exit_code == 0, res.output
    assert "King" in res.output
    res = runner.invoke(app, ["eval", "--run-dir", str(run_dir)])  # up to date: skipped, summary printed
    assert res.exit_code == 0 and "bits/byte" in res.output


def test_generate_never_rewrites_the_runs_recipe(tiny_run):
    """generate.* overrides are one-off: recipe.yaml stays, and a later report keeps the recipe's samples."""
    recipe = (tiny_run / "recipe.yaml").read_bytes()
    samples = (tiny_run / "generate" / "samples.jsonl").read_bytes()
    manifest = (tiny_run / "generate" / "manifest.json").read_bytes()
    res = runner.invoke(app, ["generate", "--run-dir", str(tiny_run), "generate.seed=3", "generate.max_new_tokens=4"])
    assert res.exit_code == 0, res.output
    assert (tiny_run / "recipe.yaml").read_bytes() == recipe
    res = runner.invoke(app, ["report", "--run-dir", str(tiny_run)])
    assert res.exit_code == 0, res.output
    assert (tiny_run / "recipe.yaml").read_bytes() == recipe
    assert (tiny_run / "generate" / "samples.jsonl").read_bytes() == samples
    assert (tiny_run / "generate" / "manifest.json").read_bytes() == manifest  # not rebuilt with seed 3


def test_generate_seed_and_checkpoint_options(tiny_run, monkeypatch):
    import kiln.infer.stage

    seen = {}

    def fake_sample(run, cfg, device, recipe, checkpoint=None):
        seen.update(cfg=cfg, checkpoint=checkpoint)
        return [{"prompt": "p", "text": "p!"}]

    monkeypatch.setattr(kiln.infer.stage, "sample", fake_sample)
    step10 = sorted((tiny_run / "train" / "checkpoints").iterdir())[0]  # step-10 of 12: not the final one
    assert (step10 / "model.safetensors").is_file()
    res = runner.invoke(app, ["generate", "--run-dir", str(tiny_run), "--seed", "5", "--checkpoint", str(step10),
                              "generate.top_k=7"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].seed == 5 and seen["cfg"].top_k == 7 and seen["checkpoint"] == step10
    res = runner.invoke(app, ["generate", "--run-dir", str(tiny_run), "--checkpoint", str(tiny_run / "nope")])
    assert res.exit_code == 2 and "not a checkpoint folder" in res.output
    res = runner.invoke(app, ["generate", "--run-dir", str(tiny_run), "generate.top_k=0"])
    assert res.exit_code == 2 and "generate.top_k" in res.output


def test_version():
    from kiln import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"kiln {__version__}"


@pytest.mark.parametrize("command", ["run", "demo", "corpus", "tokenizer", "tokens", "train", "eval", "generate",
                                     "report"])
def test_every_command_help_explains_recipe_and_overrides(command):
    res = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "section.field=value" in text and "train.steps=50" in text and "kiln recipe explain" in text
    assert "--force-run" in text


def test_generate_help_has_seed_and_checkpoint():
    text = " ".join(runner.invoke(app, ["generate", "--help"], terminal_width=200).output.split())
    assert "--seed" in text and "--checkpoint" in text and "recipe.yaml is not changed" in text


def test_recipe_explain_field_section_and_errors():
    res = runner.invoke(app, ["recipe", "explain", "train.lr"])
    assert res.exit_code == 0
    assert "type:     float (> 0)" in res.output and "default:  0.003" in res.output
    res = runner.invoke(app, ["recipe", "explain", "train.schedule"])
    assert "allowed:  cosine, wsd, constant" in res.output and "default:  'cosine'" in res.output
    res = runner.invoke(app, ["recipe", "explain", "corpus.sources.0.editions"])
    assert "read by:  shakespeare sources only" in res.output
    res = runner.invoke(app, ["recipe", "explain", "corpus.on_error"])
    assert "about:" in res.output and "skip" in res.output
    res = runner.invoke(app, ["recipe", "explain", "train"], terminal_width=200)
    assert res.exit_code == 0 and "warmup_steps" in res.output and "batch_tokens" in res.output
    res = runner.invoke(app, ["recipe", "explain", "corpus.steps.minhash.buckets"])
    assert res.exit_code == 0 and "default:  32" in res.output
    res = runner.invoke(app, ["recipe", "explain", "train.nope"])
    assert res.exit_code == 2 and "train.nope: unknown field" in res.output and "warmup_steps" in res.output


def test_recipe_show_lists_only_the_options_a_source_kind_reads(tmp_path):
    res = runner.invoke(app, ["recipe", "show", "demo", f"corpus.sources=[{{kind: txt, path: '{tmp_path}'}}]"])
    assert res.exit_code == 0
    shown = yaml.safe_load(res.output)
    assert shown["corpus"]["sources"] == [{"kind": "txt", "path": str(tmp_path), "name": None, "max_docs": None}]
    res = runner.invoke(app, ["recipe", "show", "demo"])
    assert yaml.safe_load(res.output)["corpus"]["sources"][0]["editions"] == ["modern"]
    assert "path" not in yaml.safe_load(res.output)["corpus"]["sources"][0]
    # a field set off its default for a kind that ignores it is kept (round trip) and warned about
    res = runner.invoke(app, ["recipe", "show", "demo", "corpus.sources.0.kind=jsonl", "corpus.sources.0.path=x.jsonl"])
    assert res.exit_code == 0 and "corpus.sources.0.editions is set but a 'jsonl' source does not read it" in res.output


def test_warmup_longer_than_the_run_is_warned_before_running():
    res = runner.invoke(app, ["recipe", "show", "demo", "train.steps=30", "train.warmup_steps=50"])
    assert res.exit_code == 0
    assert "warning: train.warmup_steps=50 is more than half of train.steps=30: warm-up shortened to 15" in res.output
    res = runner.invoke(app, ["recipe", "show", "demo", "train.steps=100"])
    assert "warning" not in res.output


def test_ctrl_c_names_the_last_checkpoint_and_how_to_resume(tiny_run, tmp_path, monkeypatch):
    import shutil

    import kiln.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kiln.cli, "run_pipeline", interrupted)
    run_dir = tmp_path / "r"
    shutil.copytree(tiny_run, run_dir)
    for later in ("eval", "generate", "report"):
        shutil.rmtree(run_dir / later, ignore_errors=True)
    (run_dir / "train" / "manifest.json").unlink()  # as if stopped mid training, after the step-12 checkpoint
    last = sorted((run_dir / "train" / "checkpoints").iterdir())[-1]
    res = runner.invoke(app, ["train", "--run-dir", str(run_dir)], terminal_width=200)
    assert res.exit_code == 130
    text = " ".join(res.output.split())
    assert "interrupted" in text and "completed stages (corpus, tokenizer, tokens)" in text
    assert f"last checkpoint: {last}" in text
    assert f"resume training from it, rerun the same command, or: kiln train --run-dir {run_dir}" in text

    shutil.rmtree(run_dir / "train")
    res = runner.invoke(app, ["train", "--run-dir", str(run_dir)], terminal_width=200)
    assert res.exit_code == 130 and "no training checkpoint was written yet" in " ".join(res.output.split())


def test_a_whole_run_folder_follows_the_umask(tiny_run):
    """Stage folders, checkpoints and every artifact get the umask's modes, not mkstemp/mkdtemp's private ones."""
    from kiln.atomic import current_umask

    mask = current_umask()
    wrong = {}
    for p in [tiny_run, *tiny_run.rglob("*")]:
        if p.is_symlink():
            continue
        expected = (0o777 if p.is_dir() else 0o666) & ~mask
        if p.stat().st_mode & 0o777 != expected:
            wrong[str(p.relative_to(tiny_run))] = oct(p.stat().st_mode & 0o777)
    assert not wrong, wrong


@pytest.mark.slow
def test_a_real_ctrl_c_in_training_says_what_was_saved(tmp_path):
    """SIGINT to `python -m kiln run` mid training: exit 130, the last checkpoint named, how to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    corpus = write_jsonl_corpus(tmp_path / "docs.jsonl")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "kiln", "run", "demo", *tiny_overrides(corpus, steps=2000),
           "train.checkpoint_every=20", "--run-dir", str(run_dir)]
    # SIGINT handled as at a terminal, even when this test runs under a shell that started it in the background
    # (which leaves SIGINT ignored, and Python keeps an inherited SIG_IGN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpts = run_dir / "train" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpts.is_dir() and any(ckpts.glob("step-*"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    text = " ".join(err.split())
    last = sorted(ckpts.iterdir())[-1]
    assert f"last checkpoint: {last}" in text and f"kiln train --run-dir {run_dir}" in text
