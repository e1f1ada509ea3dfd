"""``kiln runs [ROOT]`` (issue 12, point 18): run folders with their status, training step/total and headline
metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from kiln.cli import app
from kiln.runs_index import list_runs


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _manifest(run: Path, stage: str, complete: bool = True) -> None:
    _write(run / stage / "manifest.json", {"stage": stage, "complete": complete})


def test_runs_lists_status_progress_and_headline_metrics(tmp_path):
    done, stopped = tmp_path / "done", tmp_path / "stopped"
    _write(done / "recipe.yaml", "name: alpha\ntrain:\n  steps: 80\n")
    for stage in ("corpus", "tokenizer", "tokens", "train", "eval", "generate", "report"):
        _manifest(done, stage)
    _write(done / "metrics.jsonl", "\n".join(json.dumps(r) for r in [
        {"kind": "train", "step": 80, "loss": 3.0}, {"kind": "val", "step": 80, "val_bpb": 2.9}]) + "\n")
    _write(done / "eval" / "metrics.json", {"val_bpb": 2.5, "val_loss": 1.7})
    _write(done / "eval" / "probe-genre.json", {"task": "genre", "linear_acc": 0.61, "majority_acc": 0.53})
    _write(stopped / "recipe.yaml", "name: beta\ntrain:\n  steps: 160\n")
    for stage in ("corpus", "tokenizer", "tokens"):
        _manifest(stopped, stage)
    _write(stopped / "train" / "fingerprint.json", {"fingerprint": "x"})
    _write(stopped / "metrics.jsonl", "\n".join(json.dumps(r) for r in [
        {"kind": "val", "step": 0, "val_bpb": 8.0}, {"kind": "train", "step": 40, "loss": 4.0},
        {"kind": "val", "step": 40, "val_bpb": 3.3}]) + '\n{"kind": "tra')  # a torn last line
    (tmp_path / "not-a-run").mkdir()
    res = CliRunner().invoke(app, ["runs", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["recipe"]: r for r in map(json.loads, res.output.splitlines())}
    assert set(rows) == {"alpha", "beta"}
    a, b = rows["alpha"], rows["beta"]
    assert a["status"] == "done" and a["stages"][-1] == "report" and (a["step"], a["total_steps"]) == (80, 80)
    assert (a["val_bpb"], a["val_from"]) == (2.5, "eval") and a["probes"] == {"genre": 0.61}
    assert b["status"] == "training stopped or running" and b["stages"] == ["corpus", "tokenizer", "tokens"]
    assert (b["step"], b["total_steps"], b["val_bpb"], b["val_from"]) == (40, 160, 3.3, "train")
    table = CliRunner().invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "40/160" in table.output and "val bpb 2.5000 (eval)" in table.output and "probe genre linear 0.610" \
        in table.output


def test_runs_on_a_real_run(tiny_trained, tmp_path):
    shutil.copytree(tiny_trained.run.root, tmp_path / "tiny")
    (s,) = list_runs(tmp_path)
    assert s.stages == ["corpus", "tokenizer", "tokens", "train"] and s.status == "partial"
    assert (s.step, s.total_steps, s.val_from) == (10, 10, "train") and s.val_bpb is not None


def test_runs_on_a_missing_folder_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["runs", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such folder" in res.output
