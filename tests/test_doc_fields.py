"""Docs name only recipe fields that exist (issue 12, point 6: ``corpus.executor_dir`` was documented, never built)."""

from __future__ import annotations

import re
from pathlib import Path

from kiln.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("corpus", "report")  # sections whose fields the docs cite by dotted name
FILE_SUFFIXES = {"md", "json", "jsonl", "parquet", "yaml", "png", "html", "txt"}  # report.md etc. are files


def cited_fields(text: str) -> set[tuple[str, str]]:
    """``section.field`` names quoted as code (`x.y` or ``x.y``) in ``text``."""
    pattern = re.compile(r"`{1,2}(" + "|".join(SECTIONS) + r")\.([a-z_]+)")
    return {(m[1], m[2]) for m in pattern.finditer(text) if m[2] not in FILE_SUFFIXES}


def test_cited_fields_is_a_real_check():
    assert cited_fields("see ``corpus.executor_dir`` and `report.md`") == {("corpus", "executor_dir")}


def test_docs_and_docstrings_cite_only_existing_corpus_and_report_fields():
    files = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md", *(ROOT / "kiln").rglob("*.py")]
    missing = set()
    for path in files:
        for section, field in cited_fields(path.read_text(encoding="utf-8")):
            if field not in Recipe.model_fields[section].annotation.model_fields:
                missing.add(f"{section}.{field} in {path.relative_to(ROOT)}")
    assert not missing, sorted(missing)
