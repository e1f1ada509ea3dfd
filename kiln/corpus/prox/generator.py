"""ProX program generators (Zhou et al. 2024): the interface, chunking, and a rule-based generator.

A :class:`ProgramGenerator` turns a document into a :class:`Program`: one doc-level program and one
program per chunk. Chunks are runs of whole lines (at most ``max_chunk_lines`` lines and about
``max_chunk_chars`` characters); :func:`render_chunk` shows a chunk the way ProX prompts its model,
each line prefixed with its global index ``[NNN]``, which is what the chunk programs' line numbers refer
to. A model-based generator (a small LM fine-tuned on (document, program) pairs:
:class:`kiln.corpus.prox.learned.LearnedGenerator`, trained on :mod:`kiln.corpus.prox.pairs`) implements the
same interface; :class:`RuleBasedGenerator` emits programs from patterns for boilerplate:

- ``gutenberg``: Project Gutenberg headers (everything up to ``*** START OF ... PROJECT GUTENBERG``) and
  licences (from ``*** END OF ... PROJECT GUTENBERG`` / ``End of the Project Gutenberg`` to the end), and
  the ``<<THIS ELECTRONIC VERSION ... >>`` notices of Gutenberg's Shakespeare;
- ``page_numbers``: lines holding only a number, or ``[Page N]`` / ``p. N``;
- ``line_numbers``: verse-line numbers at the end of a line (two or more spaces, then digits), removed
  with ``normalize`` of that line;
- ``stage_directions`` (opt-in): lines that are wholly a stage direction (``[Enter ...]``, ``Exit.``,
  ``Exeunt.``, ``Enter X.``).

A document whose lines are flagged at least ``drop_share`` of the time gets ``drop_doc()``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from kiln.corpus.prox.program import DropDoc, KeepDoc, Normalize, Op, RemoveLines, SkipChunk, render_program

Doc = dict[str, Any]
RULES = ("gutenberg", "page_numbers", "line_numbers", "stage_directions")
_GUT_START = re.compile(r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG", re.I)
_GUT_END = re.compile(r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.I)
_NOTICE_START = re.compile(r"^\s*<<\s*THIS ELECTRONIC VERSION", re.I)
_PAGE = re.compile(r"^\s*(\d{1,5}|\[\s*Page\s+\d+\s*\]|p\.\s*\d+)\s*$", re.I)
_LINE_NO = re.compile(r"^(.*\S)\s{2,}\d{1,4}$")
_STAGE = re.compile(r"^\s*(\[[^\]]*\]|(Exit|Exeunt|Exit\s+\w+|Exeunt\s+.*)\.?|(Enter|Re-enter)\s+[^.]*\.)\s*$")


@dataclass(frozen=True)
class Program:
    """A document's programs: ``doc`` (doc level) and ``chunks`` (one program text per chunk)."""

    doc: str
    chunks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"doc_program": self.doc, "chunk_programs": list(self.chunks)}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Program:
        return cls(row["doc_program"], tuple(row["chunk_programs"]))


def chunk_lines(text: str, max_lines: int = 64, max_chars: int = 4000) -> list[tuple[int, int]]:
    """Inclusive global line ranges of the chunks: whole lines, <= ``max_lines`` and about ``max_chars`` each."""
    lines = text.split("\n")
    chunks, start, size = [], 0, 0
    for i, line in enumerate(lines):
        if i > start and (i - start >= max_lines or size + len(line) + 1 > max_chars):
            chunks.append((start, i - 1))
            start, size = i, 0
        size += len(line) + 1
    chunks.append((start, len(lines) - 1))
    return chunks


def render_chunk(text: str, start: int, end: int, digits: int = 3) -> str:
    """The chunk as a ProX prompt shows it: each line prefixed with its global index, ``[007]line``."""
    lines = text.split("\n")
    return "\n".join(f"[{i:0{digits}d}]{lines[i]}" for i in range(start, end + 1))


class ProgramGenerator(ABC):
    """Turns a document into its ProX program."""

    name: str = "generator"

    @abstractmethod
    def generate(self, doc: Doc) -> Program: ...


class RuleBasedGenerator(ProgramGenerator):
    """Programs from boilerplate patterns (module docstring); deterministic, so its log replays exactly."""

    name = "rules"

    def __init__(self, rules: tuple[str, ...] = ("gutenberg", "page_numbers", "line_numbers"), drop_share: float = 0.9,
                 max_chunk_lines: int = 64, max_chunk_chars: int = 4000) -> None:
        unknown = set(rules) - set(RULES)
        if unknown:
            raise ValueError(f"unknown ProX rules {sorted(unknown)}; known: {', '.join(RULES)}")
        self.rules, self.drop_share = tuple(rules), drop_share
        self.max_chunk_lines, self.max_chunk_chars = max_chunk_lines, max_chunk_chars

    def flagged_lines(self, lines: list[str]) -> set[int]:
        """Indices of lines to remove whole."""
        flagged: set[int] = set()
        if "gutenberg" in self.rules:
            flagged |= _gutenberg_lines(lines)
        for i, line in enumerate(lines):
            if ("page_numbers" in self.rules and _PAGE.match(line)) or \
                    ("stage_directions" in self.rules and _STAGE.match(line)):
                flagged.add(i)
        return flagged

    def generate(self, doc: Doc) -> Program:
        text = doc["text"]
        lines = text.split("\n")
        flagged = self.flagged_lines(lines)
        content = [i for i, line in enumerate(lines) if line.strip()]
        if content and sum(i in flagged for i in content) >= self.drop_share * len(content):
            return Program(render_program([DropDoc()]))
        chunks = []
        for start, end in chunk_lines(text, self.max_chunk_lines, self.max_chunk_chars):
            ops: list[Op] = []
            for i in range(start, end + 1):
                m = _LINE_NO.match(lines[i]) if "line_numbers" in self.rules and i not in flagged else None
                if m:
                    ops.append(Normalize(lines[i], m.group(1)))
            ops += [RemoveLines(s, e) for s, e in _runs(sorted(i for i in flagged if start <= i <= end))]
            chunks.append(render_program(ops or [SkipChunk()]))
        return Program(render_program([KeepDoc()]), tuple(chunks))


def _gutenberg_lines(lines: list[str]) -> set[int]:
    flagged: set[int] = set()
    for i, line in enumerate(lines):
        if _GUT_START.match(line):
            flagged.update(range(0, i + 1))
        elif _GUT_END.match(line):
            flagged.update(range(i, len(lines)))
            break
    i = 0
    while i < len(lines):
        if _NOTICE_START.match(lines[i]):
            j = i
            while j < len(lines) and ">>" not in lines[j]:
                j += 1
            flagged.update(range(i, min(j, len(lines) - 1) + 1))
            i = j
        i += 1
    return flagged


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices as inclusive ranges."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs
