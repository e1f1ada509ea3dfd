"""Run report: a full fake run renders every section; an empty run still renders, saying "not run"."""

from __future__ import annotations

import json
from pathlib import Path

from kiln.report import plots
from kiln.report.build import build_report

STAGES = ("corpus", "tokenizer", "tokens", "train", "eval")


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")


def _in_fence(md: str, needle: str) -> bool:
    """Whether every line of ``md`` containing ``needle`` sits inside a fenced code block."""
    inside, found = False, False
    for line in md.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif needle in line:
            found = True
            if not inside:
                return False
    return found


def _fake_run(run: Path) -> None:
    _write(run / "recipe.yaml", "name: tiny\ntrain:\n  steps: 20\n  lr: 0.003\n")
    step = {
        "step": "gopher_repetition",
        "docs_in": 1000,
        "docs_out": 900,
        "docs_removed": 100,
        "bytes_removed": 54321,
        "examples": [{"id": f"d{i}", "reason": "dup_line_frac", "text": "spam <b>spam</b> " * 3} for i in range(5)],
    }
    sources = {"shakespeare": {"kind": "shakespeare", "docs_read": 1000, "bytes_read": 123456}, "old": 7}
    _write(run / "corpus" / "funnel.json", {"steps": [step], "sources": sources, "split": {"val": 0.01}})
    stats = {
        "corpus": {"n_docs": 900},
        "tokenizer": {"vocab_size": 4096},
        "tokens": {
            "train": {"n_tokens": 200_000, "n_docs": 890, "n_bytes": 800_000},
            "val": {"n_tokens": 2_000, "n_docs": 10, "n_bytes": 8_000},
            "vocab_size": 4096,
            "dtype": "uint16",
        },
        "train": {"n_params": 1_234_567, "tokens": 81_920},
        "eval": {"val_bpb": 1.875},
    }
    for i, stage in enumerate(STAGES):
        manifest = {"stage": stage, "fingerprint": f"{i}abcdef0123456789", "complete": True}
        manifest |= {"finished": "2025-01-01T00:00:00", "seconds": 1.5 + i, "stats": stats[stage]}
        _write(run / stage / "manifest.json", manifest)
    rows = []
    for s in range(1, 21):
        rows.append(
            {"kind": "train", "step": s, "loss": 5.0 - 0.1 * s, "lr": 3e-3, "grad_norm": 1.0, "tokens": 4096 * s}
            | {"tokens_per_s": 50_000.0 + 2 * s, "mfu": 0.25 if s > 1 else None, "elapsed_s": 0.5 * s}
        )
        if s % 10 == 0:
            rows.append(
                {"kind": "val", "step": s, "val_loss": 3.5 - 0.1 * s, "val_bpb": 2.0 - 0.01 * s, "tokens": 4096 * s}
            )
    lines = [json.dumps(r) for r in rows] + ['{"kind": "train", "step": 21, "lo']  # torn last line
    _write(run / "metrics.jsonl", "\n".join(lines) + "\n")
    _write(run / "eval" / "metrics.json", {"val_loss": 1.3, "val_bpb": 1.875, "unigram_bpb": 4.5, "n_tokens": 2000})
    samples = [{"prompt": "To be", "text": "To be <script>alert('x')</script> or not", "temperature": 0.8}]
    _write(run / "generate" / "samples.jsonl", "\n".join(json.dumps(s) for s in samples) + "\n")


def test_full_run_report(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _fake_run(run)
    result = build_report(run, out)

    files = set(result["files"])
    assert {"index.html", "report.md", "funnel.png", "loss.png", "bpb.png", "throughput.png"} <= files
    for name in files:
        assert (out / name).stat().st_size > 0
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for text in (page, md):
        assert "1.875" in text and "4.5" in text  # val bpb vs unigram baseline
        assert "58.3% lower" in text
        assert "1,234,567" in text and "1.23M" in text  # parameters
        assert "81,920" in text  # tokens trained
        assert "gopher_repetition" in text and "54,321" in text and "10.0%" in text
        assert "shakespeare" in text and "uint16" in text and "4,096" in text
        assert "123,456" in text and "| old | 7 |" in md  # sources table: columns, and an old-style count
        assert "steps: 20" in text  # the recipe
        assert text.count("not run") == 1  # only the generate stage lacks a manifest
        assert text.count("d2 — dup_line_frac") == 1 and "d3 —" not in text  # 3 examples per step
    assert "&lt;script&gt;" in page and "<script>" not in page and "<b>spam" not in page
    assert all(_in_fence(md, s) for s in ("<script>", "<b>spam"))  # Markdown: literal inside code fences
    assert 'src="loss.png"' in page and "![train and val loss](loss.png)" in md
    assert "50,021" in page  # median tokens/s
    assert "25.0%" in page  # median MFU, null rows skipped
    assert "<td>10.0 s</td>" in page  # wall time from the last (intact) training row


def test_empty_run_report(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    result = build_report(run, out)
    assert sorted(result["files"]) == ["index.html", "report.md"]
    page = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for title in ("Summary", "Stages", "Corpus", "Tokens", "Training", "Evaluation", "Samples", "Recipe"):
        assert f"<h2>{title}</h2>" in page and f"## {title}" in md
    assert page.count("not run") >= 13  # 6 stage rows + 7 missing sections
    assert md.count("not run") >= 13


def test_malformed_artifact_only_costs_its_section(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _write(run / "corpus" / "funnel.json", "{not json")
    _write(run / "eval" / "metrics.json", {"val_loss": 1.0, "val_bpb": 1.5, "unigram_bpb": 3.0})
    build_report(run, out)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "could not read this section" in page and "JSONDecodeError" in page
    assert "50.0% lower" in page


def test_val_numbers_say_which_validation_they_cover(tmp_path: Path) -> None:
    """The summary card (eval stage, whole split) and the training table (first train.eval_sequences) differ:
    each names what it covers (issue 12, point 2: 3.064 vs 2.945 shown unlabelled)."""
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _fake_run(run)
    _write(run / "eval" / "metrics.json", {"val_loss": 2.1, "val_bpb": 3.064, "sequences": 412})
    build_report(run, out, eval_sequences=64)
    md = (out / "report.md").read_text(encoding="utf-8")
    card = next(line for line in md.splitlines() if "3.064" in line)
    assert "eval stage, 412 validation sequences" in card
    best = next(line for line in md.splitlines() if "best val bits / byte" in line)
    assert "first 64 validation sequences" in best and "1.8" in best  # min of the training-time rows
    assert "train.eval_sequences" in md


def test_summary_without_eval_says_it_is_a_training_validation(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _fake_run(run)
    (run / "eval" / "metrics.json").unlink()
    build_report(run, out, eval_sequences=None)
    card = next(line for line in (out / "report.md").read_text().splitlines() if "val bits / byte" in line)
    assert "last training validation, step 20, all validation sequences" in card


def test_report_samples_limits_the_samples_shown(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _fake_run(run)
    rows = [{"prompt": f"prompt {i}.", "text": f"prompt {i}. continued"} for i in range(5)]
    _write(run / "generate" / "samples.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    build_report(run, out, samples=2)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "prompt 1." in md and "prompt 2." not in md
    assert "3 more in generate/samples.jsonl (report.samples = 2)" in md
    build_report(run, out, samples=0)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "prompt 0." not in md and "none shown (report.samples = 0)" in md


def test_funnel_bytes_axis_ticks_in_the_bar_labels_units() -> None:
    fig = plots.funnel_figure(["a", "b"], [3, 0], removed_bytes=[54_321, 1_200])
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert ticks and all(t == "0" or t.endswith(("B", "kB")) for t in ticks), ticks
    assert any(t.endswith("kB") for t in ticks), ticks
    bars = [t.get_text() for t in fig.axes[1].texts]
    assert "54.3 kB" in bars and "1.2 kB" in bars


def test_examples_of_a_step_that_only_changed_documents_say_so(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    example = {"id": "d1", "reason": "unicode NFC", "text": "caf\u0065\u0301"}
    step = {"step": "normalize", "docs_in": 10, "docs_out": 10, "docs_removed": 0, "docs_changed": 3,
            "bytes_removed": 3, "examples": [example] * 3}
    _write(run / "corpus" / "funnel.json", {"steps": [step]})
    build_report(run, out)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "normalize: 3 example(s) of documents it changed (text before the change)" in md
    assert "of what it removed" not in md


def test_report_stage_passes_the_recipes_report_and_validation_settings(tmp_path: Path) -> None:
    """The pipeline's report stage reads report.samples and train.eval_sequences from the recipe."""
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stage_graph import STAGES as GRAPH
    from kiln.stages import GOAL

    run = RunDir(tmp_path / "run")
    _fake_run(run.root)
    rows = [{"prompt": f"prompt {i}.", "text": f"prompt {i}. continued"} for i in range(4)]
    _write(run.root / "generate" / "samples.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    GRAPH[GOAL].fn(load_recipe("demo", ["report.samples=1", "train.eval_sequences=7"]), run, out)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "prompt 0." in md and "prompt 1." not in md and "3 more in generate/samples.jsonl" in md
    assert "best val bits / byte (first 7 validation sequences)" in md


def test_a_scorer_row_becomes_a_histogram_with_the_select_cut(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    sample = [i / 100 for i in range(100)]
    scorer = {"step": "ppl", "docs_in": 100, "docs_out": 100, "docs_removed": 0,
              "scores": {"field": "ppl", "n": 100, "n_nan": 2, "min": 0.0, "max": 0.99, "sample": sample}}
    select = {"step": "select", "docs_in": 100, "docs_out": 30, "docs_removed": 70,
              "selection": {"field": "ppl", "rule": "the highest ppl", "cuts": {"*": 0.7}}}
    _write(run / "corpus" / "funnel.json", {"steps": [scorer, select]})
    build_report(run, out)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Scores" in md or "### Scores" in md
    assert "ppl: 100 documents scored (2 without a score)" in md and (out / "scores-0.png").stat().st_size > 1000
    assert not (out / "scores-1.png").exists()  # select is not a scorer
