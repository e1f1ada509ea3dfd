"""The sweep report and ``kiln ablate --compare``: pages and plots written, failed runs named, links to the
runs' own reports, and existing runs grouped into variants by recipe (fake run folders, no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiln.experiments.compare import compare_runs, write_sweep_report
from tests.test_compare_stats import fake_run, make_sweep, task_metrics


def referenced_files(report: Path) -> list[str]:
    page = (report / "index.html").read_text()
    md = (report / "report.md").read_text()
    return re.findall(r'<img src="([^"]+)"', page) + re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report_pages_plots_and_failed_runs(tmp_path):
    plan = make_sweep(tmp_path, {"full": 0.0, "quality-70": 0.05, "broken": 0.0},
                      failed={("quality-70", 2): "ValueError: corpus.steps[1]: unknown step 'x'",
                              ("broken", 0): "RuntimeError: out of memory", ("broken", 1): "killed",
                              ("broken", 2): "killed"})
    # a run the sweep calls done but whose eval never wrote metrics
    (tmp_path / "full" / "seed-1" / "eval" / "metrics.json").unlink()
    index = write_sweep_report(tmp_path, plan)
    report = tmp_path / "report"
    page, md = index.read_text(), (report / "report.md").read_text()
    files = referenced_files(report)
    assert {"val_bpb_vs_tokens.png", "val_bpb_vs_flops.png", "task_acc.png"} <= set(files)
    for f in files:
        assert (report / f).is_file() and (report / f).stat().st_size > 1000, f
    data = json.loads((report / "comparison.json").read_text())
    rows = {r["name"]: r for r in data["variants"]}
    assert rows["quality-70"]["n_done"] == 2 and rows["broken"]["n_done"] == 0 and rows["full"]["n_done"] == 2
    failed = {(r["seed"], r["status"], r["error"]) for r in rows["quality-70"]["runs"] if r["status"] != "done"}
    assert failed == {(2, "failed", "ValueError: corpus.steps[1]: unknown step 'x'")}
    missing = [r for r in rows["full"]["runs"] if r["seed"] == 1][0]
    assert missing["status"] == "failed" and "eval/metrics.json: missing" in missing["error"]
    for text in (page, md):
        assert "unknown step" in text and "out of memory" in text and "metrics.json: missing" in text
        assert "Sweep: planted" in text and "full (baseline)" in text
    # a variant with no finished run: no numbers, no interval, said so
    assert rows["broken"]["metrics"]["val_bpb"]["mean"] is None
    assert rows["broken"]["metrics"]["val_bpb"]["diff"]["note"] == "variant: no run reports it"
    # quality-70 ran seeds 0, 1 and full 0, 2 (seed 1 lost its metrics): one pair only, so unpaired (Welch)
    q = rows["quality-70"]["metrics"]["val_bpb"]["diff"]
    assert q["method"] == "welch" and q["lo"] < q["diff"] < q["hi"]
    # links to the runs' own reports (seed 0 of each variant has one), relative to the report folder
    assert '<a href="../full/seed-0/report/index.html">report</a>' in page
    assert "[report](<../full/seed-0/report/index.html>)" in md
    assert "KILNLINK" not in page + md
    # the variants' overrides are listed
    assert "train.lr=0.002" in md


def test_marks_in_the_table(tmp_path):
    plan = make_sweep(tmp_path, {"base": 0.0, "worse": 0.05, "same": 0.0})
    write_sweep_report(tmp_path, {**plan, "base": "demo", "overrides": {"train.steps": 10}, "budget": "tokens"})
    md = (tmp_path / "report" / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "(n=" in line]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table}
    assert len(lines) == 3
    assert "* worse" in lines["worse"] and "*" not in lines["same"]
    assert "baseline" in lines["base (baseline)"]
    assert "Base recipe: demo, with train.steps=10 for every variant." in md and "Budget: tokens" in md


def test_compare_runs_groups_seeds_by_recipe(tmp_path):
    runs = []
    for lr, tag in (("0.001", "lr-small"), ("0.003", "lr-big")):
        for seed in (0, 1):
            runs.append(fake_run(tmp_path, f"{tag}-s{seed}", seed, task_metrics(2.0 + float(lr), 0.4, 2.5),
                                 overrides=(f"train.lr={lr}",), report=True))
    out = tmp_path / "cmp"
    index = compare_runs([runs[2], runs[0], runs[3], runs[1]], out, baseline=None, metrics=["val_bpb"])
    data = json.loads((out / "comparison.json").read_text())
    names = [v["name"] for v in data["variants"]]
    assert names == ["lr-big-s0", "lr-small-s0"]  # the first run folder of each variant, in the order given
    assert data["baseline"] == "lr-big-s0"
    big, small = data["variants"]
    assert sorted(r["seed"] for r in big["runs"]) == [0, 1] and sorted(r["seed"] for r in small["runs"]) == [0, 1]
    assert big["overrides"] == {"train.lr": 0.003} and small["overrides"] == {"train.lr": 0.001}
    assert small["metrics"]["val_bpb"]["diff"]["diff"] == pytest.approx(-0.002, abs=1e-12)
    # every seed differs by exactly -0.002: no spread, so no interval is claimed (and nothing is marked)
    assert small["metrics"]["val_bpb"]["diff"]["method"] == "none"
    assert small["metrics"]["val_bpb"]["diff"]["note"].startswith("no spread across seeds")
    assert not small["metrics"]["val_bpb"]["diff"]["excludes_zero"]
    assert index.is_file() and all((out / f).is_file() for f in referenced_files(out))
    # a baseline named by one of its runs
    compare_runs(runs, out, baseline=str(runs[1]), metrics=None)
    assert json.loads((out / "comparison.json").read_text())["baseline"] == "lr-small-s0"
    with pytest.raises(ValueError, match="neither a variant nor one of the runs"):
        compare_runs(runs, out, baseline="nope", metrics=None)
    with pytest.raises(ValueError, match="no such run folder"):
        compare_runs([tmp_path / "missing"], out, baseline=None, metrics=None)


def test_compare_runs_names_sweep_folders_by_variant(tmp_path):
    runs = [fake_run(tmp_path, f"{v}/seed-{s}", s, task_metrics(2.0, 0.4, 2.5), overrides=(f"train.lr={lr}",))
            for v, lr in (("a", "0.001"), ("b", "0.002")) for s in (0, 1)]
    compare_runs(runs, tmp_path / "cmp", baseline="b", metrics=None)
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["a", "b"] and data["baseline"] == "b"
    assert data["variants"][0]["n_done"] == 2


def test_one_seed_sweep_has_differences_without_intervals(tmp_path):
    plan = make_sweep(tmp_path, {"base": 0.0, "other": 0.05}, seeds=(0,))
    write_sweep_report(tmp_path, plan)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    d = data["variants"][1]["metrics"]["val_bpb"]["diff"]
    assert d["lo"] is None and d["note"] == "1 seed" and not d["excludes_zero"]
    assert d["diff"] == pytest.approx(0.05, abs=0.01)
    assert data["variants"][0]["metrics"]["val_bpb"]["std"] is None
    assert "no interval: 1 seed" in (tmp_path / "report" / "report.md").read_text()
