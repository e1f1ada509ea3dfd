"""Questions from held-out Shakespeare scenes: next speaker, cloze word, edition (spelling).

Every question is a pure function of (held-out document, position, whole-play vocabularies, seed): its
distractors and gold position come from a generator seeded by ``(seed, task, question id)``.

- ``shakespeare-speaker`` (modern edition): at a speech heading, the excerpt is the last whole lines before
  it (at most :data:`EXCERPT_CHARS` characters, so an item fits a 256-token context); the choices are the
  speaker and 3 other speakers of the same play.
- ``shakespeare-cloze`` (modern edition): one content word (>= 4 letters, not a stop word, not part of an
  elided or hyphenated form) of a speech line is blanked; distractors are words of the same play in the same
  frequency band (``floor(log2(count))``, widened to the neighbouring bands when too few), cased like the
  answer; the context is up to :data:`CLOZE_LEAD_CHARS` of preceding lines and the line up to the blank.
- ``shakespeare-edition`` (both editions, balanced): a passage and the label of its spelling; the ``continue``
  template's choices are the passage's next line as written and the same line in the other edition's
  spelling (the whole-corpus spelling map of :mod:`kiln.eval.tasks.shakespeare_text`).
"""

from __future__ import annotations

import math
from typing import Any

from kiln.eval.tasks.pools import Pool
from kiln.eval.tasks.shakespeare_text import content_words, heading_positions, respell, stage_direction_lines
from kiln.eval.tasks.templates import Question, place_gold, question_rng, trim_lines

EXCERPT_CHARS = 600
EXCERPT_LINES = 12
CLOZE_LEAD_CHARS = 300
CLOZE_LEAD_LINES = 4
PASSAGE_CHARS = 400
PASSAGE_LINES = 5
EDITION_NAMES = {"modern": "modern", "folio": "First Folio"}


def is_modern_play(doc: dict[str, Any]) -> bool:
    return doc.get("edition") == "modern" and doc.get("form") == "play"


def is_play(doc: dict[str, Any]) -> bool:
    return doc.get("form") == "play"


def _name(heading: str) -> str:
    return heading.rstrip(".").strip()


def _body_lines(lines: list[str], end: int, max_lines: int, max_chars: int) -> list[str]:
    """Whole lines before ``end`` (blank lines kept inside, cut at the ends), at most max_lines / max_chars."""
    window = lines[max(0, end - max_lines) : end]
    while window and not window[-1].strip():
        window.pop()
    kept = trim_lines(window, max_chars)
    while kept and not kept[0].strip():
        kept.pop(0)
    return kept


# ----------------------------------------------------------------------------- speaker


def speaker_questions(docs: list[dict[str, Any]], pool: Pool, seed: int, task: str) -> list[Question]:
    out: list[Question] = []
    for doc in docs:
        speakers: dict[str, str] = pool.stats["speakers"].get(doc["play"], {})
        if len(speakers) < 4:
            continue
        keys = sorted(speakers)
        lines = doc["text"].split("\n")
        for i, key in heading_positions(lines):
            if key not in speakers:
                continue
            excerpt = _body_lines(lines, i - 1, EXCERPT_LINES, EXCERPT_CHARS)
            if sum(bool(ln.strip()) for ln in excerpt) < 2:
                continue
            qid = f"{doc['id']}@{i}"
            rng = question_rng(seed, task, qid)
            others = rng.sample([k for k in keys if k != key], 3)
            opts, gold = place_gold(rng, _speaker(speakers, key), [_speaker(speakers, k) for k in others])
            out.append(Question(qid, {"excerpt": "\n".join(excerpt), "play": doc["play"]}, opts, gold,
                                _name(speakers[key]), doc["id"]))  # fmt: skip
    return out


def _speaker(speakers: dict[str, str], key: str) -> dict[str, str]:
    return {"name": _name(speakers[key]), "heading": speakers[key]}


# ----------------------------------------------------------------------------- cloze


def _bands(counts: dict[str, int]) -> dict[int, list[str]]:
    bands: dict[int, list[str]] = {}
    for word, n in counts.items():  # counts are sorted by word: so is each band
        bands.setdefault(int(math.log2(n)), []).append(word)
    return bands


def _distractor_words(bands: dict[int, list[str]], word: str, count: int, rng: Any) -> list[str] | None:
    """3 words of the answer's frequency band (widened to neighbouring bands until there are enough)."""
    band = int(math.log2(max(count, 1)))
    for width in range(0, 8):
        pool = bands.get(band, []) if width == 0 else \
            sorted(w for b in range(band - width, band + width + 1) for w in bands.get(b, ()))
        if len(pool) - (word in pool) >= 3:
            return [w for w in rng.sample(pool, min(4, len(pool))) if w != word][:3]
    return None


def _cased(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    return word[0].upper() + word[1:] if like[0].isupper() else word


def cloze_questions(docs: list[dict[str, Any]], pool: Pool, seed: int, task: str) -> list[Question]:
    out: list[Question] = []
    bands_of: dict[str, dict[int, list[str]]] = {}
    for doc in docs:
        counts: dict[str, int] = pool.stats["words"].get(doc["play"], {})
        bands = bands_of.setdefault(doc["play"], _bands(counts))
        lines = doc["text"].split("\n")
        skip = {i for i, _ in heading_positions(lines)} | stage_direction_lines(lines)
        for i, line in enumerate(lines):
            if i == 0 or i in skip or len(line) < 20 or len(line.split()) < 4:
                continue
            words = [m for m in content_words(line) if m.group(0).lower() in counts]
            if not words:
                continue
            qid = f"{doc['id']}@{i}"
            rng = question_rng(seed, task, qid)
            m = rng.choice(words)
            word = m.group(0)
            others = _distractor_words(bands, word.lower(), counts[word.lower()], rng)
            if others is None:
                continue
            before, rest = line[: m.start()], line[m.end() :]
            sp = " " if before.endswith(" ") else ""
            lead = _body_lines(lines, i, CLOZE_LEAD_LINES, CLOZE_LEAD_CHARS)
            fields = {"lead": "".join(f"{ln}\n" for ln in lead), "before": before[: len(before) - len(sp)],
                      "sp": sp, "rest": rest}  # fmt: skip
            opts, gold = place_gold(rng, {"word": word}, [{"word": _cased(o, word)} for o in others])
            out.append(Question(qid, fields, opts, gold, word.lower(), doc["id"]))
    return out


# ----------------------------------------------------------------------------- edition


def edition_questions(docs: list[dict[str, Any]], pool: Pool, seed: int, task: str) -> list[Question]:
    out: list[Question] = []
    maps: dict[str, dict[str, str]] = pool.stats["spelling"]
    for doc in docs:
        edition = doc["edition"]
        other = "folio" if edition == "modern" else "modern"
        lines = doc["text"].split("\n")
        skip = stage_direction_lines(lines)
        if edition == "modern":
            skip |= {i for i, _ in heading_positions(lines)}
        for i, line in enumerate(lines):
            if i in skip or len(line.split()) < 4 or line.lstrip().startswith(("Enter", "Exit", "Exeunt")):
                continue
            respelled = respell(line, maps[edition])
            if respelled.lower() == line.lower():  # a difference in capitals alone is too faint
                continue
            prev = _body_lines(lines, i, PASSAGE_LINES, PASSAGE_CHARS)
            if sum(bool(ln.strip()) for ln in prev) < 2 or not lines[i - 1].strip():
                continue
            qid = f"{doc['id']}@{i}"
            rng = question_rng(seed, task, qid)
            text = "\n".join(prev)
            opts, gold = place_gold(rng, {"edition": EDITION_NAMES[edition], "next": line},
                                    [{"edition": EDITION_NAMES[other], "next": respelled}])  # fmt: skip
            out.append(Question(qid, {"prev": text, "passage": f"{text}\n{line}"}, opts, gold, edition, doc["id"]))
    return out
