"""The ProX executor (Zhou et al. 2024, "Programming Every Example"), rule for rule.

Given a document and its programs (one doc-level program, the chunk-level programs of its chunks):

1. Doc level: a doc program containing ``drop`` (``drop_doc()``) empties the document; otherwise
   (``keep_doc()``) the chunk programs run.
2. The chunk programs are joined in chunk order and parsed; each malformed line is one error.
3. Every ``normalize`` runs first, in program order, as a plain replace over the whole text (a source of
   ``""`` or ``" "`` is ignored: replacing it would rewrite every space). Only then are lines removed,
   so line indices refer to the text after normalisation (as in the reference executor).
4. ``remove_lines`` ranges (inclusive, 0-based global indices) are merged when they overlap or touch;
   a range starting past the last line is an error and ignored, one ending past it is an error and
   clipped; ``remove_lines(all=True)`` removes every line.
5. With ``w0`` words before and ``w1`` after (whitespace split): drop (``""``) if ``w1 / w0 <= 0.05``
   and there were < 2 errors; else drop if ``w1 <= 10`` (the FineWeb-derived rule of the reference);
   else keep the refined text if there were < 2 errors; else (>= 2 errors) keep the original text.

Thresholds are parameters with the paper's defaults (``max_remaining_ratio`` 0.05, ``min_words`` 10,
``max_errors`` 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.corpus.prox.program import DropDoc, Normalize, RemoveLines, parse_program

DROP_DOC = "drop_doc"
DROP_RATIO = "dropped: few words remain"
DROP_SHORT = "dropped: too few words remain"
REFINED = "refined"
UNCHANGED = "unchanged"
ERRORS = "kept original: too many program errors"


@dataclass(frozen=True)
class ExecConfig:
    max_remaining_ratio: float = 0.05
    min_words: int = 10
    max_errors: int = 2


@dataclass
class ExecResult:
    """The executed document: ``text`` ("" = dropped), the ``outcome`` and what the program did."""

    text: str
    outcome: str
    errors: list[str] = field(default_factory=list)
    removed_ranges: list[tuple[int, int]] = field(default_factory=list)
    normalized: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.outcome in (DROP_DOC, DROP_RATIO, DROP_SHORT)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort inclusive ranges and merge those that overlap or touch (``(1, 3), (4, 6)`` -> ``(1, 6)``)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def doc_program_drops(doc_program: str) -> bool:
    """The doc-level rule: a program that parses to ``drop_doc()`` or merely contains ``drop`` drops the doc."""
    return "drop" in doc_program or any(isinstance(op, DropDoc) for op in parse_program(doc_program).ops)


def apply_chunk_program(text: str, program: str) -> tuple[str, list[str], list[tuple[int, int]], list[tuple[str, str]]]:
    """Steps 2-4: ``(refined text, errors, merged removed ranges, applied (source, target) pairs)``."""
    parsed = parse_program(program)
    errors = list(parsed.errors)
    normalized = []
    for op in parsed.ops:
        if isinstance(op, Normalize) and op.source not in ("", " "):
            text = text.replace(op.source, op.target)
            normalized.append((op.source, op.target))
    lines = text.split("\n")
    n = len(lines)
    ranges: list[tuple[int, int]] = []
    for op in parsed.ops:
        if not isinstance(op, RemoveLines):
            continue
        if op.all:
            ranges.append((0, n - 1))
        elif op.start >= n:
            errors.append(f"remove_lines({op.start}, {op.end}): starts past the last line {n - 1}")
        elif op.end >= n:
            errors.append(f"remove_lines({op.start}, {op.end}): clipped to the last line {n - 1}")
            ranges.append((op.start, n - 1))
        else:
            ranges.append((op.start, op.end))
    merged = merge_ranges(ranges)
    drop = set()
    for start, end in merged:
        drop.update(range(start, end + 1))
    return "\n".join(line for i, line in enumerate(lines) if i not in drop), errors, merged, normalized


def execute(text: str, doc_program: str, chunk_programs: list[str], cfg: ExecConfig | None = None) -> ExecResult:
    """Run a document's programs under the ProX rules (module docstring)."""
    cfg = cfg or ExecConfig()
    if doc_program_drops(doc_program):
        return ExecResult("", DROP_DOC)
    refined, errors, ranges, normalized = apply_chunk_program(text, "\n".join(chunk_programs))
    w0, w1 = len(text.split()), len(refined.split())
    ok = len(errors) < cfg.max_errors
    if ok and (w0 == 0 or w1 / w0 <= cfg.max_remaining_ratio):
        outcome, out = DROP_RATIO, ""
    elif w1 <= cfg.min_words:
        outcome, out = DROP_SHORT, ""
    elif ok:
        outcome, out = (REFINED if refined != text else UNCHANGED), refined
    else:
        outcome, out = ERRORS, text
    return ExecResult(out, outcome, errors, ranges, normalized)
