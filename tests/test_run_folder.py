"""Default run folders and run-folder ownership (issue 12 point 8).

Every recipe gets its own folder ``runs/<name>`` (a recipe without ``name:`` is named after its file), and a run
folder holding another recipe's run is refused unless ``--force-run``: nothing is replaced behind the user's back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kiln.cli import app
from kiln.recipe import RECIPES_DIR, default_name, load_recipe
from kiln.run import RunDir, RunError
from tests.synthetic import write_jsonl_corpus

runner = CliRunner()


def test_every_builtin_recipe_has_its_own_run_folder():
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    folders = {RunDir.for_recipe(load_recipe(n)).root for n in names}
    assert len(folders) == len(names)
    assert RunDir.for_recipe(load_recipe("yi-cascade")).root == Path("runs/yi-cascade")
    assert RunDir.for_recipe(load_recipe("curation")).root == Path("runs/curation")


def test_name_defaults_to_the_file_stem_and_an_explicit_name_wins(tmp_path):
    p = tmp_path / "my corpus.v2.yaml"
    p.write_text("train: {steps: 5}\n")
    assert load_recipe(p).name == "my-corpus.v2"
    assert load_recipe(p, ["name=other"]).name == "other"
    (tmp_path / "named.yaml").write_text("name: fixed\n")
    assert load_recipe(tmp_path / "named.yaml").name == "fixed"
    assert load_recipe(None).name == "run"
    assert default_name(Path("__.yaml")) == "run"


def _tiny_recipe(path: Path, corpus: Path) -> Path:
    path.write_text(yaml.safe_dump({"corpus": {"sources": [{"kind": "jsonl", "path": str(corpus)}],
                                               "min_chars": 20, "val_fraction": 0.1}}))
    return path


def test_a_run_folder_of_another_recipe_is_refused_unless_forced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=30)
    other = write_jsonl_corpus(tmp_path / "other.jsonl", n_docs=20, seed=1)
    a = _tiny_recipe(tmp_path / "alpha.yaml", corpus)
    b = _tiny_recipe(tmp_path / "beta.yaml", other)
    res = runner.invoke(app, ["corpus", str(a)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["corpus", str(b)])  # no name: its own folder, runs/beta, not a shared runs/run
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs/alpha/corpus/manifest.json").exists()
    assert (tmp_path / "runs/beta/corpus/manifest.json").exists()

    before = (tmp_path / "runs/alpha/corpus/manifest.json").read_bytes()
    res = runner.invoke(app, ["corpus", str(b), "--run-dir", "runs/alpha"], terminal_width=200)
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "holds a run of recipe 'alpha'" in text and "not 'beta'" in text and "differ in corpus" in text
    assert "--force-run" in text
    assert (tmp_path / "runs/alpha/corpus/manifest.json").read_bytes() == before  # untouched

    res = runner.invoke(app, ["corpus", str(b), "--run-dir", "runs/alpha", "--force-run"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "runs/alpha/recipe.yaml").read_text())["name"] == "beta"

    # the same recipe with overrides is the normal way to change a run: not refused
    res = runner.invoke(app, ["corpus", str(b), "corpus.val_fraction=0.2"])  # runs/beta
    assert res.exit_code == 0, res.output


def test_check_recipe_api(tmp_path):
    run = RunDir(tmp_path / "r")
    run.check_recipe(load_recipe("demo"))  # no folder yet: fine
    run.root.mkdir()
    run.write_recipe(load_recipe("demo"))
    run.check_recipe(load_recipe("demo", ["train.steps=5"]))
    with pytest.raises(RunError, match="holds a run of recipe 'demo'.*differ in .*train"):
        run.check_recipe(load_recipe("mlm"))
    RunDir.for_recipe(load_recipe("mlm"), run.root, force_run=True)
