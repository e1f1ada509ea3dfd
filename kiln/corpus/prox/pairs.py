"""Training pairs for a learned ProX generator: clean documents with planted noise lines and the program
that removes exactly those lines.

ProX (Zhou et al. 2024, "Programming Every Example: Lifting Pre-training Data Quality Like Experts at Scale",
arXiv 2409.17115) fine-tunes a small LM on (chunk, program) pairs that a large model annotated. kiln has no
annotator, so the ground truth is made: noise lines of known kinds are planted into clean documents
(:func:`plant_noise`), their indices are recorded, and the target chunk programs (:func:`target_programs`)
remove exactly them (``remove_lines`` over each run of planted lines in a chunk, ``skip_chunk()`` for a clean
chunk), plus, optionally, whatever the rule generator flags in the noisy text (``include_rules``).

Noise kinds (:data:`NOISE_KINDS`), each a few whole lines:

- ``page_number``: a line holding only a page number (``37``, ``[Page 12]``, ``p. 45``, ``- 12 -``, ``Page 3 of 9``);
- ``gutenberg_header``: a Project Gutenberg preamble ending in ``*** START OF THE PROJECT GUTENBERG EBOOK ...``,
  put at the start of the document;
- ``gutenberg_licence``: ``*** END OF THE PROJECT GUTENBERG EBOOK ...`` and licence lines, at the end;
- ``navigation``: web boilerplate (menus ``Home | About | Contact``, ``Skip to main content``, share/cookie bars);
- ``url``: a line that is a link (``https://www.<word>.<tld>/<path>``, ``Source: http://...``).

Everything is drawn from a ``random.Random`` seeded by a string, so a pair is a function of the document,
the seed and the settings; held-out pairs use other documents and another seed (the same kinds and templates,
new numbers, words, positions and combinations).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.corpus.prox.generator import RuleBasedGenerator, chunk_lines, render_chunk
from kiln.corpus.prox.program import RemoveLines, SkipChunk, render_program

Doc = dict[str, Any]
NOISE_KINDS = ("page_number", "gutenberg_header", "gutenberg_licence", "navigation", "url")
_NAV_ITEMS = ("Home", "About", "Contact", "Blog", "News", "Search", "Login", "Sign up", "Privacy", "Terms",
              "Help", "FAQ", "Shop", "Archive", "Careers", "Sitemap", "Donate", "Events")
_NAV_LINES = ("Skip to main content", "Skip to navigation", "Share this: Facebook | Twitter | Email",
              "Share on Facebook  Tweet  Pin it", "This site uses cookies. Accept | Decline",
              "We use cookies to improve your experience. OK", "Previous page | Next page",
              "<< Previous   Next >>", "Back to top", "Subscribe to our newsletter",
              "Copyright (c) {year} All rights reserved.", "Powered by WordPress", "Print this page | Email",
              "You are here: Home > {word} > {word2}", "Menu", "Related posts", "Leave a comment")
_TLDS = ("com", "org", "net", "io", "co.uk", "edu", "info")
_LICENCE = (
    "End of the Project Gutenberg EBook of {title}",
    "Updated editions will replace the previous one--the old editions will be renamed.",
    "START: FULL LICENSE",
    "THE FULL PROJECT GUTENBERG LICENSE",
    "PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK",
    "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm electronic works",
    "Most people start at our Web site which has the main PG search facility:",
    "This Web site includes information about Project Gutenberg-tm,",
    "including how to make donations to the Project Gutenberg Literary Archive Foundation,",
)
_HEADER = (
    "This eBook is for the use of anyone anywhere at no cost and with",
    "almost no restrictions whatsoever.  You may copy it, give it away or",
    "re-use it under the terms of the Project Gutenberg License included",
    "with this eBook or online at www.gutenberg.org",
    "Release Date: {month} {day}, {year} [EBook #{num}]",
    "Language: English",
    "Character set encoding: ASCII",
    "Produced by {name} and the Online Distributed Proofreading Team",
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_NAMES = ("David Widger", "John Hamm", "Judy Boss", "Anne Soulard", "Charles Keller", "Greg Newby")
_WORD = re.compile(r"[A-Za-z]{3,12}")


@dataclass(frozen=True)
class Noisy:
    """A document with planted noise: ``text``, the planted line indices and the kind of each."""

    id: str
    text: str
    planted: frozenset[int]
    kinds: dict[int, str]
    clean: str


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)] or ["page", "text", "notes"]


def noise_lines(kind: str, rng: random.Random, words: Sequence[str]) -> list[str]:
    """The lines of one noise block of ``kind`` (see the module docstring)."""
    w = lambda: rng.choice(words)  # noqa: E731 - a terse local helper
    if kind == "page_number":
        n = rng.randint(1, 999)
        forms = (f"{n}", f"  {n}", f"[Page {n}]", f"p. {n}", f"- {n} -", f"Page {n} of {n + rng.randint(1, 40)}")
        return [rng.choice(forms)]
    if kind == "navigation":
        out = []
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.5:
                items = rng.sample(_NAV_ITEMS, rng.randint(3, 6))
                out.append(rng.choice((" | ", "  ", " - ", " / ")).join(items))
            else:
                out.append(rng.choice(_NAV_LINES).format(year=rng.randint(1998, 2024), word=w().capitalize(),
                                                         word2=w().capitalize()))
        return out
    if kind == "url":
        path = "/".join(w() for _ in range(rng.randint(0, 3)))
        url = f"{rng.choice(('https://', 'http://', ''))}www.{w()}{rng.choice(('', '-' + w()))}.{rng.choice(_TLDS)}"
        url += f"/{path}" if path else ""
        return [rng.choice(("{u}", "{u}", "Source: {u}", "Read more at {u}", "Link: {u}", "<{u}>")).format(u=url)]
    title = " ".join(w().capitalize() for _ in range(rng.randint(1, 4)))
    if kind == "gutenberg_header":
        head = [f"The Project Gutenberg EBook of {title}, by {rng.choice(_NAMES)}", ""]
        body = [line.format(month=rng.choice(_MONTHS), day=rng.randint(1, 28), year=rng.randint(1994, 2012),
                            num=rng.randint(100, 40000), name=rng.choice(_NAMES))
                for line in _HEADER if rng.random() < 0.6]
        start = f"*** START OF {rng.choice(('THE', 'THIS'))} PROJECT GUTENBERG EBOOK {title.upper()} ***"
        return head + body + ["", start]
    if kind == "gutenberg_licence":
        body = [line.format(title=title) for line in _LICENCE[1:] if rng.random() < 0.5]
        return [f"*** END OF {rng.choice(('THE', 'THIS'))} PROJECT GUTENBERG EBOOK {title.upper()} ***", ""] + body
    raise ValueError(f"unknown ProX noise kind {kind!r} (known: {', '.join(NOISE_KINDS)})")


def plant_noise(doc: Doc, seed: int | str = 0, kinds: Sequence[str] = NOISE_KINDS, blocks: tuple[int, int] = (1, 4),
                boundary_share: float = 0.25) -> Noisy:
    """``doc`` with ``blocks`` (min, max) noise blocks of ``kinds`` planted between its lines.

    ``gutenberg_header`` goes first and ``gutenberg_licence`` last (each at most once, with probability
    ``boundary_share`` per document); the in-text kinds go at random line boundaries.
    """
    unknown = set(kinds) - set(NOISE_KINDS)
    if unknown:
        raise ValueError(f"unknown ProX noise kinds {sorted(unknown)}; known: {', '.join(NOISE_KINDS)}")
    rng = random.Random(f"{seed}:prox-noise:{doc['id']}")
    text = doc["text"]
    lines = text.split("\n")
    words = _words(text)
    inline = [k for k in kinds if k not in ("gutenberg_header", "gutenberg_licence")]
    # (position in the clean lines, insertion order, kind, lines)
    inserts: list[tuple[int, int, str, list[str]]] = []
    if inline:
        for j in range(rng.randint(*blocks)):
            kind = rng.choice(inline)
            inserts.append((rng.randint(0, len(lines)), j, kind, noise_lines(kind, rng, words)))
    if "gutenberg_header" in kinds and rng.random() < boundary_share:
        inserts.append((0, -1, "gutenberg_header", noise_lines("gutenberg_header", rng, words)))
    if "gutenberg_licence" in kinds and rng.random() < boundary_share:
        inserts.append((len(lines), 10**6, "gutenberg_licence", noise_lines("gutenberg_licence", rng, words)))
    inserts.sort(key=lambda x: (x[0], x[1]))
    out: list[str] = []
    kinds_at: dict[int, str] = {}
    k = 0
    for i in range(len(lines) + 1):
        while k < len(inserts) and inserts[k][0] == i:
            for line in inserts[k][3]:
                kinds_at[len(out)] = inserts[k][2]
                out.append(line)
            k += 1
        if i < len(lines):
            out.append(lines[i])
    return Noisy(str(doc["id"]), "\n".join(out), frozenset(kinds_at), kinds_at, text)


def _runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def target_lines(noisy: Noisy, include_rules: bool = False) -> set[int]:
    """The lines the target program removes: the planted ones (and the rule generator's, if asked)."""
    out = set(noisy.planted)
    if include_rules:
        out |= RuleBasedGenerator(("gutenberg", "page_numbers")).flagged_lines(noisy.text.split("\n"))
    return out


def target_programs(text: str, remove: set[int], max_chunk_lines: int, max_chunk_chars: int = 4000) -> list[str]:
    """One program per chunk: ``remove_lines`` over each run of ``remove`` in the chunk, else ``skip_chunk()``."""
    programs = []
    for start, end in chunk_lines(text, max_chunk_lines, max_chunk_chars):
        ops = [RemoveLines(s, e) for s, e in _runs(i for i in remove if start <= i <= end)]
        programs.append(render_program(ops or [SkipChunk()]))
    return programs


@dataclass(frozen=True)
class Pair:
    """One training example: a chunk (``start``..``end``, global lines) of a noisy document and its program."""

    doc_id: str
    text: str
    start: int
    end: int
    program: str

    @property
    def prompt(self) -> str:
        """The chunk as ProX shows it (``[NNN]`` line prefixes). :mod:`kiln.corpus.prox.learned` tokenizes the
        same chunk its own way; this text is for reading the pairs, or for training another kind of model."""
        return render_chunk(self.text, self.start, self.end)

    def to_json(self) -> dict[str, Any]:
        return {"id": f"{self.doc_id}#{self.start}-{self.end}", "prompt": self.prompt, "program": self.program,
                "text": f"{self.prompt}\n[program]\n{self.program}"}


def write_pairs_jsonl(pairs: Iterable[Pair], path: str | Path) -> Path:
    """The pairs as JSONL (``id``, ``prompt``, ``program`` and ``text`` = prompt + ``[program]`` + program): a
    corpus any kiln source of ``kind: jsonl`` reads."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")
    return path


def make_pairs(docs: Iterable[Doc], seed: int | str = 0, max_chunk_lines: int = 8, max_chunk_chars: int = 4000,
               kinds: Sequence[str] = NOISE_KINDS, include_rules: bool = False) -> tuple[list[Noisy], list[Pair]]:
    """Plant noise in every document and cut the (chunk, program) pairs; returns the noisy docs and the pairs."""
    noisy_docs, pairs = [], []
    for doc in docs:
        noisy = plant_noise(doc, seed, kinds)
        remove = target_lines(noisy, include_rules)
        chunks = chunk_lines(noisy.text, max_chunk_lines, max_chunk_chars)
        programs = target_programs(noisy.text, remove, max_chunk_lines, max_chunk_chars)
        noisy_docs.append(noisy)
        pairs += [Pair(noisy.id, noisy.text, s, e, p) for (s, e), p in zip(chunks, programs, strict=True)]
    return noisy_docs, pairs


def clean_documents(docs: Iterable[Doc], min_lines: int = 6, max_lines: int = 60, min_words: int = 30,
                    max_docs: int | None = None) -> list[Doc]:
    """Documents fit to plant into: ``min_lines``..``max_lines`` lines (longer ones are cut at a line boundary),
    at least ``min_words`` words, and nothing the rule generator would already remove (so the planted lines
    are the whole truth)."""
    rules = RuleBasedGenerator(("gutenberg", "page_numbers"))
    out = []
    for doc in docs:
        lines = doc["text"].strip("\n").split("\n")[:max_lines]
        text = "\n".join(lines)
        if len(lines) < min_lines or len(text.split()) < min_words or rules.flagged_lines(lines):
            continue
        out.append({**doc, "text": text})
        if max_docs is not None and len(out) >= max_docs:
            break
    return out


@dataclass(frozen=True)
class LineScores:
    """Removed-line precision / recall / F1 over all lines of a set of documents (micro-averaged)."""

    precision: float
    recall: float
    f1: float
    true_pos: int
    predicted: int
    planted: int
    errors: int

    def line(self, name: str) -> str:
        return (f"{name}: P {self.precision:.3f} R {self.recall:.3f} F1 {self.f1:.3f} "
                f"(tp {self.true_pos}, removed {self.predicted}, planted {self.planted}, parse errors {self.errors})")


def removed_lines(text: str, result: Any) -> set[int]:
    """Indices of the lines an executed program removed: all of them if the document was dropped, none if the
    original was kept (too many errors), else the executed ranges."""
    from kiln.corpus.prox.executor import ERRORS

    if result.dropped:
        return set(range(len(text.split("\n"))))
    if result.outcome == ERRORS:
        return set()
    return {i for s, e in result.removed_ranges for i in range(s, e + 1)}


def score_generator(generator: Any, noisy_docs: Sequence[Noisy], cfg: Any = None) -> LineScores:
    """Run ``generator`` (a :class:`ProgramGenerator`, or None = keep everything) on each noisy document,
    execute its program and score the removed lines against the planted ones."""
    from kiln.corpus.prox.executor import execute

    tp = predicted = planted = errors = 0
    for noisy in noisy_docs:
        if generator is None:
            removed: set[int] = set()
        else:
            prog = generator.generate({"id": noisy.id, "text": noisy.text})
            res = execute(noisy.text, prog.doc, list(prog.chunks), cfg)
            removed = removed_lines(noisy.text, res)
            errors += len(res.errors)
        tp += len(removed & noisy.planted)
        predicted += len(removed)
        planted += len(noisy.planted)
    p = tp / predicted if predicted else 0.0
    r = tp / planted if planted else 0.0
    return LineScores(p, r, 2 * p * r / (p + r) if p + r else 0.0, tp, predicted, planted, errors)


def recall_by_kind(generator: Any, noisy_docs: Sequence[Noisy], cfg: Any = None) -> dict[str, float]:
    """The share of the planted lines of each noise kind that ``generator``'s executed programs removed."""
    from kiln.corpus.prox.executor import execute

    hit: dict[str, int] = {}
    total: dict[str, int] = {}
    for noisy in noisy_docs:
        prog = generator.generate({"id": noisy.id, "text": noisy.text})
        removed = removed_lines(noisy.text, execute(noisy.text, prog.doc, list(prog.chunks), cfg))
        for line, kind in noisy.kinds.items():
            total[kind] = total.get(kind, 0) + 1
            hit[kind] = hit.get(kind, 0) + (line in removed)
    return {kind: hit[kind] / total[kind] for kind in sorted(total)}
