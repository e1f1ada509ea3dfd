"""The report's Probes section (issue 12, point 10): results saved by `kiln eval --probe` appear in the report."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.report.build import build_report


def test_saved_probe_results_are_listed_in_the_report(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "eval").mkdir(parents=True)
    out.mkdir()
    probe = {"task": "genre", "classes": ["comedy", "history", "tragedy"], "n_test": 170, "n_test_docs": 6,
             "linear_acc": 0.6412, "finetune_acc": 0.7059, "majority_acc": 0.5294, "majority_class": "tragedy"}
    (run / "eval" / "probe-genre.json").write_text(json.dumps(probe))
    linear_only = {k: v for k, v in probe.items() if k != "finetune_acc"} | {"task": "column:label"}
    (run / "eval" / "probe-column-label.json").write_text(json.dumps(linear_only))
    build_report(run, out)
    page = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<h2>Probes</h2>" in page and "## Probes" in md
    for text in ("genre", "0.6412", "0.7059", "0.5294 (tragedy)", "170 windows / 6 docs", "column:label",
                 "not run"):
        assert text in md, text


def test_no_probe_says_how_to_run_one(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    build_report(run, out)
    assert "kiln eval --probe TASK" in (out / "report.md").read_text(encoding="utf-8")
