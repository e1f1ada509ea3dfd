"""Run report: a full fake run renders every section; an empty run still renders, saying "not run"."""

from __future__ import annotations

import json
from pathlib import Path

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
