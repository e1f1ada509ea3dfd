"""Reading the structure of kiln's Shakespeare scene documents for the task builders.

- **Speech headings** (modern edition): a line of its own holding a character's name (``ROSALIND.``, ``Ham.``,
  ``LYSANDER``), after a blank line and before the speech. A play's speakers are the headings seen at least
  :data:`MIN_HEADINGS` times in the whole play, so a stray verse line after a blank line is not a speaker.
- **Content words**: runs of at least 4 letters, not a stop word; counted per play for the cloze distractors.
- **Spelling maps** between the modern and the First Folio edition: lines of the two editions of a play are
  aligned by their consonant skeleton (letters only, ``v``->``u``, vowels and ``y`` dropped, doubled letters
  collapsed: ``Haue we, as 'twere`` and ``Have we, as 'twere`` both give ``hwstwr``); aligned lines with the
  same number of words pair their words, and each word keeps its most frequent partner seen at least twice.
  This gives, cheaply, the other edition's spelling of any line (``our deere Brothers death``).
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict

MIN_HEADINGS = 3
NOT_SPEAKERS = frozenset({"ALL", "BOTH", "SONG", "THE SONG"})
_HEADING = re.compile(r"^([A-Z][A-Za-z'\- ]{0,40}?)\.?$")
WORD = re.compile(r"[A-Za-z]+")
_CONTENT = re.compile(r"(?<![A-Za-z'\-])[A-Za-z]{4,}(?![A-Za-z'\-])")  # a whole word, not next to ' or -
_STOPWORDS = """
about above after again against also although among another any anything are because been before being
below between both but came can cannot come comes could did does doing done down each either else even ever
every from further had has have having hence her here hers herself hath him himself his how into its itself
just least less like made make many may more most much must myself neither never none nor not now off once
one only other ought our ours ourselves out over own same shall she should since some still such than that
the their theirs them themselves then there these they thee thine this those thou though through thus thy
till too under unto until upon very was well were what when where whether which while who whom whose why
will with within without would yet you your yours yourself yourselves shalt wilt dost doth art hast
therefore wherefore nothing something others thereof whereof herein hither thither whither
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def heading_key(line: str) -> str | None:
    """The speaker key of a heading line (``Lady Capulet.`` -> ``LADY CAPULET``), or None."""
    m = _HEADING.match(line.strip())
    if not m or line.lstrip().startswith(("ACT ", "SCENE ", "Scene ", "Act ")):
        return None
    return " ".join(m.group(1).split()).upper()


def heading_positions(lines: list[str]) -> list[tuple[int, str]]:
    """``(line index, key)`` of every heading-shaped line: after a blank line, followed by a speech line."""
    out = []
    for i in range(1, len(lines) - 1):
        if lines[i - 1].strip() or not lines[i + 1].strip() or lines[i + 1].lstrip().startswith("["):
            continue
        if (key := heading_key(lines[i])) is not None:
            out.append((i, key))
    return out


def play_speakers(texts: list[str]) -> dict[str, str]:
    """Speaker key -> heading as most often written, for the headings seen >= MIN_HEADINGS times."""
    counts: Counter[str] = Counter()
    forms: dict[str, Counter[str]] = defaultdict(Counter)
    for text in texts:
        lines = text.split("\n")
        for i, key in heading_positions(lines):
            counts[key] += 1
            forms[key][lines[i].strip()] += 1
    return {k: forms[k].most_common(1)[0][0] for k, n in sorted(counts.items())
            if n >= MIN_HEADINGS and k not in NOT_SPEAKERS}  # fmt: skip


def is_content_word(word: str) -> bool:
    return len(word) >= 4 and word.lower() not in STOPWORDS


def content_words(line: str) -> list[re.Match[str]]:
    """The content words of a line, not counting parts of elided or hyphenated forms (``worshipp'd``)."""
    return [m for m in _CONTENT.finditer(line) if m.group(0).lower() not in STOPWORDS]


def stage_direction_lines(lines: list[str]) -> set[int]:
    """Indices of lines inside a bracketed stage direction (``[Enter ...]``, possibly over several lines)."""
    out: set[int] = set()
    inside = False
    for i, line in enumerate(lines):
        starts = line.lstrip().startswith("[")
        if inside or starts:
            out.add(i)
        opened, closed = line.rfind("["), line.rfind("]")
        if opened > closed:
            inside = True
        elif closed > opened:
            inside = False
    return out


def word_counts(texts: list[str]) -> dict[str, int]:
    """Lower-cased content words of the texts and their counts, sorted by word; words never written in lower
    case (names, headings) are left out, so a cloze blank is never a name and no distractor is a miscased one."""
    counts: Counter[str] = Counter()
    lower: set[str] = set()
    for text in texts:
        words = [m.group(0) for line in text.split("\n") for m in content_words(line)]
        counts.update(w.lower() for w in words)
        lower.update(w for w in words if w.islower())
    return {w: n for w, n in sorted(counts.items()) if w in lower}


# ----------------------------------------------------------------------------- spelling


class _KeepConsonants(dict):
    """``str.translate`` table: consonants other than v/j/y kept (lower-cased), everything else deleted."""

    def __missing__(self, code: int) -> int | None:
        ch = chr(code).lower()
        self[code] = value = ord(ch) if ch in "bcdfghklmnpqrstwxz" else None
        return value


_CONSONANTS = _KeepConsonants()
_DOUBLE = re.compile(r"(.)\1+")


def skeleton(line: str) -> str:
    """Consonant skeleton of a line (see module docstring); equal for the two editions' spellings
    (``v``/``u`` and ``j``/``i`` are vowels to it, so they drop out with the vowels)."""
    return _DOUBLE.sub(r"\1", line.translate(_CONSONANTS))


@functools.lru_cache(maxsize=1 << 16)
def _word_skeleton(word: str) -> str:
    return skeleton(word)


def aligned_pairs(modern: list[str], folio: list[str], min_len: int = 10) -> list[tuple[str, str]]:
    """``(modern line, folio line)`` for lines whose skeletons match and occur once in each edition."""
    def index(lines: list[str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        dup: set[str] = set()
        for line in lines:
            sk = skeleton(line)
            if len(sk) < min_len:
                continue
            if sk in seen:
                dup.add(sk)
            seen[sk] = line
        return {k: v for k, v in seen.items() if k not in dup}

    m_idx, f_idx = index(modern), index(folio)
    return [(m_idx[k], f_idx[k]) for k in sorted(m_idx.keys() & f_idx.keys())]


def spelling_maps(pairs: list[tuple[str, str]], min_count: int = 2) -> dict[str, dict[str, str]]:
    """``{"modern": {modern word -> folio form}, "folio": {folio word -> modern form}}`` (keys lower-cased)."""
    votes: dict[str, dict[str, Counter[str]]] = {"modern": defaultdict(Counter), "folio": defaultdict(Counter)}
    for m_line, f_line in pairs:
        m_words, f_words = WORD.findall(m_line), WORD.findall(f_line)
        if len(m_words) != len(f_words):
            continue
        for i, (mw, fw) in enumerate(zip(m_words, f_words, strict=True)):
            if _word_skeleton(mw) != _word_skeleton(fw):
                continue
            votes["modern"][mw.lower()][fw if i else fw.lower()] += 1  # line-initial capitals say nothing
            votes["folio"][fw.lower()][mw if i else mw.lower()] += 1
    maps: dict[str, dict[str, str]] = {}
    for side, table in votes.items():
        maps[side] = {}
        for word in sorted(table):
            form, n = sorted(table[word].items(), key=lambda kv: (-kv[1], kv[0]))[0]
            if n >= min_count and form != word:
                maps[side][word] = form
    return maps


def respell(line: str, mapping: dict[str, str]) -> str:
    """``line`` with each word in the other edition's spelling (the map's form, capitalised at line start)."""
    first = WORD.search(line)

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        new = mapping.get(word.lower())
        if new is None:
            return word
        initial = first is not None and m.start() == first.start() and word[0].isupper()
        return new[0].upper() + new[1:] if initial or word.isupper() and len(word) > 1 else new

    return WORD.sub(swap, line)
